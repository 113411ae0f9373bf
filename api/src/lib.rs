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
/// The operators' queue board (apalis-board) behind operator authentication.
pub mod board;
/// Problem+json errors: the only place that maps failures to statuses.
pub mod error;
/// Extractors with problem+json rejections.
pub mod extract;
/// Password hashing, bounded and at the lowest scheduling class.
pub mod hashing;
/// The OpenAPI document.
pub mod openapi;
/// Page parameters of the list endpoints.
pub mod pagination;
/// Handlers, one module per resource.
pub mod routes;
/// Serving the router over TCP, with header deadlines and a graceful stop.
pub mod serve;
/// Handler state.
pub mod state;
/// Ticket creation and its group commit.
pub mod ticket_writer;
/// Maps whose entries expire: the api's short-lived caches.
pub mod ttl;

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
    let board = board::routes(&state);
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_in_flight,
        ))
        .merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", api))
        .merge(board)
        .nest_service("/app", frontend.clone())
        .fallback_service(frontend)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .route_layer(axum::middleware::from_fn(record_http_metrics))
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

/// Works on at most `API_MAX_IN_FLIGHT` `/api/` requests at once and refuses
/// the next at once (503 problem, `Retry-After: 1`), so an overload costs
/// neither unbounded memory nor unbounded latency: without it, requests
/// waited for a database connection up to 10 s and the api grew to 150 MiB
/// (BENCHMARKS.md, full run 2). `/health` and `/ready` are not limited.
async fn limit_in_flight(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("txdx_api_requests_shed_total").increment(1);
        return axum::response::IntoResponse::into_response(ApiError::Overloaded(format!(
            "the api is working on its limit of {} requests; retry shortly",
            state.config.api_max_in_flight
        )));
    };
    next.run(request).await
}

/// Records `txdx_api_http_requests_total` and
/// `txdx_api_http_request_duration_seconds` by method, matched route and status.
async fn record_http_metrics(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("txdx_api_http_requests_total", &labels).increment(1);
    metrics::histogram!("txdx_api_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
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
