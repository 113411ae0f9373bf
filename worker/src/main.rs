//! The `worker` binary: connects, checks the schema, runs the queue consumer
//! and a metrics endpoint; SIGTERM/SIGINT drain in-flight actions.

use std::process::ExitCode;

use axum::{Router, routing::get};
use shared::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("worker: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init(&config.log_filter, config.log_format);
    let state = match txdx_worker::prepare(&config).await {
        Ok(state) => state,
        Err(e) => {
            eprintln!("worker: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match shared::telemetry::install_metrics() {
        Ok(handle) => {
            let app = Router::new()
                .route("/metrics", get(move || std::future::ready(handle.render())))
                .route("/health", get(|| std::future::ready("ok")));
            match tokio::net::TcpListener::bind(config.worker_metrics_addr).await {
                Ok(listener) => {
                    tracing::info!(
                        "worker metrics on http://{}/metrics",
                        config.worker_metrics_addr
                    );
                    tokio::spawn(async move { axum::serve(listener, app).await });
                }
                // Several workers on one host: only the first gets the port.
                Err(e) => tracing::warn!(
                    "worker metrics not served on {}: {e}",
                    config.worker_metrics_addr
                ),
            }
        }
        Err(e) => tracing::warn!("metrics recorder not installed: {e}"),
    }
    match txdx_worker::run(&config, state, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("worker stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = terminate => {} }
}
