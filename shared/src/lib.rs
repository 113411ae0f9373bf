//! TxDx domain library: everything the api and the worker share.
//!
//! `api` and `worker` depend on this crate and never on each other. All SQL
//! lives in [`db`]; HTTP types never appear here.

/// Base abstractions for agents (sessions, memory references); no logic yet.
pub mod agents;
/// Password hashing and access/refresh token encoding.
pub mod auth;
/// Group commit: concurrent requests served in batches.
pub mod batch;
/// Typed configuration read once from the environment.
pub mod config;
/// Connection pool, migrations, tenant transactions and every SQL statement.
pub mod db;
/// Plain domain types and the pure rules over them.
pub mod domain;
/// The job payload and transactional enqueue.
pub mod jobs;
/// The provider catalogue: actions, typed params, credentials, settings.
pub mod providers;
/// The secret store trait and its backends.
pub mod secrets;
/// Tracing subscriber set-up shared by both binaries.
pub mod telemetry;

pub use sqlx::PgPool;
