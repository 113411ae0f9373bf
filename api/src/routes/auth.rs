//! `/api/auth`: register a company, log in, rotate refresh tokens, log out, who am I.

use axum::{
    extract::{ConnectInfo, State},
    http::StatusCode,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::{
    auth::{
        password,
        token::{TokenType, token_hash},
    },
    db::{self, audit::NewAuditEvent},
    domain::{Role, User},
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::AuthUser,
    error::ApiError,
    extract::Json,
    routes::{
        companies::CompanyResponse,
        users::{UserResponse, validate_email, validate_username},
    },
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_company))
        .routes(routes!(login))
        .routes(routes!(refresh_token))
        .routes(routes!(logout))
        .routes(routes!(get_me))
}

/// Registration of a new company and its first ADMIN.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Unique regardless of case, 1 to 200 characters.
    #[schema(example = "Acme Security")]
    pub company_name: String,
    /// Globally unique, 3 to 64 characters of a-z, 0-9, `.`, `_`, `@`, `-` (stored lower case).
    #[schema(example = "alice")]
    pub username: String,
    /// Contact address.
    #[schema(example = "alice@acme.example")]
    pub email: String,
    /// 12 to 128 characters, not one character repeated, not the username.
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

/// The new company, its ADMIN, and a session for that ADMIN.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterResponse {
    /// The company.
    pub company: CompanyResponse,
    /// Its first user (an ADMIN).
    pub user: UserResponse,
    /// Tokens for that user.
    pub tokens: TokenResponse,
}

/// Credentials for a login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username (case-insensitive).
    #[schema(example = "alice")]
    pub username: String,
    /// Password.
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

/// An access and refresh token pair.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Exchange at `/api/auth/refresh`; single use (rotated).
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// A refresh token presented for rotation or logout.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh.
    pub refresh_token: String,
}

fn normalise_username(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Issues an access token and a refresh token in `family_id`, storing the latter's hash.
async fn issue_session(
    state: &AppState,
    conn: &mut db::PgConnection,
    user: &User,
    family_id: Uuid,
) -> Result<(TokenResponse, Uuid), ApiError> {
    let access = state
        .tokens
        .issue(
            TokenType::Access,
            user.id,
            user.company_id,
            user.role,
            user.token_version,
        )
        .map_err(|e| ApiError::Internal(e.into()))?;
    let refresh = state
        .tokens
        .issue(
            TokenType::Refresh,
            user.id,
            user.company_id,
            user.role,
            user.token_version,
        )
        .map_err(|e| ApiError::Internal(e.into()))?;
    let expires_at =
        chrono::DateTime::from_timestamp(refresh.claims.exp, 0).unwrap_or_else(Utc::now);
    let id = db::refresh_tokens::insert_refresh_token(
        conn,
        user.company_id,
        user.id,
        family_id,
        &token_hash(&refresh.token),
        expires_at,
    )
    .await?;
    Ok((
        TokenResponse {
            access_token: access.token,
            refresh_token: refresh.token,
            token_type: "Bearer",
            expires_in: state.tokens.access_ttl().as_secs(),
            refresh_expires_in: state.tokens.refresh_ttl().as_secs(),
        },
        id,
    ))
}

/// Registers a company and its first ADMIN, in one transaction.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", operation_id = "register_company",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Company and ADMIN created; tokens for the ADMIN", body = RegisterResponse),
        (status = 409, description = "Company name or username taken", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn register_company(
    State(state): State<AppState>,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let company_name = body.company_name.trim().to_owned();
    if company_name.is_empty() || company_name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "company_name",
            "must be 1 to 200 characters",
        ));
    }
    let username = normalise_username(&body.username);
    validate_username(&username)?;
    validate_email(&body.email)?;
    password::check_policy(&body.password, &username)
        .map_err(|e| ApiError::invalid("password", e.to_string()))?;
    let pw = body.password.clone();
    let hash = state
        .hashing
        .run(move || password::hash_password(&pw))
        .await?
        .map_err(|e| ApiError::Internal(e.into()))?;

    let company_id = Uuid::new_v4();
    let mut tx = db::begin_tenant(&state.pool, company_id).await?;
    let company = db::companies::insert_company(&mut tx, company_id, &company_name).await?;
    let user = db::users::insert_user(
        &mut tx,
        db::users::NewUser {
            company_id,
            username: &username,
            email: body.email.trim(),
            password_hash: &hash,
            role: Role::Admin,
        },
    )
    .await?;
    db::audit::insert_audit_event(
        &mut tx,
        NewAuditEvent {
            company_id,
            actor_user_id: Some(user.id),
            action: "company.registered",
            entity_type: "company",
            entity_id: Some(company_id),
            payload: json!({"name": company.name, "admin_user_id": user.id, "admin_username": user.username}),
        },
    )
    .await?;
    let (tokens, _) = issue_session(&state, &mut tx, &user, Uuid::new_v4()).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    tracing::info!(company.id = %company.id, user.id = %user.id, "company {} registered", company.id);
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            company: company.into(),
            user: user.into(),
            tokens,
        }),
    ))
}

/// Logs in with username and password.
///
/// An unknown username and a wrong password get the same answer in about the
/// same time. Repeated failures per username or per client address are
/// throttled with 429 and `Retry-After`.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", operation_id = "login",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Invalid username or password", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing or mistyped field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<std::net::SocketAddr>,
    Json(body): Json<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let username = normalise_username(&body.username);
    let client_ip = client.ip().to_string();
    if username.is_empty() || username.len() > 64 || body.password.len() > password::MAX_LENGTH * 4
    {
        return Err(ApiError::Unauthorized(
            "invalid username or password".into(),
        ));
    }
    // Held to the end: a burst of logins queues here, not for the pool.
    let _turn = state.hashing.password_turn().await?;
    if let Some(retry_after_secs) =
        db::login_failures::login_throttle(&state.pool, &username, &client_ip).await?
    {
        return Err(ApiError::TooManyRequests {
            message: "too many failed logins; try again later".into(),
            retry_after_secs,
        });
    }
    let mut tx = db::begin_login_lookup(&state.pool, &username).await?;
    let found = db::users::find_login(&mut tx, &username).await?;
    tx.commit().await.map_err(db::DbError::from)?;

    let candidate_hash = found
        .as_ref()
        .map(|(_, hash)| hash.clone())
        .unwrap_or_else(|| password::dummy_hash().to_owned());
    // A hash made with older parameters is replaced once its password is
    // known to match: the password is kept until then only in that case.
    let rehash = password::needs_rehash(&candidate_hash).then(|| body.password.clone());
    let pw = body.password;
    let matches = state
        .hashing
        .run(move || password::verify_password(&pw, &candidate_hash))
        .await?;

    let (user, stored_hash) = match (found, matches) {
        (Some(found), true) => found,
        (found, _) => {
            // One commit either way, so a wrong password and an unknown
            // username take the same time.
            let audit = found.map(|(user, _)| NewAuditEvent {
                company_id: user.company_id,
                actor_user_id: Some(user.id),
                action: "auth.login_failed",
                entity_type: "user",
                entity_id: Some(user.id),
                payload: json!({"client_ip": client_ip}),
            });
            db::login_failures::record_login_failure(&state.pool, &username, &client_ip, audit)
                .await?;
            return Err(ApiError::Unauthorized(
                "invalid username or password".into(),
            ));
        }
    };
    db::login_failures::clear_login_failures(&state.pool, &username).await?;
    let fresh_hash = match rehash {
        Some(pw) => fresh_hash(&state, pw).await,
        None => None,
    };
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let (tokens, _) = issue_session(&state, &mut tx, &user, Uuid::new_v4()).await?;
    let rehashed = match &fresh_hash {
        Some(new) => {
            db::users::replace_password_hash(&mut tx, user.company_id, user.id, &stored_hash, new)
                .await?
        }
        None => false,
    };
    let payload = if rehashed {
        json!({"client_ip": client_ip, "password_rehashed": true})
    } else {
        json!({"client_ip": client_ip})
    };
    db::audit::insert_audit_event(
        &mut tx,
        NewAuditEvent {
            company_id: user.company_id,
            actor_user_id: Some(user.id),
            action: "auth.login",
            entity_type: "user",
            entity_id: Some(user.id),
            payload,
        },
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(tokens))
}

/// A hash of `pw` with the current parameters, for a login whose stored hash
/// is due for one ([`password::needs_rehash`]). A failure is logged and
/// leaves the old hash: the login itself has succeeded.
async fn fresh_hash(state: &AppState, pw: String) -> Option<String> {
    state
        .hashing
        .run(move || password::hash_password(&pw))
        .await
        .and_then(|made| made.map_err(|e| ApiError::Internal(e.into())))
        .inspect_err(
            |e| tracing::warn!(error = %e, "a password hash with older parameters was kept"),
        )
        .ok()
}

/// Exchanges a refresh token for a new pair; the presented token is spent.
///
/// Presenting an already-rotated (or revoked) refresh token revokes every
/// token of its login family: a stolen token replayed after its owner used
/// it ends both sessions.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", operation_id = "refresh_token",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 401, description = "Invalid, expired, revoked or reused refresh token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing field", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn refresh_token(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let claims = state
        .tokens
        .verify(&body.refresh_token, TokenType::Refresh)
        .map_err(|_| ApiError::Unauthorized("invalid or expired refresh token".into()))?;
    let mut tx = db::begin_tenant(&state.pool, claims.company_id).await?;
    let stored = db::refresh_tokens::find_refresh_token(&mut tx, &token_hash(&body.refresh_token))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown refresh token".into()))?;
    if stored.revoked_at.is_some() {
        let revoked = db::refresh_tokens::revoke_family(&mut tx, stored.family_id).await?;
        db::audit::insert_audit_event(
            &mut tx,
            NewAuditEvent {
                company_id: claims.company_id,
                actor_user_id: Some(stored.user_id),
                action: "auth.refresh_reuse_detected",
                entity_type: "user",
                entity_id: Some(stored.user_id),
                payload: json!({"family_id": stored.family_id, "revoked_tokens": revoked}),
            },
        )
        .await?;
        tx.commit().await.map_err(db::DbError::from)?;
        tracing::warn!(user.id = %stored.user_id, "reuse of a rotated refresh token by user {}: family revoked", stored.user_id);
        return Err(ApiError::Unauthorized(
            "refresh token already used; every session of this login is revoked".into(),
        ));
    }
    if stored.expires_at < Utc::now() {
        return Err(ApiError::Unauthorized("refresh token expired".into()));
    }
    let user = match db::users::find_user(&mut tx, claims.company_id, stored.user_id).await {
        Ok(user) => user,
        Err(db::DbError::NotFound(_)) => {
            return Err(ApiError::Unauthorized(
                "the token's user no longer exists".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if user.token_version != claims.ver {
        let revoked = db::refresh_tokens::revoke_family(&mut tx, stored.family_id).await?;
        db::audit::insert_audit_event(
            &mut tx,
            NewAuditEvent {
                company_id: claims.company_id,
                actor_user_id: Some(user.id),
                action: "auth.refresh_stale",
                entity_type: "user",
                entity_id: Some(user.id),
                payload: json!({"family_id": stored.family_id, "revoked_tokens": revoked}),
            },
        )
        .await?;
        tx.commit().await.map_err(db::DbError::from)?;
        return Err(ApiError::Unauthorized(
            "the token predates a password or role change; log in again".into(),
        ));
    }
    let (tokens, new_id) = issue_session(&state, &mut tx, &user, stored.family_id).await?;
    db::refresh_tokens::mark_rotated(&mut tx, stored.id, new_id).await?;
    db::audit::insert_audit_event(
        &mut tx,
        NewAuditEvent {
            company_id: claims.company_id,
            actor_user_id: Some(user.id),
            action: "auth.refreshed",
            entity_type: "user",
            entity_id: Some(user.id),
            payload: json!({"family_id": stored.family_id}),
        },
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(tokens))
}

/// Revokes the refresh token's whole login session.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", operation_id = "logout",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Invalid refresh token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing field", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn logout(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let claims = state
        .tokens
        .verify(&body.refresh_token, TokenType::Refresh)
        .map_err(|_| ApiError::Unauthorized("invalid or expired refresh token".into()))?;
    let mut tx = db::begin_tenant(&state.pool, claims.company_id).await?;
    let stored = db::refresh_tokens::find_refresh_token(&mut tx, &token_hash(&body.refresh_token))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown refresh token".into()))?;
    let revoked = db::refresh_tokens::revoke_family(&mut tx, stored.family_id).await?;
    db::audit::insert_audit_event(
        &mut tx,
        NewAuditEvent {
            company_id: claims.company_id,
            actor_user_id: Some(stored.user_id),
            action: "auth.logout",
            entity_type: "user",
            entity_id: Some(stored.user_id),
            payload: json!({"revoked_tokens": revoked}),
        },
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own user record.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth", operation_id = "get_me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = UserResponse),
    ))]
async fn get_me(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<UserResponse>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let me = db::users::find_user(&mut tx, user.company_id, user.user_id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(me.into()))
}
