//! Companies (tenants).

use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;
use crate::domain::Company;

/// Unique index on `lower(name)`.
pub const COMPANIES_NAME_KEY: &str = "companies_name_key";

fn map_company_error(e: sqlx::Error) -> DbError {
    let err = DbError::from(e);
    if err.constraint() == Some(COMPANIES_NAME_KEY) {
        DbError::Conflict("a company with this name already exists".into())
    } else {
        err
    }
}

/// Inserts a company with a caller-chosen id (so the tenant can be set first).
///
/// # Errors
/// [`DbError::Conflict`] when the name is taken (regardless of case).
pub async fn insert_company(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
) -> Result<Company, DbError> {
    sqlx::query_as("INSERT INTO companies (id, name) VALUES ($1, $2) RETURNING id, name, created_at, updated_at")
        .bind(id)
        .bind(name)
        .fetch_one(conn)
        .await
        .map_err(map_company_error)
}

/// The company, if it is the tenant's own.
///
/// # Errors
/// [`DbError::NotFound`] otherwise.
pub async fn find_company(conn: &mut PgConnection, id: Uuid) -> Result<Company, DbError> {
    sqlx::query_as("SELECT id, name, created_at, updated_at FROM companies WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(DbError::NotFound("company"))
}

/// Renames the company.
///
/// # Errors
/// [`DbError::NotFound`], or [`DbError::Conflict`] when the name is taken.
pub async fn update_company(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
) -> Result<Company, DbError> {
    sqlx::query_as("UPDATE companies SET name = $2, updated_at = now() WHERE id = $1 RETURNING id, name, created_at, updated_at")
        .bind(id)
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(map_company_error)?
        .ok_or(DbError::NotFound("company"))
}
