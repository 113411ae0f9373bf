//! TxDx REST API.
//!
//! [`build_app`] wires the router used by `main` and by the tests alike.

use std::time::Duration;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderName, HeaderValue, Method, header},
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    services::ServeDir,
    trace::TraceLayer,
};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

/// Authentication extractors.
pub mod auth;
/// Problem+json errors: the only place that maps failures to statuses.
pub mod error;
/// Extractors with problem+json rejections.
pub mod extract;
/// The OpenAPI document.
pub mod openapi;
/// Page parameters of the list endpoints.
pub mod pagination;
/// Handlers, one module per resource.
pub mod routes;
/// Handler state.
pub mod state;

use error::ApiError;
use state::AppState;

/// Request bodies above this size are refused with 413 (a problem document:
/// the limit is enforced by the body extractors, whose rejection maps to
/// [`ApiError::PayloadTooLarge`], not by a middleware answering in plain text).
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The documented router (no state yet) and its OpenAPI document.
pub fn router_with_doc() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::api_routes())
        .split_for_parts();
    openapi::document_common_responses(&mut api);
    (router, api)
}

/// The whole application: documented routes, Swagger UI at `/api/docs`, the
/// static frontend at `/`, problem+json fallbacks, and the middleware stack.
pub fn build_app(state: AppState) -> Router {
    let (router, api) = router_with_doc();
    // A path that is neither a route nor a file, with any method, answers
    // the same 404 problem document (ServeDir alone would answer an empty 404,
    // or a 405 for a method other than GET and HEAD).
    let frontend = ServeDir::new(&state.config.frontend_dir)
        .append_index_html_on_directories(true)
        .call_fallback_on_method_not_allowed(true)
        .fallback(axum::routing::any(not_found));
    let cors = cors_layer(&state.config.cors_origins);
    router
        .merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", api))
        .nest_service("/app", frontend.clone())
        .fallback_service(frontend)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let request_id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request.id = %request_id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no route matches this path".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(Duration::from_secs(600))
}
