//! The router: every route is registered through utoipa-axum's
//! `OpenApiRouter`, so a route cannot exist without its OpenAPI entry.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub mod audit_logs;
pub mod auth;
pub mod companies;
pub mod health;
pub mod integrations;
pub mod jobs;
pub mod tickets;
pub mod users;

/// All documented routes (health at the root, the rest under `/api`).
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::routes())
        .merge(auth::routes())
        .merge(companies::routes())
        .merge(users::routes())
        .merge(integrations::routes())
        .merge(tickets::routes())
        .merge(audit_logs::routes())
        .merge(jobs::routes())
}

/// Appends an audit row for a change the caller made, in the caller's transaction.
///
/// # Errors
/// When the insert fails.
pub(crate) async fn audit(
    conn: &mut shared::db::PgConnection,
    actor: crate::auth::AuthUser,
    action: &'static str,
    entity_type: &'static str,
    entity_id: uuid::Uuid,
    payload: serde_json::Value,
) -> Result<(), crate::error::ApiError> {
    shared::db::audit::insert_audit_event(
        conn,
        shared::db::audit::NewAuditEvent {
            company_id: actor.company_id,
            actor_user_id: Some(actor.user_id),
            action,
            entity_type,
            entity_id: Some(entity_id),
            payload,
        },
    )
    .await?;
    Ok(())
}
