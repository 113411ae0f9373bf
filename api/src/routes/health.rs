//! Liveness, readiness and Prometheus metrics.

use axum::{
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, extract::Json, state::AppState};

/// Health and readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` when healthy.
    #[schema(example = "ok")]
    pub status: &'static str,
}

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_health))
        .routes(routes!(get_ready))
        .routes(routes!(get_metrics))
}

/// The process is alive.
#[utoipa::path(get, path = "/health", tag = "health", operation_id = "get_health",
    responses((status = 200, description = "Alive", body = HealthResponse)))]
async fn get_health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok" })
}

/// The database answers and every migration is applied.
#[utoipa::path(get, path = "/ready", tag = "health", operation_id = "get_ready",
    responses(
        (status = 200, description = "Ready to serve", body = HealthResponse),
        (status = 503, description = "Database unreachable or schema not migrated", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_ready(State(state): State<AppState>) -> Result<Json<HealthResponse>, ApiError> {
    match shared::db::migrations_applied(&state.pool).await {
        Ok(true) => Ok(Json(HealthResponse { status: "ok" })),
        Ok(false) => Err(ApiError::Unavailable(
            "database migrations are not applied".into(),
        )),
        Err(_) => Err(ApiError::Unavailable("the database is unreachable".into())),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "get_metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn get_metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
