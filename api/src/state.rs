//! Shared state handed to every handler.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use shared::{PgPool, config::Config};

/// What handlers need: the pool, the configuration, the metrics handle.
#[derive(Clone)]
pub struct AppState {
    /// The connection pool.
    pub pool: PgPool,
    /// The configuration read at start-up.
    pub config: Arc<Config>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}
