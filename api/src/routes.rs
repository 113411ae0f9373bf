//! The router: every route is registered through utoipa-axum's
//! `OpenApiRouter`, so a route cannot exist without its OpenAPI entry.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub mod health;

/// All documented routes (health at the root, the rest under `/api`).
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(health::routes())
}
