//! The operators' queue board: apalis-board's UI and API over the action
//! queue, behind operator authentication (HTTP Basic against `operators`).
//!
//! The board's UI is a prebuilt single-page app built for the site root: it
//! loads its assets from `/`, calls `/api/v1/...` and routes on `/overview`,
//! `/queues/..`, `/tasks/..`, `/workers`, `/logs`, `/settings`. `/board`
//! redirects to its queues page, and those paths (unused by TxDx otherwise) are
//! routed to it. apalis-board has no authentication, no tenant scoping
//! and a `PUT .../tasks` route that pushes arbitrary jobs: everything here
//! requires an operator, and that route is refused.

use std::{sync::Arc, time::Duration};

use apalis_board::axum::{
    framework::{ApiBuilder, RegisterRoute},
    sse::TracingBroadcaster,
    ui::ServeUI,
};
use apalis_postgres::PostgresStorage;
use axum::{
    Extension, Router,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use sha2::{Digest, Sha256};
use shared::{
    auth::password,
    jobs::{ACTION_QUEUE, ActionJob},
};

use crate::{error::ApiError, state::AppState, ttl::TtlMap};

/// Successful operator logins are remembered this long, so the board's many
/// asset and polling requests do not each pay for argon2id.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(60);

/// Remembers recently verified operator credentials (by SHA-256, never in clear).
#[derive(Clone)]
pub struct OperatorAuthCache(Arc<TtlMap<[u8; 32], ()>>);

impl Default for OperatorAuthCache {
    fn default() -> Self {
        Self(Arc::new(TtlMap::new(AUTH_CACHE_TTL, 1024)))
    }
}

impl OperatorAuthCache {
    fn key(header: &str) -> [u8; 32] {
        Sha256::digest(header.as_bytes()).into()
    }

    fn is_fresh(&self, header: &str) -> bool {
        self.0.get(&Self::key(header)).is_some()
    }

    fn remember(&self, header: &str) {
        self.0.insert(Self::key(header), ());
    }
}

/// The board's routes: `/board` (UI), its assets at the root, `/api/v1` (board API).
pub fn routes(state: &AppState) -> Router<AppState> {
    let storage = PostgresStorage::<ActionJob>::new(&state.pool)
        .with_config(apalis_postgres::Config::default().queue(ACTION_QUEUE));
    let api: Router = ApiBuilder::new(Router::new())
        .register(ACTION_QUEUE, storage)
        .build()
        .layer(Extension(TracingBroadcaster::create()));
    let ui = || axum::routing::get_service(ServeUI::new());
    let to_overview = || axum::routing::get(|| async { axum::response::Redirect::to("/queues") });
    let mut router = Router::new()
        .nest_service("/api/v1", api)
        .route("/board", to_overview())
        .route("/board/", to_overview());
    for page in BOARD_PAGES {
        router = router
            .route_service(&format!("/{page}"), ui())
            .route_service(&format!("/{page}/{{*rest}}"), ui());
    }
    for asset in board_assets() {
        router = router.route_service(&format!("/{asset}"), ui());
    }
    router.layer(middleware::from_fn_with_state(
        state.clone(),
        require_operator,
    ))
}

/// The client-side pages of the board's single-page app.
const BOARD_PAGES: &[&str] = &[
    "overview",
    "queues",
    "tasks",
    "workers",
    "logs",
    "settings",
    "stepped",
    "complex",
    "schedules",
];

/// File names of the board's prebuilt assets (served at the site root, where its page looks for them).
fn board_assets() -> Vec<String> {
    let index = ServeUI::get_file("index.html")
        .map(|f| String::from_utf8_lossy(f.contents()).into_owned())
        .unwrap_or_default();
    let mut assets: Vec<String> = index
        .split(['"', '\''])
        .filter_map(|piece| piece.strip_prefix('/'))
        .filter(|p| {
            p.contains('.')
                && !p.contains('/')
                && !p.contains(' ')
                && ServeUI::get_file(p).is_some()
        })
        .map(str::to_owned)
        .collect();
    assets.sort();
    assets.dedup();
    assets
}

async fn require_operator(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::PUT {
        // The board's "push a task" route would let an operator enqueue
        // arbitrary jobs for any company: not offered.
        return ApiError::MethodNotAllowed.into_response();
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(header) = header else {
        return challenge("operator credentials required");
    };
    if state.operator_auth.is_fresh(&header) {
        return next.run(request).await;
    }
    let Some((username, password)) = header
        .strip_prefix("Basic ")
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(u, p)| (u.to_lowercase(), p.to_owned()))
        })
    else {
        // A company user's bearer token, or anything else: not an operator.
        return challenge("the board is for platform operators (HTTP Basic), not company users");
    };
    // Failed operator logins are throttled like company logins.
    let throttle_key = format!("operator:{username}");
    let client_ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    match shared::db::login_failures::login_throttle(&state.pool, &throttle_key, &client_ip).await {
        Ok(Some(retry_after_secs)) => {
            return ApiError::TooManyRequests {
                message: "too many failed operator logins; try again later".into(),
                retry_after_secs,
            }
            .into_response();
        }
        Ok(None) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    let hash = match shared::db::operators::find_operator_hash(&state.pool, &username).await {
        Ok(hash) => hash,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let candidate = hash.unwrap_or_else(|| password::dummy_hash().to_owned());
    let ok = match state
        .hashing
        .run(move || password::verify_password(&password, &candidate))
        .await
    {
        Ok(ok) => ok,
        Err(e) => return e.into_response(),
    };
    if !ok {
        tracing::warn!("failed operator login for {username}");
        if let Err(e) = shared::db::login_failures::record_login_failure(
            &state.pool,
            &throttle_key,
            &client_ip,
            None,
        )
        .await
        {
            return ApiError::from(e).into_response();
        }
        return challenge("invalid operator credentials");
    }
    state.operator_auth.remember(&header);
    next.run(request).await
}

fn challenge(detail: &str) -> Response {
    let mut response = ApiError::Unauthorized(detail.to_owned()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"TxDx operators\", charset=\"UTF-8\""),
    );
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}
