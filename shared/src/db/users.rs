//! Company users.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::domain::{Role, User};

/// Unique constraint on `username`.
pub const USERS_USERNAME_KEY: &str = "users_username_key";

const USER_COLUMNS: &str =
    "id, company_id, username, email, role, token_version, created_at, updated_at";

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// The company.
    pub company_id: Uuid,
    /// Lower-case username.
    pub username: &'a str,
    /// Email.
    pub email: &'a str,
    /// argon2id PHC string.
    pub password_hash: &'a str,
    /// Role.
    pub role: Role,
}

fn map_user_error(e: sqlx::Error) -> DbError {
    let err = DbError::from(e);
    match err.constraint() {
        Some(USERS_USERNAME_KEY) => DbError::Conflict("this username is taken".into()),
        Some("users_username_format") => DbError::Invalid {
            field: "username".into(),
            message: "3 to 64 characters of a-z, 0-9, '.', '_', '@', '-'".into(),
        },
        Some("users_email_format") => DbError::Invalid {
            field: "email".into(),
            message: "must be an email address".into(),
        },
        _ => err,
    }
}

/// Inserts a user.
///
/// # Errors
/// [`DbError::Conflict`] for a taken username; [`DbError::Invalid`] for a bad format.
pub async fn insert_user(conn: &mut PgConnection, user: NewUser<'_>) -> Result<User, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (company_id, username, email, password_hash, role) VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
    )))
    .bind(user.company_id)
    .bind(user.username)
    .bind(user.email)
    .bind(user.password_hash)
    .bind(user.role)
    .fetch_one(conn)
    .await
    .map_err(map_user_error)
}

/// The user and their password hash, by username (inside a login-lookup transaction).
///
/// # Errors
/// Database failures.
pub async fn find_login(
    conn: &mut PgConnection,
    username: &str,
) -> Result<Option<(User, String)>, DbError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: User,
        password_hash: String,
    }
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1"
    )))
    .bind(username)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.user, r.password_hash)))
}

/// A user of the tenant.
///
/// # Errors
/// [`DbError::NotFound`] otherwise.
pub async fn find_user(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<User, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND company_id = $2"
    )))
    .bind(id)
    .bind(company_id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound("user"))
}

/// The user an access token names, read under the token's company as the
/// app role (row-level security applies, as in a [`super::begin_tenant`]
/// transaction), in one statement and one round trip: `token_user`
/// (migration 0032) sets its own scope for its own implicit transaction, so
/// this takes a connection of the pool and no transaction. Its plan is kept
/// (one primary-key lookup).
///
/// # Errors
/// [`DbError::NotFound`] when the company has no such user.
pub async fn find_token_user(pool: &PgPool, company_id: Uuid, id: Uuid) -> Result<User, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM token_user($1, $2)"
    )))
    .bind(company_id)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound("user"))
}

/// The company's users, by username.
///
/// # Errors
/// Database failures.
pub async fn list_users(
    conn: &mut PgConnection,
    company_id: Uuid,
    limit: i64,
    offset: i64,
) -> Result<Vec<User>, DbError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE company_id = $1 ORDER BY username LIMIT $2 OFFSET $3"
    )))
    .bind(company_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await?)
}

/// Changes to a user; `None` leaves a field as it is. A new password hash
/// or role bumps `token_version`, which invalidates tokens issued before.
#[derive(Debug, Clone, Default)]
pub struct UserChanges<'a> {
    /// New email.
    pub email: Option<&'a str>,
    /// New password hash.
    pub password_hash: Option<&'a str>,
    /// New role.
    pub role: Option<Role>,
}

/// Applies changes to a user of the tenant.
///
/// # Errors
/// [`DbError::NotFound`] or [`DbError::Invalid`].
pub async fn update_user(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
    changes: UserChanges<'_>,
) -> Result<User, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET
            email = coalesce($3, email),
            password_hash = coalesce($4, password_hash),
            token_version = token_version + CASE WHEN $4::text IS NOT NULL OR ($5::text IS NOT NULL AND $5::text <> role) THEN 1 ELSE 0 END,
            role = coalesce($5, role),
            updated_at = now()
         WHERE id = $1 AND company_id = $2
         RETURNING {USER_COLUMNS}"
    )))
    .bind(id)
    .bind(company_id)
    .bind(changes.email)
    .bind(changes.password_hash)
    .bind(changes.role)
    .fetch_optional(conn)
    .await
    .map_err(map_user_error)?
    .ok_or(DbError::NotFound("user"))
}

/// Replaces a user's password hash with a fresh hash of the same password
/// (made with the current parameters), unless the hash changed since it was
/// read as `old`. The password is the same, so `token_version` stays and
/// the user's tokens stay valid. Whether it was replaced.
///
/// # Errors
/// Database failures.
pub async fn replace_password_hash(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
    old: &str,
    new: &str,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $4 WHERE id = $1 AND company_id = $2 AND password_hash = $3",
    )
    .bind(id)
    .bind(company_id)
    .bind(old)
    .bind(new)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a user of the tenant.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn delete_user(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<(), DbError> {
    let done = sqlx::query("DELETE FROM users WHERE id = $1 AND company_id = $2")
        .bind(id)
        .bind(company_id)
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(DbError::NotFound("user"));
    }
    Ok(())
}

/// ADMINs of the company, locked (`FOR UPDATE`) so two concurrent demotions
/// cannot both pass the "last ADMIN" check.
///
/// # Errors
/// Database failures.
pub async fn lock_admin_ids(
    conn: &mut PgConnection,
    company_id: Uuid,
) -> Result<Vec<Uuid>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM users WHERE company_id = $1 AND role = 'ADMIN' ORDER BY id FOR UPDATE",
    )
    .bind(company_id)
    .fetch_all(conn)
    .await?)
}

/// The channel on which PostgreSQL announces, at commit, the id of a user
/// deleted or given a new role or token version, however the change was
/// made (migration 0033).
pub const USER_CHANGES: &str = "txdx_user_changes";

/// A connection of a pool listening for [`USER_CHANGES`]; it holds that
/// connection until dropped.
#[derive(Debug)]
pub struct ChangedUsers(sqlx::postgres::PgListener);

impl ChangedUsers {
    /// Takes a connection of `pool` and listens on [`USER_CHANGES`]: every
    /// change committed after this returns is announced to it.
    ///
    /// # Errors
    /// Database failures.
    pub async fn listen(pool: &PgPool) -> Result<Self, DbError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        // A lost connection ends the listening (`next` answers `Lost`)
        // instead of being replaced behind the caller's back: changes made
        // in between were never announced, and the caller must know.
        listener.eager_reconnect(false);
        listener.listen(USER_CHANGES).await?;
        Ok(Self(listener))
    }

    /// The next announcement, or [`UserChange::Lost`] when the connection
    /// was lost.
    ///
    /// # Errors
    /// Database failures, and [`DbError::Unavailable`] once the pool closes.
    pub async fn next(&mut self) -> Result<UserChange, DbError> {
        Ok(match self.0.try_recv().await? {
            Some(notification) => match notification.payload().parse() {
                Ok(user) => UserChange::Of(user),
                Err(_) => UserChange::Unnamed,
            },
            None => UserChange::Lost,
        })
    }
}

/// What [`ChangedUsers::next`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// This user changed.
    Of(Uuid),
    /// An announcement that names no user id: treat it as a change of anyone.
    Unnamed,
    /// The connection was lost: announcements may have been missed, and no
    /// more will come.
    Lost,
}
