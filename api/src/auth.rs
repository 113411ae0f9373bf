//! Authentication extractors: [`AuthUser`](crate::auth::AuthUser) (any company user with a valid
//! access token) and [`AdminUser`](crate::auth::AdminUser) (an ADMIN).
//!
//! A token is accepted only if it verifies (see `shared::auth::token`) and
//! its user still exists with the same role and token version; a deleted
//! user, a changed role or a changed password makes older tokens useless.
//!
//! What a process read of a user is reused for `TOKEN_CHECK_CACHE_MS`
//! ([`TokenChecks`](crate::auth::TokenChecks)): a client sending many
//! requests a second with one token has its user read once a second, not
//! once a request. A change made through this process is seen by every
//! request checked after its commit (the handlers that delete a user or
//! bump its token version forget it then, and a read that began earlier is
//! not remembered after that); one made through another api process, within
//! that time.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use shared::{
    auth::token::{Claims, TokenError, TokenType},
    db,
    domain::Role,
};
use uuid::Uuid;

use crate::{error::ApiError, state::AppState, ttl::TtlMap};

/// Most users whose token checks one api process remembers at once; beyond
/// them, a token's user is read on each request.
pub const TOKEN_CHECK_USERS: usize = 65_536;

/// Users as this process last read them for a token check, by user id:
/// the caller they make and their token version; `None` for a user
/// forgotten since.
#[derive(Debug, Clone)]
pub struct TokenChecks(Arc<TtlMap<Uuid, Option<(AuthUser, i32)>>>);

impl TokenChecks {
    /// Remembers what is read for `ttl` (zero: nothing is remembered).
    pub fn new(ttl: Duration) -> Self {
        Self(Arc::new(TtlMap::new(ttl, TOKEN_CHECK_USERS)))
    }

    /// The caller `claims` make, if its user was read within the time to
    /// live, not forgotten since, and matched them (company, role and token
    /// version).
    fn matching(&self, claims: &Claims) -> Option<AuthUser> {
        self.0
            .get(&claims.sub)
            .flatten()
            .filter(|(user, version)| {
                user.company_id == claims.company_id
                    && user.role == claims.role
                    && *version == claims.ver
            })
            .map(|(user, _)| user)
    }

    /// Remembers `user` with `version` as read at `read_at`, unless it was
    /// forgotten after that moment.
    fn remember(&self, user: AuthUser, version: i32, read_at: Instant) {
        self.0
            .insert_at(user.user_id, Some((user, version)), read_at);
    }

    /// Forgets `user`: its next request reads it again, and a read that
    /// began before this call is not remembered. Call after the commit of a
    /// change to its role or token version, or its deletion.
    pub fn forget(&self, user: Uuid) {
        self.0.insert(user, None);
    }
}

/// The caller: a company user with a valid access token.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    /// The user.
    pub user_id: Uuid,
    /// The tenant every query of this request is scoped to.
    pub company_id: Uuid,
    /// The user's current role.
    pub role: Role,
}

impl AuthUser {
    /// Whether the caller is an ADMIN.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The caller, if an ADMIN.
    ///
    /// Handlers of a resource by id call this after looking the resource up
    /// in the caller's company, so another company's id answers 404 whatever
    /// the caller's role, as for every other verb.
    ///
    /// # Errors
    /// 403 for a USER.
    pub fn require_admin(self) -> Result<Self, ApiError> {
        if self.is_admin() {
            Ok(self)
        } else {
            Err(ApiError::Forbidden(
                "this operation requires the ADMIN role".into(),
            ))
        }
    }
}

/// The caller, who must be an ADMIN (403 otherwise). For routes without a
/// resource id; routes with one use [`AuthUser::require_admin`] after the lookup.
#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

/// The bearer token of a request.
///
/// # Errors
/// 401 when the header is missing or not a bearer token.
pub fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing `Authorization: Bearer <token>` header".into())
        })?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = header
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "expected `Authorization: Bearer <token>`".into(),
        ));
    }
    Ok(token.trim())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(*user);
        }
        let token = bearer_token(parts)?;
        let claims = state
            .tokens
            .verify(token, TokenType::Access)
            .map_err(|e| match e {
                TokenError::WrongType => ApiError::Unauthorized(
                    "a refresh token cannot be used as an access token".into(),
                ),
                _ => ApiError::Unauthorized("invalid or expired token".into()),
            })?;
        if let Some(auth) = state.token_checks.matching(&claims) {
            parts.extensions.insert(auth);
            return Ok(auth);
        }
        // Otherwise one statement, its plan kept. What it finds is
        // remembered whether or not it matches the token: it is the user
        // as it is, and the next token may match it.
        let read_at = Instant::now();
        let user =
            match db::users::find_token_user(&state.pool, claims.company_id, claims.sub).await {
                Ok(user) => user,
                Err(db::DbError::NotFound(_)) => {
                    return Err(ApiError::Unauthorized(
                        "the token's user no longer exists".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
        let auth = AuthUser {
            user_id: user.id,
            company_id: user.company_id,
            role: user.role,
        };
        state
            .token_checks
            .remember(auth, user.token_version, read_at);
        if user.token_version != claims.ver || user.role != claims.role {
            return Err(ApiError::Unauthorized(
                "the token predates a password or role change; log in again".into(),
            ));
        }
        parts.extensions.insert(auth);
        Ok(auth)
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        Ok(AdminUser(user.require_admin()?))
    }
}
