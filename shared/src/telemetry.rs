//! Telemetry set-up shared by the api and the worker: tracing (an env filter
//! and either human-readable or JSON lines on stderr) and the Prometheus
//! metrics recorder.

use std::time::Duration;

use metrics_exporter_prometheus::{
    BuildError, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Histogram buckets (seconds) for request and action durations, so
/// Prometheus gets real histograms that Grafana can take quantiles of.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often a process's metrics recorder folds the samples its histograms
/// took since the last time into their buckets (the exporter's own default).
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A Prometheus recorder with [`LATENCY_BUCKETS`], and a task on the current
/// tokio runtime that runs its upkeep every `every`.
///
/// The recorder keeps each histogram sample (24 bytes) until an upkeep or a
/// `/metrics` scrape folds it into the buckets. Without the task, a process
/// nobody scrapes grows by every request it serves: about 48 MiB for the two
/// million requests of a full benchmark run, all of it still held at rest.
///
/// # Panics
/// Outside a tokio runtime.
pub fn metrics_recorder(every: Duration) -> Result<PrometheusRecorder, BuildError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    });
    Ok(recorder)
}

/// Installs the process's metrics recorder ([`metrics_recorder`], upkeep
/// every [`METRICS_UPKEEP_EVERY`]) as the global one; the handle renders
/// `/metrics`. Call once, at start-up, inside the tokio runtime.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    let recorder = metrics_recorder(METRICS_UPKEEP_EVERY)?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    Ok(handle)
}

/// Installs the global subscriber. Call once, at start-up.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    // A subscriber already installed (tests) is fine.
    drop(result);
}
