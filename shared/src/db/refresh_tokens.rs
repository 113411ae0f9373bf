//! Refresh tokens, stored as SHA-256 hashes, grouped in login families.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;

/// A stored refresh token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRefreshToken {
    /// Row id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The login family.
    pub family_id: Uuid,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Set when rotated or revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a refresh token's hash.
///
/// # Errors
/// Database failures.
pub async fn insert_refresh_token(
    conn: &mut PgConnection,
    company_id: Uuid,
    user_id: Uuid,
    family_id: Uuid,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<Uuid, DbError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO refresh_tokens (company_id, user_id, family_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(company_id)
    .bind(user_id)
    .bind(family_id)
    .bind(token_hash)
    .bind(expires_at)
    .fetch_one(conn)
    .await?)
}

/// Finds a refresh token by hash and locks it.
///
/// # Errors
/// Database failures.
pub async fn find_refresh_token(
    conn: &mut PgConnection,
    token_hash: &str,
) -> Result<Option<StoredRefreshToken>, DbError> {
    Ok(sqlx::query_as("SELECT id, user_id, family_id, expires_at, revoked_at FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE")
        .bind(token_hash)
        .fetch_optional(conn)
        .await?)
}

/// Marks one token rotated (replaced by `replaced_by`).
///
/// # Errors
/// Database failures.
pub async fn mark_rotated(
    conn: &mut PgConnection,
    id: Uuid,
    replaced_by: Uuid,
) -> Result<(), DbError> {
    sqlx::query("UPDATE refresh_tokens SET revoked_at = now(), replaced_by = $2 WHERE id = $1")
        .bind(id)
        .bind(replaced_by)
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes every live token of a family; returns how many.
///
/// # Errors
/// Database failures.
pub async fn revoke_family(conn: &mut PgConnection, family_id: Uuid) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Revokes every live token of a user (password change, deletion).
///
/// # Errors
/// Database failures.
pub async fn revoke_user_tokens(conn: &mut PgConnection, user_id: Uuid) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(conn)
    .await?
    .rows_affected())
}
