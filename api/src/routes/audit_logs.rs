//! `/api/audit-logs`: the company's audit trail (ADMIN).

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{
    db::{self, audit::AuditFilter},
    domain::AuditEvent,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::AdminUser,
    error::ApiError,
    extract::{Json, Query},
    routes::tickets::{decode_cursor, encode_cursor},
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_logs))
}

/// One audit row.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogResponse {
    /// Id.
    pub id: Uuid,
    /// Who acted; absent for the system (the worker).
    pub actor_user_id: Option<Uuid>,
    /// Dotted verb, e.g. `ticket.created`, `action.failed`, `auth.login_failed`.
    pub action: String,
    /// `ticket`, `ticket_action`, `user`, `integration`, `company`.
    pub entity_type: String,
    /// The entity.
    pub entity_id: Option<Uuid>,
    /// Details (never a secret).
    #[schema(value_type = Object)]
    pub payload: Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<AuditEvent> for AuditLogResponse {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id,
            actor_user_id: e.actor_user_id,
            action: e.action,
            entity_type: e.entity_type,
            entity_id: e.entity_id,
            payload: e.payload,
            created_at: e.created_at,
        }
    }
}

/// A page of audit rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogPage {
    /// Newest first.
    pub items: Vec<AuditLogResponse>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// The kinds of entity audit rows are about: the allowlist of the
/// `entity_type` filter (anything else is a 400, never a query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditEntityType {
    /// A company.
    Company,
    /// A user.
    User,
    /// An integration.
    Integration,
    /// A ticket.
    Ticket,
    /// One action of a ticket.
    TicketAction,
}

impl AuditEntityType {
    /// The value stored in `audit_logs.entity_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Company => "company",
            Self::User => "user",
            Self::Integration => "integration",
            Self::Ticket => "ticket",
            Self::TicketAction => "ticket_action",
        }
    }
}

/// Filters of the audit list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this entity type.
    pub entity_type: Option<AuditEntityType>,
    /// Only this entity.
    pub entity_id: Option<Uuid>,
    /// Only this actor.
    pub actor_user_id: Option<Uuid>,
    /// At or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "crate::pagination::limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The company's audit trail, newest first (ADMIN).
#[utoipa::path(get, path = "/api/audit-logs", tag = "audit", operation_id = "list_audit_logs",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit rows", body = AuditLogPage),
        (status = 400, description = "Bad filter or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list_audit_logs(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditLogPage>, ApiError> {
    let limit = q.limit.unwrap_or(crate::pagination::DEFAULT_LIMIT);
    let filter = AuditFilter {
        entity_type: q.entity_type.map(|t| t.as_str().to_owned()),
        entity_id: q.entity_id,
        actor_user_id: q.actor_user_id,
        since: q.since,
        until: q.until,
        before: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: i64::from(limit) + 1,
    };
    let mut tx = db::begin_tenant(&state.pool, admin.company_id).await?;
    let mut rows = db::audit::list_audit_events(&mut tx, admin.company_id, &filter).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|e| encode_cursor(e.created_at, e.id))
    } else {
        None
    };
    Ok(Json(AuditLogPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
