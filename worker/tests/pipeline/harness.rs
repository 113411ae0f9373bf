//! Starts the real binaries against one test database and drives them.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sqlx::PgPool;

pub const PASSWORD: &str = "correct horse battery staple";

/// The directory holding the workspace's built binaries.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_worker"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The database URL of the test's own database.
fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (./dev test provides it)");
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{db}")
}

pub struct System {
    pub pool: PgPool,
    pub api_url: String,
    pub client: reqwest::Client,
    env: Vec<(String, String)>,
    api: Option<Child>,
    pub workers: Vec<Child>,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl System {
    /// Migrates, starts the api and `workers` worker processes.
    pub async fn start(pool: PgPool, workers: usize, extra: &[(&str, &str)]) -> Self {
        shared::db::migrate(&pool).await.unwrap();
        let dir = std::env::temp_dir().join(format!("txdx-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let api_port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url(&pool)),
            (
                "JWT_SECRET_KEY".into(),
                "e2e-secret-key-that-is-long-enough-0123456789".into(),
            ),
            ("API_ADDR".into(), format!("127.0.0.1:{api_port}")),
            (
                "TXDX_LOCAL_SECRET_KEY".into(),
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
            ),
            ("QUEUE_HEARTBEAT_SECS".into(), "1".into()),
            ("QUEUE_MISSED_HEARTBEATS".into(), "3".into()),
            ("ACTION_TIMEOUT_SECS".into(), "2".into()),
            ("RETRY_BACKOFF_BASE_MS".into(), "200".into()),
            ("SHUTDOWN_TIMEOUT_SECS".into(), "5".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), "8".into()),
            ("RUST_LOG".into(), "warn,txdx_worker=info".into()),
            ("FRONTEND_DIR".into(), dir.display().to_string()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).into(), (*v).into()));
        }
        let mut system = Self {
            pool,
            api_url: format!("http://127.0.0.1:{api_port}"),
            client: reqwest::Client::new(),
            env,
            api: None,
            workers: Vec::new(),
            _dir: TempDir(dir),
        };
        system.start_api().await;
        for _ in 0..workers {
            system.start_worker();
        }
        system
    }

    pub fn command(&self, bin: &str) -> Command {
        let path = bin_dir().join(bin);
        assert!(
            path.exists(),
            "{} is not built: run `cargo build --workspace` (./dev test does)",
            path.display()
        );
        let mut cmd = Command::new(path);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        if std::env::var_os("TXDX_E2E_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd
    }

    async fn start_api(&mut self) {
        let child = self.command("api").spawn().unwrap();
        self.api = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/ready", self.api_url))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "api did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts one more worker process (its metrics on a free port).
    pub fn start_worker(&mut self) -> usize {
        let mut cmd = self.command("worker");
        cmd.env("WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port()));
        self.workers.push(cmd.spawn().unwrap());
        self.workers.len() - 1
    }

    /// `kill -9` of worker `i`.
    pub fn kill_worker(&mut self, i: usize) {
        let _ = self.workers[i].kill();
        let _ = self.workers[i].wait();
    }

    /// SIGTERM to worker `i`; returns how long it took to exit.
    pub fn terminate_worker(&mut self, i: usize) -> Duration {
        let pid = self.workers[i].id();
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let _ = self.workers[i].wait();
        started.elapsed()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_url)
    }

    /// Registers a company; returns its ADMIN's access token.
    pub async fn register(&self, name: &str) -> String {
        let username = format!("{}-admin", name.to_lowercase());
        let r = self
            .client
            .post(self.url("/api/auth/register"))
            .json(&json!({"company_name": name, "username": username, "email": format!("{username}@example.com"), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        body["tokens"]["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn create_integration(&self, token: &str, body: Value) -> String {
        let r = self
            .client
            .post(self.url("/api/integrations"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn create_ticket(&self, token: &str, body: Value) -> Value {
        let r = self
            .client
            .post(self.url("/api/tickets"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn get_ticket(&self, token: &str, id: &str) -> Value {
        self.client
            .get(self.url(&format!("/api/tickets/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls until the ticket is terminal; panics after `timeout`.
    pub async fn wait_terminal(&self, token: &str, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.get_ticket(token, id).await;
            if t["status"] != "PENDING" {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "ticket {id} still PENDING after {timeout:?}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no ticket is PENDING; returns how long that took.
    pub async fn wait_all_terminal(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM tickets WHERE status = 'PENDING'")
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
            if pending == 0 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "{pending} tickets still PENDING after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The pipeline's invariants, checked at the end of every test.
    pub async fn assert_invariants(&self) {
        let q = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&self.pool)
                .await
                .unwrap()
        };
        assert_eq!(q("SELECT count(*) FROM tickets t WHERE status <> 'PENDING' AND (SELECT count(*) FROM audit_logs a WHERE a.entity_id = t.id AND a.action = 'ticket.status_changed') > 1").await, 0, "a ticket with two terminal transitions");
        assert_eq!(
            q("SELECT count(*) FROM ticket_actions WHERE attempts > max_attempts").await,
            0,
            "attempts above the cap"
        );
        assert_eq!(q("SELECT count(*) FROM ticket_actions a JOIN tickets t ON t.id = a.ticket_id WHERE t.status = 'EXECUTED' AND a.status <> 'SUCCEEDED'").await, 0, "EXECUTED with an unfinished action");
        assert_eq!(
            q("SELECT count(*) FROM tickets t WHERE status <> 'PENDING' AND executed_at IS NULL")
                .await,
            0,
            "terminal without executed_at"
        );
        assert_eq!(
            q("SELECT count(*) FROM ticket_actions a WHERE a.position = 0 AND a.job_id IS NULL")
                .await,
            0,
            "a first action without its job"
        );
        assert_eq!(q("SELECT count(*) FROM ticket_actions a WHERE a.job_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.id = a.job_id)").await, 0, "an action pointing at a missing job");
        assert_eq!(q("SELECT count(*) FROM (SELECT entity_id FROM audit_logs WHERE action = 'action.succeeded' GROUP BY entity_id HAVING count(*) > 1) d").await, 0, "an action that succeeded twice");
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(api) = &mut self.api {
            let _ = api.kill();
            let _ = api.wait();
        }
    }
}
