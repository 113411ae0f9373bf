//! Authentication extractors: [`AuthUser`](crate::auth::AuthUser) (any company user with a valid
//! access token) and [`AdminUser`](crate::auth::AdminUser) (an ADMIN).
//!
//! A token is accepted only if it verifies (see `shared::auth::token`) and
//! its user still exists with the same role and token version; a deleted
//! user, a changed role or a changed password makes older tokens useless.

use axum::{extract::FromRequestParts, http::request::Parts};
use shared::{
    auth::token::{TokenError, TokenType},
    db,
    domain::Role,
};
use uuid::Uuid;

use crate::{error::ApiError, state::AppState};

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
        // On every request: one statement, its plan kept.
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
        if user.token_version != claims.ver || user.role != claims.role {
            return Err(ApiError::Unauthorized(
                "the token predates a password or role change; log in again".into(),
            ));
        }
        let auth = AuthUser {
            user_id: user.id,
            company_id: user.company_id,
            role: user.role,
        };
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
