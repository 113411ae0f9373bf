//! `/api/users`: the company's users. ADMINs manage everyone; a USER may
//! change only its own email and password. The last ADMIN can be neither
//! deleted nor demoted.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::{
    auth::password,
    db::{self, users::UserChanges},
    domain::{Role, User},
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::{AdminUser, AuthUser},
    error::ApiError,
    extract::{Json, Path, Query},
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    /// Id.
    pub id: Uuid,
    /// Company.
    pub company_id: Uuid,
    /// Username (lower case).
    pub username: String,
    /// Email.
    pub email: String,
    /// Role.
    pub role: Role,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            company_id: u.company_id,
            username: u.username,
            email: u.email,
            role: u.role,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    /// The users, by username.
    pub items: Vec<UserResponse>,
    /// The offset of the next page, absent on the last page.
    pub next_offset: Option<u32>,
}

/// A new user (ADMIN only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Globally unique, 3 to 64 characters of a-z, 0-9, `.`, `_`, `@`, `-`.
    pub username: String,
    /// Email.
    pub email: String,
    /// 12 to 128 characters.
    pub password: String,
    /// ADMIN or USER.
    pub role: Role,
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// New email.
    #[serde(default)]
    pub email: Option<String>,
    /// New password (invalidates the user's existing tokens).
    #[serde(default)]
    pub password: Option<String>,
    /// New role (ADMIN only; invalidates the user's existing tokens).
    #[serde(default)]
    pub role: Option<Role>,
}

/// Offset pagination.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OffsetPage {
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "crate::pagination::limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Rows to skip (default 0).
    #[serde(default, deserialize_with = "crate::pagination::offset")]
    #[param(maximum = 2147483647)]
    pub offset: Option<u32>,
}

/// Checks a (lower-cased) username's format.
///
/// # Errors
/// 422 naming `username`.
pub fn validate_username(username: &str) -> Result<(), ApiError> {
    let ok = (3..=64).contains(&username.len())
        && username.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '@' | '-')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "username",
            "must be 3 to 64 characters of a-z, 0-9, '.', '_', '@', '-'",
        ))
    }
}

/// Checks an email's shape.
///
/// # Errors
/// 422 naming `email`.
pub fn validate_email(email: &str) -> Result<(), ApiError> {
    let email = email.trim();
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("email", "must be an email address"))
    }
}

/// The company's users.
#[utoipa::path(get, path = "/api/users", tag = "users", operation_id = "list_users",
    security(("bearer" = [])),
    params(OffsetPage),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "Bad query", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list_users(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<OffsetPage>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = page.limit.unwrap_or(crate::pagination::DEFAULT_LIMIT);
    let offset = page.offset.unwrap_or(0);
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let mut users = db::users::list_users(
        &mut tx,
        user.company_id,
        i64::from(limit) + 1,
        i64::from(offset),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let next_offset = (users.len() > limit as usize).then(|| offset.saturating_add(limit));
    users.truncate(limit as usize);
    Ok(Json(UserPage {
        items: users.into_iter().map(Into::into).collect(),
        next_offset,
    }))
}

/// Creates a user in the caller's company (ADMIN).
#[utoipa::path(post, path = "/api/users", tag = "users", operation_id = "create_user",
    security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = UserResponse),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Username taken", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn create_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Json(body): Json<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let username = body.username.trim().to_lowercase();
    validate_username(&username)?;
    validate_email(&body.email)?;
    password::check_policy(&body.password, &username)
        .map_err(|e| ApiError::invalid("password", e.to_string()))?;
    let pw = body.password;
    let hash = state
        .hashing
        .run(move || password::hash_password(&pw))
        .await?
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut tx = db::begin_tenant(&state.pool, admin.company_id).await?;
    let user = db::users::insert_user(
        &mut tx,
        db::users::NewUser {
            company_id: admin.company_id,
            username: &username,
            email: body.email.trim(),
            password_hash: &hash,
            role: body.role,
        },
    )
    .await?;
    super::audit(
        &mut tx,
        admin,
        "user.created",
        "user",
        user.id,
        json!({"username": user.username, "role": user.role}),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// One user of the caller's company.
#[utoipa::path(get, path = "/api/users/{id}", tag = "users", operation_id = "get_user",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 404, description = "No such user in this company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<UserResponse>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let found = db::users::find_user(&mut tx, user.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(found.into()))
}

/// Changes a user: an ADMIN anyone in the company, a USER only itself and
/// never its role.
#[utoipa::path(put, path = "/api/users/{id}", tag = "users", operation_id = "update_user",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "Updated", body = UserResponse),
        (status = 403, description = "A USER changing someone else or its own role", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user in this company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would demote the last ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn update_user(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateUserRequest>,
) -> Result<Json<UserResponse>, ApiError> {
    if !caller.is_admin() {
        if id != caller.user_id {
            // Existence of other users is visible to company members (GET
            // /users), so 403 discloses nothing.
            let mut tx = db::begin_tenant(&state.pool, caller.company_id).await?;
            db::users::find_user(&mut tx, caller.company_id, id).await?;
            return Err(ApiError::Forbidden(
                "a USER may change only its own account".into(),
            ));
        }
        if body.role.is_some() {
            return Err(ApiError::Forbidden(
                "a USER cannot change its own role".into(),
            ));
        }
    }
    if let Some(email) = &body.email {
        validate_email(email)?;
    }
    // A turn, held to the end, so that a burst of password changes queues
    // here and not for the pool's connections.
    let _turn = match body.password {
        Some(_) => Some(state.hashing.password_turn().await?),
        None => None,
    };
    // A new password is checked against the target's username (no request
    // changes a username) and hashed before the transaction begins: the
    // hash runs in the idle scheduling class and may wait for a core, and
    // no connection, snapshot or lock waits with it.
    let hash = match &body.password {
        Some(pw) => {
            let mut read = db::begin_tenant(&state.pool, caller.company_id).await?;
            let username = db::users::find_user(&mut read, caller.company_id, id)
                .await?
                .username;
            read.commit().await.map_err(db::DbError::from)?;
            password::check_policy(pw, &username)
                .map_err(|e| ApiError::invalid("password", e.to_string()))?;
            let pw = pw.clone();
            Some(
                state
                    .hashing
                    .run(move || password::hash_password(&pw))
                    .await?
                    .map_err(|e| ApiError::Internal(e.into()))?,
            )
        }
        None => None,
    };
    let mut tx = db::begin_tenant(&state.pool, caller.company_id).await?;
    let target = db::users::find_user(&mut tx, caller.company_id, id).await?;
    if body.role == Some(Role::User) && target.role == Role::Admin {
        let admins = db::users::lock_admin_ids(&mut tx, caller.company_id).await?;
        if admins.len() <= 1 {
            return Err(ApiError::Conflict(
                "the company's last ADMIN cannot be demoted".into(),
            ));
        }
    }
    let updated = db::users::update_user(
        &mut tx,
        caller.company_id,
        id,
        UserChanges {
            email: body.email.as_deref().map(str::trim),
            password_hash: hash.as_deref(),
            role: body.role,
        },
    )
    .await?;
    if hash.is_some() {
        db::refresh_tokens::revoke_user_tokens(&mut tx, id).await?;
    }
    let mut changed = serde_json::Map::new();
    if body.email.is_some() {
        changed.insert(
            "email".into(),
            json!({"from": target.email, "to": updated.email}),
        );
    }
    if hash.is_some() {
        changed.insert("password".into(), json!("changed"));
    }
    if body.role.is_some() {
        changed.insert(
            "role".into(),
            json!({"from": target.role, "to": updated.role}),
        );
    }
    super::audit(
        &mut tx,
        caller,
        "user.updated",
        "user",
        id,
        serde_json::Value::Object(changed),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    state.token_checks.forget(id);
    Ok(Json(updated.into()))
}

/// Deletes a user (ADMIN); the company's last ADMIN cannot be deleted.
#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", operation_id = "delete_user",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user in this company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn delete_user(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, caller.company_id).await?;
    let target = db::users::find_user(&mut tx, caller.company_id, id).await?;
    let admin = caller.require_admin()?;
    if target.role == Role::Admin {
        let admins = db::users::lock_admin_ids(&mut tx, admin.company_id).await?;
        if admins.len() <= 1 {
            return Err(ApiError::Conflict(
                "the company's last ADMIN cannot be deleted".into(),
            ));
        }
    }
    db::users::delete_user(&mut tx, admin.company_id, id).await?;
    super::audit(
        &mut tx,
        admin,
        "user.deleted",
        "user",
        id,
        json!({"username": target.username, "role": target.role}),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    state.token_checks.forget(id);
    Ok(StatusCode::NO_CONTENT)
}
