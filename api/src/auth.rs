//! Authentication extractors: [`AuthUser`](crate::auth::AuthUser) (any company user with a valid
//! access token) and [`AdminUser`](crate::auth::AdminUser) (an ADMIN).
//!
//! A token is accepted only if it verifies (see `shared::auth::token`) and
//! its user still exists with the same role and token version; a deleted
//! user, a changed role or a changed password makes older tokens useless.
//!
//! What a process read of a user is reused for up to `TOKEN_CHECK_CACHE_MS`
//! ([`TokenChecks`](crate::auth::TokenChecks)): a client sending many
//! requests with one token has its user read once, not once a request.
//! PostgreSQL announces every change that ends a user's tokens (its
//! deletion, or a new role or token version, however it was made) on the
//! channel `shared::db::users::USER_CHANGES` at its commit, and each api
//! process forgets that user when the announcement arrives. Only while a
//! process listens does it reuse anything: before its listener is
//! connected, and from a lost connection until the next one, every request
//! reads its user, and what was read before is forgotten. The handlers that
//! delete a user or bump its token version also forget it themselves after
//! their commit, so their own process never waits for the announcement (a
//! read that began earlier is not remembered after that).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use shared::{
    PgPool,
    auth::token::{Claims, TokenError, TokenType},
    db::{
        self,
        users::{ChangedUsers, UserChange},
    },
    domain::Role,
};
use uuid::Uuid;

use crate::{error::ApiError, state::AppState, ttl::TtlMap};

/// Most users whose token checks one api process remembers at once; beyond
/// them, a token's user is read on each request.
pub const TOKEN_CHECK_USERS: usize = 65_536;

/// How long a lost listener waits before it connects again (meanwhile every
/// request reads its user).
const RELISTEN_PAUSE: Duration = Duration::from_millis(500);

/// Users as this process last read them for a token check, by user id:
/// the caller they make and their token version; `None` for a user
/// forgotten since. Used only while [`follow_changes`](Self::follow_changes)
/// listens for the users' changes.
#[derive(Debug, Clone)]
pub struct TokenChecks {
    users: Arc<TtlMap<Uuid, Option<(AuthUser, i32)>>>,
    listening: Arc<AtomicBool>,
}

impl TokenChecks {
    /// Remembers what is read for `ttl` (zero: nothing is remembered), once
    /// [`follow_changes`](Self::follow_changes) listens.
    pub fn new(ttl: Duration) -> Self {
        Self {
            users: Arc::new(TtlMap::new(ttl, TOKEN_CHECK_USERS)),
            listening: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Listens for the users' changes (`shared::db::users::USER_CHANGES`)
    /// on a connection of `pool` and forgets each user announced there;
    /// connects again after a lost connection.
    /// What is remembered is used only while it listens, and forgotten
    /// whenever it starts or stops listening. Returns when `pool` closes,
    /// or at once when nothing is remembered (a zero time to live).
    pub async fn follow_changes(self, pool: PgPool) {
        if self.users.ttl().is_zero() {
            return;
        }
        loop {
            let lost = self.listen(&pool).await;
            self.stop_using();
            if pool.is_closed() {
                return;
            }
            match lost {
                Ok(()) => tracing::warn!(
                    "token checks: the connection listening for user changes was lost; reading every token's user until it is back"
                ),
                Err(e) => tracing::warn!(
                    "token checks: cannot listen for user changes ({e}); reading every token's user until it can"
                ),
            }
            tokio::time::sleep(RELISTEN_PAUSE).await;
        }
    }

    /// One listening connection's life: `Ok` when it was lost.
    async fn listen(&self, pool: &PgPool) -> Result<(), db::DbError> {
        let mut changes = ChangedUsers::listen(pool).await?;
        // Every change committed from here on is announced: forget what
        // was read before, then use what is read after.
        self.users.clear();
        self.listening.store(true, Ordering::Release);
        tracing::debug!("token checks: listening for user changes");
        loop {
            match changes.next().await? {
                UserChange::Of(user) => self.forget(user),
                UserChange::Unnamed => self.users.clear(),
                UserChange::Lost => return Ok(()),
            }
        }
    }

    /// Stops using what is remembered, and forgets it.
    fn stop_using(&self) {
        self.listening.store(false, Ordering::Release);
        self.users.clear();
    }

    /// The caller `claims` make, if this process listens for the users'
    /// changes and its user was read within the time to live, not forgotten
    /// since, and matched them (company, role and token version).
    fn matching(&self, claims: &Claims) -> Option<AuthUser> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        self.users
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
        self.users
            .insert_at(user.user_id, Some((user, version)), read_at);
    }

    /// Forgets `user`: its next request reads it again, and a read that
    /// began before this call is not remembered. Call after the commit of a
    /// change to its role or token version, or its deletion.
    pub fn forget(&self, user: Uuid) {
        self.users.insert(user, None);
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
