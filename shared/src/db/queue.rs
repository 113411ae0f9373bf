//! A company's view of its automation: ticket actions as jobs, with retry,
//! cancellation and queue statistics. Reads our tables (scoped by the
//! tenant) rather than apalis's cross-tenant job table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;
use crate::domain::{ActionStatus, Provider};

/// One action as a job, with its ticket's subject.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    /// The action id.
    pub id: Uuid,
    /// The ticket.
    pub ticket_id: Uuid,
    /// Its subject.
    pub ticket_subject: String,
    /// Position in the ticket.
    pub position: i32,
    /// Provider.
    pub provider: Provider,
    /// Action name.
    pub action: String,
    /// Integration.
    pub integration_id: Option<Uuid>,
    /// Status.
    pub status: ActionStatus,
    /// Attempts started.
    pub attempts: i32,
    /// Cap.
    pub max_attempts: i32,
    /// Last error.
    pub last_error: Option<String>,
    /// Next attempt time.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// First start.
    pub started_at: Option<DateTime<Utc>>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// The current queue job id.
    pub job_id: Option<String>,
}

const JOB_SELECT: &str = "SELECT a.id, a.ticket_id, t.subject AS ticket_subject, a.position, a.provider, a.action, a.integration_id, a.status, a.attempts, a.max_attempts, a.last_error, a.next_attempt_at, a.started_at, a.finished_at, a.created_at, a.job_id
     FROM ticket_actions a JOIN tickets t ON t.id = a.ticket_id AND t.company_id = a.company_id";

/// Filters of the jobs list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<ActionStatus>,
    /// Only this provider.
    pub provider: Option<Provider>,
    /// Only this ticket's actions.
    pub ticket_id: Option<Uuid>,
    /// Keyset cursor (created_at, id), strictly older.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

/// The company's jobs, newest first.
///
/// # Errors
/// Database failures.
pub async fn list_jobs(
    conn: &mut PgConnection,
    company_id: Uuid,
    f: &JobFilter,
) -> Result<Vec<JobRow>, DbError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{JOB_SELECT}
         WHERE a.company_id = $1
           AND ($2::text IS NULL OR a.status = $2)
           AND ($3::text IS NULL OR a.provider = $3)
           AND ($4::uuid IS NULL OR a.ticket_id = $4)
           AND ($5::timestamptz IS NULL OR (a.created_at, a.id) < ($5, $6))
         ORDER BY a.created_at DESC, a.id DESC
         LIMIT $7"
    )))
    .bind(company_id)
    .bind(f.status)
    .bind(f.provider)
    .bind(f.ticket_id)
    .bind(f.before.map(|b| b.0))
    .bind(f.before.map(|b| b.1))
    .bind(f.limit)
    .fetch_all(conn)
    .await?)
}

/// One job of the company.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn find_job(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<JobRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{JOB_SELECT} WHERE a.id = $1 AND a.company_id = $2"
    )))
    .bind(id)
    .bind(company_id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound("job"))
}

/// Locks an action row and returns (status, ticket_id, position).
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn lock_action(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<(ActionStatus, Uuid, i32), DbError> {
    sqlx::query_as("SELECT status, ticket_id, position FROM ticket_actions WHERE id = $1 AND company_id = $2 FOR UPDATE")
        .bind(id)
        .bind(company_id)
        .fetch_optional(conn)
        .await?
        .ok_or(DbError::NotFound("job"))
}

/// Reopens a FAILED or DERIVED action with fresh attempts, puts the actions
/// after it that were cancelled for its sake back to PENDING, and reopens the
/// ticket. The caller enqueues the job.
///
/// # Errors
/// Database failures.
pub async fn reopen_action(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
    ticket_id: Uuid,
    position: i32,
) -> Result<(), DbError> {
    sqlx::query("UPDATE ticket_actions SET status = 'PENDING', attempts = 0, next_attempt_at = NULL, finished_at = NULL, updated_at = now() WHERE id = $1 AND company_id = $2")
        .bind(id)
        .bind(company_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE ticket_actions SET status = 'PENDING', attempts = 0, last_error = NULL, finished_at = NULL, updated_at = now() WHERE ticket_id = $1 AND company_id = $2 AND position > $3 AND status = 'CANCELLED'")
        .bind(ticket_id)
        .bind(company_id)
        .bind(position)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE tickets SET status = 'PENDING', status_reason = NULL, executed_at = NULL, updated_at = now() WHERE id = $1 AND company_id = $2")
        .bind(ticket_id)
        .bind(company_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Cancels a PENDING action and the ones after it, and hands the ticket to a
/// human (DERIVED with `reason`).
///
/// # Errors
/// Database failures.
pub async fn cancel_action(
    conn: &mut PgConnection,
    company_id: Uuid,
    ticket_id: Uuid,
    position: i32,
    reason: &str,
) -> Result<(), DbError> {
    sqlx::query("UPDATE ticket_actions SET status = 'CANCELLED', last_error = $4, finished_at = now(), updated_at = now() WHERE ticket_id = $1 AND company_id = $2 AND position >= $3 AND status IS NOT DISTINCT FROM 'PENDING'")
        .bind(ticket_id)
        .bind(company_id)
        .bind(position)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE tickets SET status = 'DERIVED', status_reason = $3, executed_at = now(), updated_at = now() WHERE id = $1 AND company_id = $2 AND status IS NOT DISTINCT FROM 'PENDING'")
        .bind(ticket_id)
        .bind(company_id)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts in a time window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WindowStats {
    /// Actions that succeeded in the window.
    pub succeeded: i64,
    /// Actions that failed for good in the window.
    pub failed: i64,
    /// Finished actions per minute.
    pub throughput_per_min: f64,
    /// failed / (succeeded + failed); 0 when none finished.
    pub failure_rate: f64,
}

/// Raw counts for the company's queue statistics.
#[derive(Debug, Clone)]
pub struct QueueCounts {
    /// (status, provider, count).
    pub by_status_provider: Vec<(ActionStatus, Provider, i64)>,
    /// Age of the oldest action waiting to run, in seconds.
    pub oldest_pending_age_secs: Option<f64>,
    /// The last 5 minutes.
    pub last_5m: WindowStats,
    /// The last 60 minutes.
    pub last_60m: WindowStats,
}

async fn window(
    conn: &mut PgConnection,
    company_id: Uuid,
    minutes: i32,
) -> Result<WindowStats, DbError> {
    let (succeeded, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'SUCCEEDED'), count(*) FILTER (WHERE status = 'FAILED')
         FROM ticket_actions WHERE company_id = $1 AND finished_at > now() - make_interval(mins => $2)",
    )
    .bind(company_id)
    .bind(minutes)
    .fetch_one(conn)
    .await?;
    let done = succeeded + failed;
    Ok(WindowStats {
        succeeded,
        failed,
        throughput_per_min: done as f64 / f64::from(minutes),
        failure_rate: if done == 0 {
            0.0
        } else {
            failed as f64 / done as f64
        },
    })
}

/// The company's queue statistics.
///
/// # Errors
/// Database failures.
pub async fn queue_counts(
    conn: &mut PgConnection,
    company_id: Uuid,
) -> Result<QueueCounts, DbError> {
    let by_status_provider = sqlx::query_as(
        "SELECT status, provider, count(*) FROM ticket_actions WHERE company_id = $1 GROUP BY status, provider ORDER BY status, provider",
    )
    .bind(company_id)
    .fetch_all(&mut *conn)
    .await?;
    let oldest_pending_age_secs: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(coalesce(next_attempt_at, created_at)))::float8
         FROM ticket_actions WHERE company_id = $1 AND status = 'PENDING' AND job_id IS NOT NULL AND coalesce(next_attempt_at, created_at) <= now()",
    )
    .bind(company_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(QueueCounts {
        by_status_provider,
        oldest_pending_age_secs,
        last_5m: window(conn, company_id, 5).await?,
        last_60m: window(conn, company_id, 60).await?,
    })
}

/// Attempt history of an action, from its audit rows: (when, what, details).
///
/// # Errors
/// Database failures.
pub async fn action_history(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<Vec<(DateTime<Utc>, String, serde_json::Value)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT created_at, action, payload FROM audit_logs WHERE company_id = $1 AND entity_type = 'ticket_action' AND entity_id = $2 ORDER BY created_at, id",
    )
    .bind(company_id)
    .bind(id)
    .fetch_all(conn)
    .await?)
}
