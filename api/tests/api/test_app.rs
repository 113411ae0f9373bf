//! `TestApp`: the application built by the same `build_app` as `main`,
//! served on 127.0.0.1:0, with helpers that read like the API.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, OnceLock},
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use shared::config::Config;
use sqlx::PgPool;

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    /// The serving task: it ends once a stop has been asked for and every
    /// request in progress has been answered.
    pub served: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().build_recorder().handle())
        .clone()
}

pub fn test_config(extra: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), "postgres://unused".into()),
        (
            "JWT_SECRET_KEY".into(),
            "test-secret-key-that-is-long-enough-0123456789".into(),
        ),
        (
            "TXDX_LOCAL_SECRET_KEY".into(),
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        ),
        (
            "FRONTEND_DIR".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../basic_frontend").into(),
        ),
    ]);
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    Config::from_vars(vars).unwrap()
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, &[]).await
    }

    pub async fn spawn_with(pool: PgPool, extra: &[(&str, &str)]) -> Self {
        shared::db::migrate(&pool).await.unwrap();
        let config = Arc::new(test_config(extra));
        let keep_alive = config.api_keep_alive_timeout;
        let secrets = shared::secrets::from_config(&config, &pool).unwrap();
        let listening = if config.token_check_cache.is_zero() {
            0
        } else {
            user_change_listeners(&pool).await + 1
        };
        let state = txdx_api::state::AppState::new(pool.clone(), config, secrets, metrics_handle());
        // Every test starts with an api that reuses its token checks, as a
        // running one does once its listener for user changes is connected.
        wait_for_user_change_listeners(&pool, listening).await;
        let app = txdx_api::build_app(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(txdx_api::serve::serve(
            listener,
            app,
            keep_alive,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            address,
            pool,
            client: reqwest::Client::new(),
            served,
            stop: Some(stop),
        }
    }

    /// Asks the server to stop, as the api's SIGTERM handler does.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub user_id: uuid::Uuid,
    pub company_id: uuid::Uuid,
}

pub const PASSWORD: &str = "correct horse battery staple";

impl TestApp {
    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn put_json(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Registers a company; returns its ADMIN's session.
    pub async fn register_company(&self, name: &str) -> Session {
        let username = format!("{}-admin", name.to_lowercase().replace(' ', "-"));
        let response = self
            .post_json(
                "/api/auth/register",
                None,
                &serde_json::json!({"company_name": name, "username": username, "email": format!("{username}@example.com"), "password": PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: serde_json::Value = response.json().await.unwrap();
        Session {
            access_token: body["tokens"]["access_token"].as_str().unwrap().into(),
            refresh_token: body["tokens"]["refresh_token"].as_str().unwrap().into(),
            user_id: body["user"]["id"].as_str().unwrap().parse().unwrap(),
            company_id: body["company"]["id"].as_str().unwrap().parse().unwrap(),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/auth/login",
            None,
            &serde_json::json!({"username": username, "password": password}),
        )
        .await
    }

    /// Creates a user with `role` in the admin's company and logs it in.
    pub async fn create_user(&self, admin: &Session, username: &str, role: &str) -> Session {
        let response = self
            .post_json(
                "/api/users",
                Some(&admin.access_token),
                &serde_json::json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let user: serde_json::Value = response.json().await.unwrap();
        let tokens: serde_json::Value = self.login(username, PASSWORD).await.json().await.unwrap();
        Session {
            access_token: tokens["access_token"].as_str().unwrap().into(),
            refresh_token: tokens["refresh_token"].as_str().unwrap().into(),
            user_id: user["id"].as_str().unwrap().parse().unwrap(),
            company_id: admin.company_id,
        }
    }

    /// Creates a simulated integration; returns its id.
    pub async fn create_integration(
        &self,
        admin: &Session,
        provider: &str,
        name: &str,
    ) -> uuid::Uuid {
        let credentials = match provider {
            "WAZUH" => serde_json::json!({"username": "wazuh", "password": "wazuh-secret-value"}),
            "SPLUNK" => serde_json::json!({"token": "splunk-secret-token"}),
            _ => serde_json::json!({"api_key": "secret-api-key-value"}),
        };
        let response = self
            .post_json(
                "/api/integrations",
                Some(&admin.access_token),
                &serde_json::json!({"provider": provider, "name": name, "mode": "simulated", "credentials": credentials}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: serde_json::Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Sends `method path` with an optional bearer token and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    /// Locks `company_id`'s row until the returned transaction ends: a
    /// ticket insert for that company waits on it (its foreign-key check),
    /// so the request making it stays in flight.
    pub async fn hold_company_row(
        &self,
        company_id: uuid::Uuid,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut lock = self.pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM companies WHERE id = $1 FOR UPDATE")
            .bind(company_id)
            .execute(&mut *lock)
            .await
            .unwrap();
        lock
    }

    /// Sends `POST /api/tickets` (no actions) as `session` on a task of its
    /// own, so the test can act while the request is in flight.
    pub fn post_ticket_in_background(
        &self,
        session: &Session,
        subject: &str,
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        let request = self
            .client
            .post(self.url("/api/tickets"))
            .bearer_auth(&session.access_token)
            .json(&serde_json::json!({"subject": subject, "description": "", "actions": []}));
        tokio::spawn(async move { request.send().await.unwrap() })
    }

    /// Ticket inserts of this test's database that wait on a lock (tests
    /// running beside it have their own).
    pub async fn stalled_ticket_inserts(&self) -> i64 {
        self.count("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO tickets%'")
            .await
    }

    /// Waits (up to 10 s) until at least `n` ticket inserts wait on a lock
    /// ([`stalled_ticket_inserts`](Self::stalled_ticket_inserts)).
    pub async fn wait_for_stalled_ticket_inserts(&self, n: i64) {
        let mut waited = std::time::Duration::ZERO;
        while self.stalled_ticket_inserts().await < n {
            assert!(
                waited < std::time::Duration::from_secs(10),
                "fewer than {n} ticket inserts ever waited on the lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            waited += std::time::Duration::from_millis(20);
        }
    }

    /// Creates a ticket as `session` and returns its JSON.
    pub async fn create_ticket(
        &self,
        session: &Session,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let response = self
            .post_json("/api/tickets", Some(&session.access_token), body)
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Every row of every table in the `public` and `apalis` schemas, as
    /// text, by table (read as the superuser the pool connects as, so row-level
    /// security hides nothing). Two equal snapshots mean nothing changed.
    pub async fn snapshot(&self) -> BTreeMap<String, Vec<String>> {
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_schema, table_name FROM information_schema.tables
             WHERE table_schema IN ('public', 'apalis') AND table_type = 'BASE TABLE'
             ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        assert!(tables.len() > 10, "too few tables found: {tables:?}");
        let mut snapshot = BTreeMap::new();
        for (schema, table) in tables {
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                r#"SELECT t::text FROM "{schema}"."{table}" t ORDER BY 1"#
            )))
            .fetch_all(&self.pool)
            .await
            .unwrap();
            snapshot.insert(format!("{schema}.{table}"), rows);
        }
        snapshot
    }
}

/// Asserts that two snapshots are equal, naming the tables that differ.
pub fn assert_unchanged(
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
    context: &str,
) {
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|table| before.get(*table) != after.get(*table))
        .collect();
    assert!(changed.is_empty(), "{context}: tables changed: {changed:?}");
}

/// Asserts a problem+json response with `status` and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(actual, status, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// The backends of this test's database listening for user changes (one
/// per api process that reuses its token checks), as a `FROM` clause.
fn user_change_listeners_from() -> String {
    format!(
        "FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN \"{}\"'",
        shared::db::users::USER_CHANGES
    )
}

/// How many backends listen for user changes.
pub async fn user_change_listeners(pool: &PgPool) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) {}",
        user_change_listeners_from()
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Ends the connection of every backend listening for user changes, as a
/// lost connection would; answers whether each was signalled.
pub async fn terminate_user_change_listeners(pool: &PgPool) -> Vec<bool> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) {}",
        user_change_listeners_from()
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until `n` backends of this test's database listen for user
/// changes (0: returns at once).
pub async fn wait_for_user_change_listeners(pool: &PgPool, n: i64) {
    let started = std::time::Instant::now();
    while n > 0 && user_change_listeners(pool).await < n {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{} api processes listen for user changes, not {n}",
            user_change_listeners(pool).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
