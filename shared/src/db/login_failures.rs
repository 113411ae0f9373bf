//! Failed logins, counted per username and per client address for throttling.

use std::time::Duration;

use sqlx::PgPool;

use super::{
    DbError,
    audit::{NewAuditEvent, insert_audit_event},
};

/// Failed attempts allowed per username within [`WINDOW`].
pub const MAX_PER_USERNAME: i64 = 10;
/// Failed attempts allowed per client address within [`WINDOW`].
pub const MAX_PER_CLIENT: i64 = 50;
/// The sliding window.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Records one failed login and, for an existing user, its
/// `auth.login_failed` audit row, in one transaction.
///
/// Both kinds of failure commit once: a second commit for the audit row
/// made a wrong password answer about 2 ms slower than an unknown username
/// (measured by `scripts/login-timing.sh`), which told the two apart.
///
/// # Errors
/// Database failures.
pub async fn record_login_failure(
    pool: &PgPool,
    username: &str,
    client_ip: &str,
    audit: Option<NewAuditEvent<'_>>,
) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    // Not tenant data: written before the transaction takes the app role.
    sqlx::query("INSERT INTO login_failures (username, client_ip) VALUES ($1, $2)")
        .bind(username)
        .bind(client_ip)
        .execute(&mut *tx)
        .await?;
    if let Some(audit) = audit {
        sqlx::query("SELECT set_config('app.company_id', $1, true), set_config('role', $2, true)")
            .bind(audit.company_id.to_string())
            .bind(super::APP_ROLE)
            .execute(&mut *tx)
            .await?;
        insert_audit_event(&mut tx, audit).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Seconds until another login may be tried, when the username or the
/// client address has used up its allowance; `None` when not throttled.
///
/// # Errors
/// Database failures.
pub async fn login_throttle(
    pool: &PgPool,
    username: &str,
    client_ip: &str,
) -> Result<Option<u64>, DbError> {
    let window = i64::try_from(WINDOW.as_secs()).unwrap_or(900);
    // For each key: the count in the window and the age of the oldest
    // failure that must expire before the count drops below the limit.
    let retry: Option<f64> = sqlx::query_scalar(
        "WITH by_user AS (
             SELECT created_at FROM login_failures
             WHERE username = $1 AND created_at > now() - make_interval(secs => $3)
             ORDER BY created_at DESC OFFSET $4 - 1 LIMIT 1
         ), by_client AS (
             SELECT created_at FROM login_failures
             WHERE client_ip = $2 AND created_at > now() - make_interval(secs => $3)
             ORDER BY created_at DESC OFFSET $5 - 1 LIMIT 1
         )
         SELECT max(extract(epoch FROM (t.created_at + make_interval(secs => $3) - now())))::float8
         FROM (SELECT created_at FROM by_user UNION ALL SELECT created_at FROM by_client) t",
    )
    .bind(username)
    .bind(client_ip)
    .bind(window as f64)
    .bind(MAX_PER_USERNAME)
    .bind(MAX_PER_CLIENT)
    .fetch_one(pool)
    .await?;
    Ok(retry.map(|secs| secs.ceil().max(1.0) as u64))
}

/// Forgets a username's failures after a successful login.
///
/// # Errors
/// Database failures.
pub async fn clear_login_failures(pool: &PgPool, username: &str) -> Result<(), DbError> {
    sqlx::query("DELETE FROM login_failures WHERE username = $1")
        .bind(username)
        .execute(pool)
        .await?;
    Ok(())
}
