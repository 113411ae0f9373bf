//! Shared state handed to every handler.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use shared::{PgPool, auth::token::TokenCodec, config::Config, secrets::SecretStore};
use tokio::sync::Semaphore;

/// What handlers need: the pool, the configuration, token keys, the secret
/// store, the metrics handle, and the bound on concurrent password hashing.
#[derive(Clone)]
pub struct AppState {
    /// The connection pool.
    pub pool: PgPool,
    /// The configuration read at start-up.
    pub config: Arc<Config>,
    /// Issues and checks tokens.
    pub tokens: Arc<TokenCodec>,
    /// Integration credentials.
    pub secrets: Arc<dyn SecretStore>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// argon2id, off the executor, bounded, at the lowest priority, and the
    /// turns of logins and password changes, so a burst of them cannot
    /// starve the other requests of CPU or of connections.
    pub hashing: crate::hashing::Hashing,
    /// Token checks reused for `TOKEN_CHECK_CACHE_MS`, forgotten when
    /// PostgreSQL announces their user's change.
    pub token_checks: crate::auth::TokenChecks,
    /// Recently verified operator credentials for the queue board.
    pub operator_auth: crate::board::OperatorAuthCache,
    /// One permit per `/api/` request being worked on (`API_MAX_IN_FLIGHT`).
    pub in_flight: Arc<Semaphore>,
    /// The group commit of new tickets.
    pub tickets: crate::ticket_writer::TicketWriter,
}

impl AppState {
    /// Builds the state and starts the ticket writers and the token checks'
    /// listener, which holds one of `pool`'s connections (so it must run
    /// inside a Tokio runtime); password hashing is bounded by the number
    /// of CPUs.
    pub fn new(
        pool: PgPool,
        config: Arc<Config>,
        secrets: Arc<dyn SecretStore>,
        metrics: PrometheusHandle,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(config.api_max_in_flight));
        let tickets = crate::ticket_writer::TicketWriter::spawn(pool.clone(), config.clone());
        let token_checks = crate::auth::TokenChecks::new(config.token_check_cache);
        tokio::spawn(token_checks.clone().follow_changes(pool.clone()));
        Self {
            tokens: Arc::new(TokenCodec::from_config(&config)),
            token_checks,
            pool,
            config,
            secrets,
            metrics,
            hashing: crate::hashing::Hashing::half_the_cpus(),
            operator_auth: crate::board::OperatorAuthCache::default(),
            in_flight,
            tickets,
        }
    }
}
