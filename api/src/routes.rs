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
