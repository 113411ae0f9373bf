//! Platform operators (the queue board's users). Not tenant data.

use sqlx::PgPool;

use super::DbError;

/// Creates an operator, or replaces the password of an existing one.
/// Returns true when the operator is new.
///
/// # Errors
/// [`DbError::Invalid`] for a malformed username.
pub async fn upsert_operator(
    pool: &PgPool,
    username: &str,
    password_hash: &str,
) -> Result<bool, DbError> {
    sqlx::query_scalar(
        "INSERT INTO operators (username, password_hash) VALUES ($1, $2)
         ON CONFLICT ON CONSTRAINT operators_username_key DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(username)
    .bind(password_hash)
    .fetch_one(pool)
    .await
    .map_err(|e| {
        let err = DbError::from(e);
        if err.constraint() == Some("operators_username_format") {
            DbError::Invalid {
                field: "username".into(),
                message: "3 to 64 characters of a-z, 0-9, '.', '_', '@', '-'".into(),
            }
        } else {
            err
        }
    })
}

/// The operator's password hash.
///
/// # Errors
/// Database failures.
pub async fn find_operator_hash(pool: &PgPool, username: &str) -> Result<Option<String>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT password_hash FROM operators WHERE username = $1")
            .bind(username)
            .fetch_optional(pool)
            .await?,
    )
}
