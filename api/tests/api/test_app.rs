//! `TestApp`: the application built by the same `build_app` as `main`,
//! served on 127.0.0.1:0, with helpers that read like the API.

use std::{collections::HashMap, sync::Arc, sync::OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use shared::config::Config;
use sqlx::PgPool;

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
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
        ("JWT_SECRET_KEY".into(), "test-secret-key-that-is-long-enough-0123456789".into()),
        ("TXDX_LOCAL_SECRET_KEY".into(), "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        ("FRONTEND_DIR".into(), concat!(env!("CARGO_MANIFEST_DIR"), "/../basic_frontend").into()),
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
        let app = txdx_api::build_app(pool.clone(), config, metrics_handle());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await
                .unwrap();
        });
        Self {
            address,
            pool,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }
}
