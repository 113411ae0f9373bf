//! `/api/jobs` and `/api/queue/stats`: a company ADMIN's view of its own
//! automation. A job is one ticket action; retry and cancel are audited.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::{
    db::{
        self,
        queue::{JobFilter, JobRow, WindowStats},
    },
    domain::{ActionStatus, Provider},
    jobs::{ActionJob, enqueue_action},
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::{AdminUser, AuthUser},
    error::ApiError,
    extract::{Json, Path, Query},
    routes::tickets::{TicketResponse, decode_cursor, encode_cursor},
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_job))
        .routes(routes!(get_queue_stats))
}

/// A job: one ticket action and where it stands in the queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResponse {
    /// The action id.
    pub id: Uuid,
    /// The ticket.
    pub ticket_id: Uuid,
    /// The ticket's subject.
    pub ticket_subject: String,
    /// Position in the ticket.
    pub position: i32,
    /// Provider.
    pub provider: Provider,
    /// Action.
    pub action: String,
    /// Integration (absent once deleted).
    pub integration_id: Option<Uuid>,
    /// Status.
    pub status: ActionStatus,
    /// Attempts started.
    pub attempts: i32,
    /// Cap.
    pub max_attempts: i32,
    /// Last error.
    pub last_error: Option<String>,
    /// Next attempt time while waiting for a retry.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// First start.
    pub started_at: Option<DateTime<Utc>>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// The current queue job's id.
    pub queue_job_id: Option<String>,
}

impl From<JobRow> for JobResponse {
    fn from(j: JobRow) -> Self {
        Self {
            id: j.id,
            ticket_id: j.ticket_id,
            ticket_subject: j.ticket_subject,
            position: j.position,
            provider: j.provider,
            action: j.action,
            integration_id: j.integration_id,
            status: j.status,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            last_error: j.last_error,
            next_attempt_at: j.next_attempt_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            created_at: j.created_at,
            queue_job_id: j.job_id,
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub items: Vec<JobResponse>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// One event of a job's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// `action.succeeded`, `action.retry_scheduled`, `action.failed`, `job.retried`, ...
    pub event: String,
    /// Details (attempt, error, retry time).
    #[schema(value_type = Object)]
    pub details: Value,
}

/// A job with its history and its ticket.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    /// The job.
    pub job: JobResponse,
    /// Attempts and interventions, oldest first.
    pub history: Vec<JobEvent>,
    /// The ticket, with all its actions.
    pub ticket: TicketResponse,
}

/// Filters of the jobs list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only this status.
    pub status: Option<ActionStatus>,
    /// Only this provider.
    pub provider: Option<Provider>,
    /// Only this ticket's jobs.
    pub ticket_id: Option<Uuid>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "crate::pagination::limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The statistics take no parameters; any query parameter is refused.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {}

/// Why a job is cancelled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelJobRequest {
    /// Shown as the ticket's `status_reason` (default: "cancelled by an ADMIN").
    #[serde(default)]
    pub reason: Option<String>,
}

/// The company's queue statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStats {
    /// Jobs by status.
    pub by_status: BTreeMap<String, i64>,
    /// Jobs by provider, then status.
    pub by_provider: BTreeMap<String, BTreeMap<String, i64>>,
    /// Seconds the oldest runnable job has waited; absent when none waits.
    pub oldest_pending_age_secs: Option<f64>,
    /// The last 5 minutes.
    pub last_5m: WindowStats,
    /// The last 60 minutes.
    pub last_60m: WindowStats,
}

/// The company's jobs (ADMIN).
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", operation_id = "list_jobs",
    security(("bearer" = [])),
    params(JobQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Bad filter or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list_jobs(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Query(q): Query<JobQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = q.limit.unwrap_or(crate::pagination::DEFAULT_LIMIT);
    let filter = JobFilter {
        status: q.status,
        provider: q.provider,
        ticket_id: q.ticket_id,
        before: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: i64::from(limit) + 1,
    };
    let mut tx = db::begin_tenant(&state.pool, admin.company_id).await?;
    let mut rows = db::queue::list_jobs(&mut tx, admin.company_id, &filter).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|j| encode_cursor(j.created_at, j.id))
    } else {
        None
    };
    Ok(Json(JobPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One job with its attempt history and its ticket (ADMIN).
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", operation_id = "get_job",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job (action) id")),
    responses(
        (status = 200, description = "The job", body = JobDetail),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job in this company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_job(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<JobDetail>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let detail = load_detail(&mut tx, user.company_id, id).await?;
    // Looked up first: another company's id is a 404 for everyone.
    user.require_admin()?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(detail))
}

async fn load_detail(
    conn: &mut db::PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<JobDetail, ApiError> {
    let job = db::queue::find_job(conn, company_id, id).await?;
    let history = db::queue::action_history(conn, company_id, id)
        .await?
        .into_iter()
        .map(|(at, event, details)| JobEvent { at, event, details })
        .collect();
    let ticket = db::tickets::find_ticket(conn, company_id, job.ticket_id).await?;
    let actions = db::tickets::list_ticket_actions(conn, company_id, job.ticket_id).await?;
    Ok(JobDetail {
        job: job.into(),
        history,
        ticket: TicketResponse::new(ticket, Some(actions)),
    })
}

/// Retries a FAILED (or DERIVED) job with fresh attempts; its ticket reopens
/// to PENDING and the actions after it run again in order (ADMIN; audited).
#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "jobs", operation_id = "retry_job",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job (action) id")),
    responses(
        (status = 200, description = "Re-enqueued", body = JobDetail),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job in this company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not FAILED or DERIVED", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn retry_job(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<JobDetail>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let (status, ticket_id, position) =
        db::queue::lock_action(&mut tx, user.company_id, id).await?;
    let admin = user.require_admin()?;
    db::tickets::lock_ticket(&mut tx, admin.company_id, ticket_id).await?;
    if !matches!(status, ActionStatus::Failed | ActionStatus::Derived) {
        return Err(ApiError::Conflict(format!(
            "only a FAILED or DERIVED job can be retried; this one is {status}"
        )));
    }
    db::queue::reopen_action(&mut tx, admin.company_id, id, ticket_id, position).await?;
    let backlog = db::actions::company_backlog(&mut tx, admin.company_id).await?;
    enqueue_action(
        &mut tx,
        &ActionJob {
            company_id: admin.company_id,
            ticket_id,
            action_id: id,
        },
        None,
        backlog,
    )
    .await?;
    super::audit(
        &mut tx,
        admin,
        "job.retried",
        "ticket_action",
        id,
        json!({"ticket_id": ticket_id, "previous_status": status}),
    )
    .await?;
    let detail = load_detail(&mut tx, admin.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(detail))
}

/// Cancels a job that has not started; its ticket becomes DERIVED with the
/// reason, and the ticket's later jobs are cancelled too (ADMIN; audited).
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job (action) id")),
    request_body(content = Option<CancelJobRequest>, description = "Optional reason"),
    responses(
        (status = 200, description = "Cancelled", body = JobDetail),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job in this company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is running or finished", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid reason", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn cancel_job(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    body: Option<Json<CancelJobRequest>>,
) -> Result<Json<JobDetail>, ApiError> {
    let reason = body
        .and_then(|Json(b)| b.reason)
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 2000) {
        return Err(ApiError::invalid(
            "reason",
            "must be at most 2000 characters",
        ));
    }
    let reason = format!(
        "cancelled by an ADMIN: {}",
        reason.as_deref().unwrap_or("no reason given")
    );
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let (status, ticket_id, position) =
        db::queue::lock_action(&mut tx, user.company_id, id).await?;
    let admin = user.require_admin()?;
    db::tickets::lock_ticket(&mut tx, admin.company_id, ticket_id).await?;
    if status != ActionStatus::Pending {
        return Err(ApiError::Conflict(format!(
            "only a PENDING job can be cancelled; this one is {status}"
        )));
    }
    db::queue::cancel_action(&mut tx, admin.company_id, ticket_id, position, &reason).await?;
    super::audit(
        &mut tx,
        admin,
        "job.cancelled",
        "ticket_action",
        id,
        json!({"ticket_id": ticket_id, "reason": reason}),
    )
    .await?;
    let detail = load_detail(&mut tx, admin.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(detail))
}

/// Counts by status and provider, the oldest waiting job's age, throughput
/// and failure rate over the last 5 and 60 minutes (ADMIN, own company).
#[utoipa::path(get, path = "/api/queue/stats", tag = "jobs", operation_id = "get_queue_stats",
    security(("bearer" = [])),
    params(StatsQuery),
    responses(
        (status = 200, description = "Statistics", body = QueueStats),
        (status = 400, description = "Unknown query parameter", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_queue_stats(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Query(StatsQuery {}): Query<StatsQuery>,
) -> Result<Json<QueueStats>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, admin.company_id).await?;
    let counts = db::queue::queue_counts(&mut tx, admin.company_id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let mut by_status: BTreeMap<String, i64> = ActionStatus::ALL
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    let mut by_provider: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (status, provider, n) in counts.by_status_provider {
        *by_status.entry(status.to_string()).or_default() += n;
        *by_provider
            .entry(provider.to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += n;
    }
    Ok(Json(QueueStats {
        by_status,
        by_provider,
        oldest_pending_age_secs: counts.oldest_pending_age_secs,
        last_5m: counts.last_5m,
        last_60m: counts.last_60m,
    }))
}
