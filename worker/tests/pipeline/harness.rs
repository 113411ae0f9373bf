//! Starts the real binaries against one test database and drives them.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

pub const PASSWORD: &str = "correct horse battery staple";

/// The value of the sample `name` whose label set contains `labels` (all of
/// them summed when several match), from Prometheus text.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && rest.contains(labels)
        })
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A ticket body with one `block_ip` action of `ip` on `integration`.
pub fn block_ip_ticket(subject: &str, integration: &str, ip: &str) -> Value {
    json!({"subject": subject, "actions": [{"integration_id": integration, "action": "block_ip", "params": {"ip": ip}}]})
}

/// An integration body: a simulated PAN-OS firewall named `name` whose
/// every call takes `latency_ms`.
pub fn simulated_firewall(name: &str, latency_ms: u64) -> Value {
    json!({"provider": "PALO_ALTO", "name": name, "settings": {"simulated_latency_ms": latency_ms}})
}

/// The directory holding the workspace's built binaries; `TXDX_E2E_BIN_DIR`
/// points elsewhere (a release build, or copies kept safe from a target
/// directory shared with other checkouts).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TXDX_E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
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
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (./dev test provides it)");
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{db}")
}

/// How [`System::start_with`] starts the processes.
#[derive(Default)]
pub struct Options<'a> {
    /// Worker processes started at once.
    pub workers: usize,
    /// Environment on top of the defaults (same for api and workers).
    pub env: &'a [(&'a str, &'a str)],
    /// Write every process's stdout and stderr to a file (read back with
    /// [`System::logs`]) instead of discarding it.
    pub capture_logs: bool,
    /// The database URL, when not the test's own database on `DATABASE_URL`'s server.
    pub database_url: Option<String>,
}

/// One HTTP exchange with the api, as recorded by [`System::call`].
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub body: String,
}

pub struct System {
    pub pool: PgPool,
    pub api_url: String,
    pub client: reqwest::Client,
    env: Vec<(String, String)>,
    api: Option<Child>,
    pub workers: Vec<Child>,
    /// `host:port` of each worker's metrics endpoint, by worker index.
    pub worker_metrics: Vec<String>,
    /// Every exchange made through [`System::call`] (all the helpers use it).
    pub transcript: Mutex<Vec<Exchange>>,
    log_dir: Option<PathBuf>,
    spawned: usize,
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
        Self::start_with(
            pool,
            Options {
                workers,
                env: extra,
                ..Options::default()
            },
        )
        .await
    }

    /// [`System::start`] with every option.
    pub async fn start_with(pool: PgPool, options: Options<'_>) -> Self {
        let (workers, extra) = (options.workers, options.env);
        shared::db::migrate(&pool).await.unwrap();
        let dir = std::env::temp_dir().join(format!("txdx-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let log_dir = options.capture_logs.then(|| {
            let logs = dir.join("logs");
            std::fs::create_dir_all(&logs).unwrap();
            logs
        });
        let api_port = free_port();
        let url = options.database_url.unwrap_or_else(|| database_url(&pool));
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), url),
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
            worker_metrics: Vec::new(),
            transcript: Mutex::new(Vec::new()),
            log_dir,
            spawned: 0,
            _dir: TempDir(dir),
        };
        system.start_api().await;
        for _ in 0..workers {
            system.start_worker();
        }
        system
    }

    pub fn command(&mut self, bin: &str) -> Command {
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
        self.spawned += 1;
        if let Some(logs) = &self.log_dir {
            let file =
                std::fs::File::create(logs.join(format!("{}-{bin}.log", self.spawned))).unwrap();
            cmd.stdout(file.try_clone().unwrap()).stderr(file);
        } else if std::env::var_os("TXDX_E2E_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd
    }

    /// Everything the processes wrote so far, when started with
    /// `capture_logs`: (file name, contents) per process incarnation.
    pub fn logs(&self) -> Vec<(String, String)> {
        let Some(dir) = &self.log_dir else {
            return Vec::new();
        };
        let mut logs: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(entry.path()).unwrap(),
                )
            })
            .collect();
        logs.sort();
        logs
    }

    /// (Re)starts the api and waits until it is ready.
    pub async fn start_api(&mut self) {
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
        let metrics = format!("127.0.0.1:{}", free_port());
        cmd.env("WORKER_METRICS_ADDR", &metrics);
        self.workers.push(cmd.spawn().unwrap());
        self.worker_metrics.push(metrics);
        self.workers.len() - 1
    }

    /// Whether worker `i` is still running.
    pub fn worker_alive(&mut self, i: usize) -> bool {
        matches!(self.workers[i].try_wait(), Ok(None))
    }

    /// The text of worker `i`'s `/metrics` (waits for it to listen).
    pub async fn worker_metrics_text(&self, i: usize) -> String {
        let url = format!("http://{}/metrics", self.worker_metrics[i]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.client.get(&url).send().await
                && r.status() == 200
            {
                return r.text().await.unwrap();
            }
            assert!(Instant::now() < deadline, "worker {i} serves no metrics");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls worker `i`'s `/metrics` every 100 ms until `done` holds of its
    /// text, and answers that text; panics after `timeout`, naming `what`.
    pub async fn worker_metrics_when(
        &self,
        i: usize,
        timeout: Duration,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.worker_metrics_text(i).await;
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "worker {i}'s metrics never showed {what} within {timeout:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One request to the api, recorded in [`System::transcript`]; answers
    /// the status and the body parsed as JSON (`Value::Null` when it is not).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method.clone(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        self.transcript.lock().unwrap().push(Exchange {
            method,
            path: path.to_owned(),
            status,
            body: text.clone(),
        });
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `kill -9` of worker `i`.
    /// `kill -9` of the api.
    pub fn kill_api(&mut self) {
        if let Some(api) = &mut self.api {
            let _ = api.kill();
            let _ = api.wait();
        }
    }

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
        let (status, body) = self
            .call(
                Method::POST,
                "/api/auth/register",
                None,
                Some(&json!({"company_name": name, "username": username, "email": format!("{username}@example.com"), "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["tokens"]["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn create_integration(&self, token: &str, body: Value) -> String {
        let (status, body) = self
            .call(Method::POST, "/api/integrations", Some(token), Some(&body))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn create_ticket(&self, token: &str, body: Value) -> Value {
        let (status, body) = self
            .call(Method::POST, "/api/tickets", Some(token), Some(&body))
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn get_ticket(&self, token: &str, id: &str) -> Value {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/tickets/{id}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
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

    /// Creates a ticket and waits until it is terminal (see
    /// [`System::wait_terminal`]); answers the terminal ticket.
    pub async fn run_ticket(&self, token: &str, body: Value, timeout: Duration) -> Value {
        let ticket = self.create_ticket(token, body).await;
        let id = ticket["id"].as_str().expect("a created ticket has an id");
        self.wait_terminal(token, id, timeout).await
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
        // Unfinished only: retention deletes the jobs of finished actions.
        assert_eq!(q("SELECT count(*) FROM ticket_actions a WHERE a.status IN ('PENDING', 'RUNNING') AND a.job_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.id = a.job_id)").await, 0, "an unfinished action pointing at a missing job");
        assert_eq!(q("SELECT count(*) FROM ticket_actions a JOIN tickets t ON t.id = a.ticket_id WHERE t.status <> 'PENDING' AND a.status IN ('PENDING', 'RUNNING')").await, 0, "a closed ticket with an unfinished action");
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
