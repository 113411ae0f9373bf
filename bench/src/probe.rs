//! Every SQL statement of the benchmark: it reads the product's tables to
//! measure (database timestamps, pending counts) and PostgreSQL's own
//! statistics. Like the tests' assertions, this is measuring code, not
//! product code, so it lives here and not in `shared::db`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

/// A small pool to `url`.
///
/// # Errors
/// When the server cannot be reached.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?)
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The database is the path after the authority: scheme://authority/db.
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Drops (if present) and creates database `name`, from the admin pool.
///
/// # Errors
/// Database failures; a name that is not a plain identifier.
pub async fn recreate_database(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "database name {name:?} must be lowercase letters and underscores"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin)
        .await?;
    Ok(())
}

/// The server's clock (`clock_timestamp()`), to cut windows in database time.
///
/// # Errors
/// Database failures.
pub async fn db_now(pool: &PgPool) -> anyhow::Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?)
}

/// Tickets still PENDING.
///
/// Counted company by company through the list index
/// `(company_id, status, ...)`: with a million finished tickets of history
/// (the growth runs) a plain `WHERE status = 'PENDING'` would scan the whole
/// table at every poll, on the CPUs of the system measured.
///
/// # Errors
/// Database failures.
pub async fn pending_tickets(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tickets WHERE company_id = ANY(ARRAY(SELECT id FROM companies)) AND status = 'PENDING'",
    )
    .fetch_one(pool)
    .await?)
}

/// Waits until no ticket is PENDING or `timeout` passes, counting every
/// `every`; returns the number still pending. The count scans `tickets` on
/// the same CPUs as the system measured: poll no more often than needed.
///
/// # Errors
/// Database failures.
pub async fn wait_drained(
    pool: &PgPool,
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pending = pending_tickets(pool).await?;
        if pending == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(pending);
        }
        tokio::time::sleep(every).await;
    }
}

/// `created_at → executed_at` of the given tickets that are EXECUTED (ms),
/// and how many of them are not.
///
/// # Errors
/// Database failures.
pub async fn e2e_latencies(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<(Vec<f64>, usize)> {
    let rows: Vec<(String, Option<f64>)> = sqlx::query_as(
        "SELECT status, (extract(epoch FROM executed_at - created_at) * 1000)::float8 FROM tickets WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let executed: Vec<f64> = rows
        .iter()
        .filter(|(s, _)| s == "EXECUTED")
        .filter_map(|(_, ms)| *ms)
        .collect();
    let other = ids.len() - executed.len();
    Ok((executed, other))
}

/// Tickets whose `executed_at` falls in `[from, to)`.
///
/// # Errors
/// Database failures.
pub async fn executed_between(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tickets WHERE executed_at >= $1 AND executed_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?)
}

/// The latest `executed_at`.
///
/// # Errors
/// Database failures.
pub async fn last_executed(pool: &PgPool) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT max(executed_at) FROM tickets")
        .fetch_one(pool)
        .await?)
}

/// Tickets not EXECUTED among all (a failed or derived one means the
/// benchmark did not measure the happy path).
///
/// # Errors
/// Database failures.
pub async fn not_executed(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tickets WHERE status NOT IN ('EXECUTED', 'PENDING')",
    )
    .fetch_one(pool)
    .await?)
}

/// The server's process id as the OS sees it (the postmaster), found as the
/// parent of this connection's backend; `None` when PostgreSQL runs
/// elsewhere.
///
/// # Errors
/// Database failures.
pub async fn postmaster_pid(pool: &PgPool) -> anyhow::Result<Option<u32>> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await?;
    Ok(u32::try_from(backend)
        .ok()
        .and_then(crate::procfs::parent)
        .filter(|p| *p > 1))
}

/// Server facts for the report.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// `version()`.
    pub version: String,
    /// Settings that shape the results.
    pub settings: Vec<(String, String)>,
    /// Whether `pg_stat_statements` is loaded.
    pub stat_statements: bool,
}

/// Version, relevant settings and whether `pg_stat_statements` can be used
/// (creating the extension in `pool`'s database when preloaded).
///
/// # Errors
/// Database failures.
pub async fn server_info(pool: &PgPool) -> anyhow::Result<ServerInfo> {
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(pool)
        .await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN ('shared_buffers', 'fsync', 'synchronous_commit', 'max_connections', 'wal_level', 'shared_preload_libraries', 'work_mem') ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let stat_statements = settings
        .iter()
        .any(|(k, v)| k == "shared_preload_libraries" && v.contains("pg_stat_statements"))
        && sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(pool)
            .await
            .is_ok();
    Ok(ServerInfo {
        version,
        settings,
        stat_statements,
    })
}

/// One row of `pg_stat_statements`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Statement {
    /// Normalised text (shortened).
    pub query: String,
    /// Executions.
    pub calls: i64,
    /// Total execution time (ms).
    pub total_ms: f64,
    /// Mean execution time (ms).
    pub mean_ms: f64,
    /// Rows.
    pub rows: i64,
}

/// Forgets the statistics gathered so far.
///
/// # Errors
/// Database failures.
pub async fn reset_statements(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pool)
        .await?;
    Ok(())
}

/// The statements that took most of the server's time since the last
/// reset, in `pool`'s database.
///
/// # Errors
/// Database failures.
pub async fn top_statements(pool: &PgPool, limit: i64) -> anyhow::Result<Vec<Statement>> {
    Ok(sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS query, calls, total_exec_time AS total_ms, mean_exec_time AS mean_ms, rows
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// What the server's sessions were doing, counted over many samples: the
/// share of samples each (wait, statement) pair took.
#[derive(Debug, Clone, Serialize)]
pub struct WaitSample {
    /// `Type:Event` from `pg_stat_activity`, `CPU` for an active session
    /// waiting on nothing, or `Client:idle in transaction` for a session
    /// whose transaction waits on its client.
    pub wait: String,
    /// The statement (shortened).
    pub query: String,
    /// Samples in which a session was in this state.
    pub samples: u64,
}

/// Samples taken, and how often each (wait, statement) pair was seen.
type WaitCounts = (u64, std::collections::HashMap<(String, String), u64>);

/// Samples of `pg_stat_activity` taken until [`WaitSampler::finish`].
pub struct WaitSampler {
    task: tokio::task::JoinHandle<WaitCounts>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl WaitSampler {
    /// Every `every`, on a connection of its own, records what each client
    /// session of `pool`'s database is doing (running, waiting on a lock,
    /// on I/O, or idle inside a transaction), and the statement.
    pub fn start(pool: &PgPool, every: Duration) -> Self {
        let pool = pool.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut counts = std::collections::HashMap::new();
            let mut rounds = 0_u64;
            let Ok(mut conn) = pool.acquire().await else {
                return (rounds, counts);
            };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let rows: Result<Vec<(String, String)>, _> = sqlx::query_as(
                    "SELECT CASE WHEN state = 'active' THEN coalesce(wait_event_type || ':' || wait_event, 'CPU')
                                 ELSE 'Client:' || state END,
                            left(regexp_replace(query, '\\s+', ' ', 'g'), 120)
                     FROM pg_stat_activity
                     WHERE datname = current_database() AND backend_type = 'client backend'
                       AND pid <> pg_backend_pid()
                       AND state IN ('active', 'idle in transaction')",
                )
                .fetch_all(&mut *conn)
                .await;
                let Ok(rows) = rows else { break };
                rounds += 1;
                for key in rows {
                    *counts.entry(key).or_insert(0) += 1;
                }
            }
            (rounds, counts)
        });
        Self { task, stop }
    }

    /// Stops sampling; the number of samples taken and the `limit` most
    /// frequent (wait, statement) pairs, most frequent first.
    pub async fn finish(self, limit: usize) -> (u64, Vec<WaitSample>) {
        let _ = self.stop.send(true);
        let (rounds, counts) = self.task.await.unwrap_or_default();
        let mut top: Vec<WaitSample> = counts
            .into_iter()
            .map(|((wait, query), samples)| WaitSample {
                wait,
                query,
                samples,
            })
            .collect();
        top.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.query.cmp(&b.query))
        });
        top.truncate(limit);
        (rounds, top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/txdx", "b"),
            "postgres://u@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u@h:1/x?sslmode=disable", "b"),
            "postgres://u@h:1/b?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "b"), "postgres://h:1/b");
    }
}

/// What [`settle`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settled {
    /// Seconds of `VACUUM (ANALYZE)` and `CHECKPOINT`.
    pub seconds: f64,
    /// Why the checkpoint was not taken, if it was not (it needs a
    /// superuser or `pg_checkpoint` on the server the benchmark was given).
    pub no_checkpoint: Option<String>,
}

/// Brings the hot tables to rest before a measurement: `VACUUM (ANALYZE)`
/// (dead rows of earlier phases gone, statistics fresh) and a
/// `CHECKPOINT` (the dirty pages of earlier phases written now, not by a
/// timed checkpoint during the steps). Autovacuum and the checkpointer
/// would otherwise do this work at moments of their choosing, inside
/// whichever step they fell in.
///
/// # Errors
/// When the vacuum fails.
pub async fn settle(conn: &mut sqlx::PgConnection) -> anyhow::Result<Settled> {
    let t0 = std::time::Instant::now();
    sqlx::raw_sql("VACUUM (ANALYZE) tickets, ticket_actions, audit_logs, apalis.jobs")
        .execute(&mut *conn)
        .await
        .map_err(|e| anyhow::anyhow!("VACUUM (ANALYZE): {e}"))?;
    let no_checkpoint = sqlx::raw_sql("CHECKPOINT")
        .execute(&mut *conn)
        .await
        .err()
        .map(|e| e.to_string());
    Ok(Settled {
        seconds: t0.elapsed().as_secs_f64(),
        no_checkpoint,
    })
}
