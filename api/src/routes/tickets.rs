//! `/api/tickets`: create tickets with provider actions (queued atomically),
//! follow them, edit them while PENDING, hand them to a human.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::{
    db::{self, audit::NewAuditEvent, tickets::TicketFilter},
    domain::{ActionStatus, Provider, Ticket, TicketAction, TicketStatus},
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::AuthUser,
    error::ApiError,
    extract::{Json, Path, Query},
    state::AppState,
    ticket_writer::{CreateTicket, Created, create_tickets},
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tickets, create_ticket))
        .routes(routes!(get_ticket, update_ticket, delete_ticket))
        .routes(routes!(stream_ticket_events))
}

/// Most actions one ticket may carry.
pub const MAX_ACTIONS: usize = shared::domain::MAX_ACTIONS_PER_TICKET;

/// One action of a new ticket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewActionRequest {
    /// An integration of the caller's company.
    pub integration_id: Uuid,
    /// Optional check: must match the integration's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// A catalogue action of that provider, e.g. `block_ip`.
    #[schema(example = "block_ip")]
    pub action: String,
    /// The action's parameters (see the provider's params schema).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object, example = json!({"ip": "203.0.113.7"}))]
    pub params: Value,
    /// Attempt cap for this action (1 to 100; default from configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
}

fn empty_object() -> Value {
    json!({})
}

/// A new ticket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTicketRequest {
    /// 1 to 300 characters.
    #[schema(example = "Block scanner 203.0.113.7")]
    pub subject: String,
    /// Up to 20,000 characters.
    #[serde(default)]
    pub description: String,
    /// Provider actions, run in order; none makes a manual ticket that stays PENDING.
    #[serde(default, deserialize_with = "crate::extract::objects")]
    pub actions: Vec<NewActionRequest>,
}

/// Changes to a ticket.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTicketRequest {
    /// New subject (while PENDING).
    #[serde(default)]
    pub subject: Option<String>,
    /// New description (while PENDING).
    #[serde(default)]
    pub description: Option<String>,
    /// `DERIVED` hands the ticket to a human (ADMIN; needs `status_reason`).
    #[serde(default)]
    pub status: Option<TicketStatus>,
    /// Why it is derived.
    #[serde(default)]
    pub status_reason: Option<String>,
}

/// An action as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionResponse {
    /// Id (also the job id of `/api/jobs`).
    pub id: Uuid,
    /// Execution order.
    pub position: i32,
    /// Integration (absent once deleted).
    pub integration_id: Option<Uuid>,
    /// Provider.
    pub provider: Provider,
    /// Action name.
    pub action: String,
    /// Parameters.
    #[schema(value_type = Object)]
    pub params: Value,
    /// Status.
    pub status: ActionStatus,
    /// Attempts started.
    pub attempts: i32,
    /// Attempt cap.
    pub max_attempts: i32,
    /// Last error.
    pub last_error: Option<String>,
    /// Provider result.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Next attempt time while waiting for a retry.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// First attempt start.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<TicketAction> for ActionResponse {
    fn from(a: TicketAction) -> Self {
        Self {
            id: a.id,
            position: a.position,
            integration_id: a.integration_id,
            provider: a.provider,
            action: a.action,
            params: a.params,
            status: a.status,
            attempts: a.attempts,
            max_attempts: a.max_attempts,
            last_error: a.last_error,
            result: a.result,
            next_attempt_at: a.next_attempt_at,
            started_at: a.started_at,
            finished_at: a.finished_at,
        }
    }
}

/// A ticket as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketResponse {
    /// Id.
    pub id: Uuid,
    /// Company.
    pub company_id: Uuid,
    /// Creator.
    pub created_by_user_id: Option<Uuid>,
    /// Subject.
    pub subject: String,
    /// Description.
    pub description: String,
    /// PENDING, EXECUTED, FAILED or DERIVED.
    pub status: TicketStatus,
    /// Why FAILED or DERIVED.
    pub status_reason: Option<String>,
    /// When it reached a terminal status.
    pub executed_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Its actions in order (omitted in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<ActionResponse>>,
}

impl TicketResponse {
    pub(crate) fn new(t: Ticket, actions: Option<Vec<TicketAction>>) -> Self {
        Self {
            id: t.id,
            company_id: t.company_id,
            created_by_user_id: t.created_by_user_id,
            subject: t.subject,
            description: t.description,
            status: t.status,
            status_reason: t.status_reason,
            executed_at: t.executed_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
            actions: actions.map(|a| a.into_iter().map(Into::into).collect()),
        }
    }
}

/// A page of tickets.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketPage {
    /// Tickets, newest first.
    pub items: Vec<TicketResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and pagination of the ticket list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TicketQuery {
    /// Only this status.
    pub status: Option<TicketStatus>,
    /// Created at or after (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "crate::pagination::limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Encodes a keyset cursor.
pub fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}|{id}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    ))
}

/// Decodes a keyset cursor.
///
/// # Errors
/// 400 for anything that is not a cursor this API issued.
pub fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad =
        || ApiError::BadRequest("invalid cursor: pass `next_cursor` from the previous page".into());
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| bad())?
        .with_timezone(&Utc);
    let id = id.parse().map_err(|_| bad())?;
    Ok((at, id))
}

/// The company's tickets, newest first, filtered and paginated.
#[utoipa::path(get, path = "/api/tickets", tag = "tickets", operation_id = "list_tickets",
    security(("bearer" = [])),
    params(TicketQuery),
    responses(
        (status = 200, description = "A page of tickets", body = TicketPage),
        (status = 400, description = "Bad filter or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list_tickets(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<TicketQuery>,
) -> Result<Json<TicketPage>, ApiError> {
    let limit = q.limit.unwrap_or(crate::pagination::DEFAULT_LIMIT);
    let filter = TicketFilter {
        status: q.status,
        created_after: q.created_after,
        created_before: q.created_before,
        before: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: i64::from(limit) + 1,
    };
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let mut rows = db::tickets::list_tickets(&mut tx, user.company_id, &filter).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|t| encode_cursor(t.created_at, t.id))
    } else {
        None
    };
    Ok(Json(TicketPage {
        items: rows
            .into_iter()
            .map(|t| TicketResponse::new(t, None))
            .collect(),
        next_cursor,
    }))
}

/// Creates a ticket and queues its actions, atomically.
///
/// Every action is checked first (integration of the caller's company,
/// catalogue action, typed params); then the ticket, its actions, the audit
/// row and the first action's queue job commit in one transaction. With an
/// `Idempotency-Key` header, a retry with the same key and body returns the
/// first ticket (header `Idempotent-Replayed: true`); the same key with
/// another body is 422. Keys are per company and live 24 h (configurable).
#[utoipa::path(post, path = "/api/tickets", tag = "tickets", operation_id = "create_ticket",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 255 characters")),
    request_body = CreateTicketRequest,
    responses(
        (status = 201, description = "Created (or replayed for a repeated Idempotency-Key)", body = TicketResponse),
        (status = 400, description = "Malformed JSON or header", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (named), or an Idempotency-Key reused with another body", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn create_ticket(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<CreateTicketRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
                .trim()
                .to_owned();
            if key.is_empty() || key.len() > 255 {
                return Err(ApiError::BadRequest(
                    "Idempotency-Key must be 1 to 255 characters".into(),
                ));
            }
            Some(key)
        }
    };
    let subject = body.subject.trim();
    if subject.is_empty() || subject.chars().count() > 300 {
        return Err(ApiError::invalid("subject", "must be 1 to 300 characters"));
    }
    if body.description.chars().count() > 20_000 {
        return Err(ApiError::invalid(
            "description",
            "must be at most 20000 characters",
        ));
    }
    if body.actions.len() > MAX_ACTIONS {
        return Err(ApiError::invalid(
            "actions",
            format!("at most {MAX_ACTIONS} actions per ticket"),
        ));
    }
    // The body's digest, recorded with an Idempotency-Key to tell a replay
    // from a key reused with another body.
    let keyed = match idempotency_key {
        None => None,
        Some(key) => {
            let body = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.into()))?;
            Some((key, hex::encode(Sha256::digest(body))))
        }
    };

    let request = CreateTicket {
        user,
        subject: subject.to_owned(),
        description: body.description,
        actions: body.actions,
    };
    let (created, replayed) = match keyed {
        None => (state.tickets.create(request).await?, false),
        Some((key, hash)) => create_idempotent(&state, request, &key, &hash).await?,
    };
    let Created { ticket, actions } = created;
    if !replayed {
        metrics::counter!("txdx_api_tickets_created_total").increment(1);
        tracing::info!(ticket.id = %ticket.id, company.id = %user.company_id, actions = actions.len(), "ticket {} created", ticket.id);
    }
    let mut response = (
        StatusCode::CREATED,
        Json(TicketResponse::new(ticket, Some(actions))),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A creation under an `Idempotency-Key`, in a transaction of its own: the
/// key is claimed first, so a replay returns the ticket the key made (and
/// `true`), a key reused with another body is refused, and a new key is
/// recorded with the ticket it makes.
async fn create_idempotent(
    state: &AppState,
    request: CreateTicket,
    key: &str,
    request_hash: &str,
) -> Result<(Created, bool), ApiError> {
    let company_id = request.user.company_id;
    let mut tx = db::begin_tenant(&state.pool, company_id).await?;
    if let Some((hash, ticket_id)) =
        db::tickets::claim_idempotency_key(&mut tx, company_id, key).await?
    {
        if hash != request_hash {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "this key was used with a different request body",
            ));
        }
        let ticket = db::tickets::find_ticket(&mut tx, company_id, ticket_id).await?;
        let actions = db::tickets::list_ticket_actions(&mut tx, company_id, ticket_id).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        return Ok((Created { ticket, actions }, true));
    }
    db::plan(&mut tx, db::Plans::Keyed).await?;
    let created = create_tickets(
        &mut tx,
        &state.config,
        state.tickets.backlogs(),
        std::slice::from_ref(&request),
    )
    .await?
    .pop()
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no result for the ticket")))??;
    let ttl = chrono::Duration::from_std(state.config.idempotency_key_ttl)
        .unwrap_or(chrono::Duration::hours(24));
    db::tickets::insert_idempotency_key(
        &mut tx,
        company_id,
        key,
        request_hash,
        created.ticket.id,
        Utc::now() + ttl,
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok((created, false))
}

/// One ticket with its actions (status, attempts, last error, result).
#[utoipa::path(get, path = "/api/tickets/{id}", tag = "tickets", operation_id = "get_ticket",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Ticket id")),
    responses(
        (status = 200, description = "The ticket", body = TicketResponse),
        (status = 404, description = "No such ticket in this company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_ticket(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<TicketResponse>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let ticket = db::tickets::find_ticket(&mut tx, user.company_id, id).await?;
    let actions = db::tickets::list_ticket_actions(&mut tx, user.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(TicketResponse::new(ticket, Some(actions))))
}

/// Edits subject and description while PENDING; an ADMIN may set DERIVED
/// with a reason (pending actions are cancelled).
#[utoipa::path(put, path = "/api/tickets/{id}", tag = "tickets", operation_id = "update_ticket",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Ticket id")),
    request_body = UpdateTicketRequest,
    responses(
        (status = 200, description = "Updated", body = TicketResponse),
        (status = 403, description = "Only an ADMIN may derive a ticket", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such ticket in this company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The ticket is no longer PENDING", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn update_ticket(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateTicketRequest>,
) -> Result<Json<TicketResponse>, ApiError> {
    let subject = body.subject.as_deref().map(str::trim);
    if let Some(s) = subject
        && (s.is_empty() || s.chars().count() > 300)
    {
        return Err(ApiError::invalid("subject", "must be 1 to 300 characters"));
    }
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 20_000)
    {
        return Err(ApiError::invalid(
            "description",
            "must be at most 20000 characters",
        ));
    }
    let derive_reason = match body.status {
        None => None,
        Some(TicketStatus::Derived) => {
            let reason = body
                .status_reason
                .as_deref()
                .map(str::trim)
                .unwrap_or_default();
            if reason.is_empty() || reason.chars().count() > 2000 {
                return Err(ApiError::invalid(
                    "status_reason",
                    "a reason of 1 to 2000 characters is required",
                ));
            }
            Some(reason.to_owned())
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "status",
                format!("only DERIVED may be set by hand, not {other}"),
            ));
        }
    };
    if body.status.is_none() && body.status_reason.is_some() {
        return Err(ApiError::invalid(
            "status_reason",
            "only with status DERIVED",
        ));
    }
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let before = db::tickets::lock_ticket(&mut tx, user.company_id, id).await?;
    // After the lookup, so another company's ticket answers 404 to any role.
    if derive_reason.is_some() && !user.is_admin() {
        return Err(ApiError::Forbidden(
            "only an ADMIN may derive a ticket".into(),
        ));
    }
    if before.status != TicketStatus::Pending {
        return Err(ApiError::Conflict(format!(
            "the ticket is {} and can no longer change",
            before.status
        )));
    }
    let mut ticket = before.clone();
    if subject.is_some() || body.description.is_some() {
        ticket = db::tickets::update_ticket_text(
            &mut tx,
            user.company_id,
            id,
            subject,
            body.description.as_deref(),
        )
        .await?;
    }
    if let Some(reason) = &derive_reason {
        ticket = db::tickets::derive_ticket(&mut tx, user.company_id, id, reason)
            .await?
            .ok_or_else(|| ApiError::Conflict("the ticket is no longer PENDING".into()))?;
    }
    db::audit::insert_audit_event(
        &mut tx,
        NewAuditEvent {
            company_id: user.company_id,
            actor_user_id: Some(user.user_id),
            action: if derive_reason.is_some() { "ticket.derived" } else { "ticket.updated" },
            entity_type: "ticket",
            entity_id: Some(id),
            payload: json!({"subject_changed": subject.is_some(), "description_changed": body.description.is_some(), "status": ticket.status, "reason": derive_reason}),
        },
    )
    .await?;
    let actions = db::tickets::list_ticket_actions(&mut tx, user.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(TicketResponse::new(ticket, Some(actions))))
}

/// Deletes a ticket: an ADMIN any time, its creator while it is PENDING.
#[utoipa::path(delete, path = "/api/tickets/{id}", tag = "tickets", operation_id = "delete_ticket",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Ticket id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Neither an ADMIN nor the creator of a PENDING ticket", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such ticket in this company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn delete_ticket(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let ticket = db::tickets::lock_ticket(&mut tx, user.company_id, id).await?;
    let is_creator_of_pending =
        ticket.created_by_user_id == Some(user.user_id) && ticket.status == TicketStatus::Pending;
    if !user.is_admin() && !is_creator_of_pending {
        return Err(ApiError::Forbidden(
            "only an ADMIN, or the creator while the ticket is PENDING, may delete it".into(),
        ));
    }
    db::tickets::delete_ticket(&mut tx, user.company_id, id).await?;
    db::audit::insert_audit_event(
        &mut tx,
        NewAuditEvent {
            company_id: user.company_id,
            actor_user_id: Some(user.user_id),
            action: "ticket.deleted",
            entity_type: "ticket",
            entity_id: Some(id),
            payload: json!({"subject": ticket.subject, "status": ticket.status}),
        },
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams the ticket (with its actions) as server-sent events: one `ticket`
/// event now and one per change, until the ticket is terminal.
#[utoipa::path(get, path = "/api/tickets/{id}/events", tag = "tickets", operation_id = "stream_ticket_events",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Ticket id")),
    responses(
        (status = 200, description = "`text/event-stream` of `ticket` events, each a TicketResponse", body = TicketResponse, content_type = "text/event-stream"),
        (status = 404, description = "No such ticket in this company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn stream_ticket_events(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // 404 up front for a foreign or unknown ticket.
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    db::tickets::find_ticket(&mut tx, user.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let stream = futures::stream::unfold(
        (state, user, None::<String>, false),
        move |(state, user, last, done)| async move {
            if done {
                return None;
            }
            let mut interval = Duration::from_millis(0);
            loop {
                tokio::time::sleep(interval).await;
                interval = Duration::from_millis(500);
                let snapshot = async {
                    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
                    let version =
                        db::tickets::ticket_state_version(&mut tx, user.company_id, id).await?;
                    let Some(version) = version else {
                        return Ok::<_, db::DbError>(None);
                    };
                    if last.as_deref() == Some(version.as_str()) {
                        return Ok(Some((version, None)));
                    }
                    let ticket = db::tickets::find_ticket(&mut tx, user.company_id, id).await?;
                    let actions =
                        db::tickets::list_ticket_actions(&mut tx, user.company_id, id).await?;
                    tx.commit().await?;
                    Ok(Some((
                        version,
                        Some(TicketResponse::new(ticket, Some(actions))),
                    )))
                }
                .await;
                match snapshot {
                    // Deleted: end the stream.
                    Ok(None) => return None,
                    Ok(Some((_, None))) => continue,
                    Ok(Some((version, Some(ticket)))) => {
                        let terminal = ticket.status.is_terminal();
                        let event = Event::default()
                            .event("ticket")
                            .json_data(&ticket)
                            .unwrap_or_else(|_| Event::default().event("error"));
                        return Some((Ok(event), (state, user, Some(version), terminal)));
                    }
                    // The database is briefly unavailable: keep the stream and retry.
                    Err(_) => {
                        interval = Duration::from_secs(2);
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
        // Year 1 to 9999, to the microsecond: what a cursor keeps.
        (-62_135_596_800_000_000_i64..253_402_300_799_999_999).prop_map(|micros| {
            Utc.timestamp_micros(micros)
                .single()
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_cursor_this_api_issues_decodes_to_what_it_encoded(
            at in any_instant(),
            id in any::<u128>().prop_map(Uuid::from_u128),
        ) {
            let cursor = encode_cursor(at, id);
            prop_assert_eq!(decode_cursor(&cursor).ok(), Some((at, id)));
        }

        #[test]
        fn decoding_any_string_never_panics_and_refuses_what_it_cannot_read(text in ".{0,200}") {
            if let Ok((at, id)) = decode_cursor(&text) {
                // Only base64 of `<RFC 3339>|<uuid>` decodes.
                let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(&text).unwrap()).unwrap();
                let (stamp, uuid) = raw.split_once('|').unwrap();
                prop_assert_eq!(DateTime::parse_from_rfc3339(stamp).unwrap(), at);
                prop_assert_eq!(uuid.parse::<Uuid>().unwrap(), id);
            }
        }

        #[test]
        fn decoding_base64_of_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode_cursor(&URL_SAFE_NO_PAD.encode(&bytes));
        }

        #[test]
        fn decoding_near_miss_cursors_never_panics(
            stamp in "[0-9T:.+Z-]{0,40}",
            sep in "[|,]",
            id in "[0-9a-fA-F-]{0,40}",
        ) {
            let cursor = URL_SAFE_NO_PAD.encode(format!("{stamp}{sep}{id}"));
            match decode_cursor(&cursor) {
                Ok((_, parsed)) => {
                    prop_assert_eq!(sep, "|");
                    prop_assert_eq!(Some(parsed), id.parse::<Uuid>().ok());
                }
                Err(e) => prop_assert!(e.to_string().starts_with("invalid cursor"), "{}", e),
            }
        }
    }
}
