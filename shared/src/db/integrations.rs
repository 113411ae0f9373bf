//! Integrations: a company's connection to one provider. Holds the secret
//! store identifier of the credentials, never the credentials.

use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;
use crate::domain::{Integration, IntegrationMode, Provider};

const INTEGRATION_COLUMNS: &str =
    "id, company_id, provider, name, mode, keyvault_secret_id, extra_json, created_at, updated_at";

/// Unique name within a company.
pub const INTEGRATIONS_COMPANY_NAME_KEY: &str = "integrations_company_name_key";

fn map_error(e: sqlx::Error) -> DbError {
    let err = DbError::from(e);
    if err.constraint() == Some(INTEGRATIONS_COMPANY_NAME_KEY) {
        DbError::Conflict("an integration with this name already exists".into())
    } else {
        err
    }
}

/// An integration to create.
#[derive(Debug, Clone)]
pub struct NewIntegration<'a> {
    /// Caller-chosen id (the secret name derives from it).
    pub id: Uuid,
    /// Company.
    pub company_id: Uuid,
    /// Provider.
    pub provider: Provider,
    /// Unique within the company.
    pub name: &'a str,
    /// Live or simulated.
    pub mode: IntegrationMode,
    /// Secret store identifier.
    pub keyvault_secret_id: Option<&'a str>,
    /// Non-secret settings.
    pub extra_json: &'a serde_json::Value,
}

/// Inserts an integration.
///
/// # Errors
/// [`DbError::Conflict`] for a duplicate name.
pub async fn insert_integration(
    conn: &mut PgConnection,
    new: NewIntegration<'_>,
) -> Result<Integration, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO integrations (id, company_id, provider, name, mode, keyvault_secret_id, extra_json) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {INTEGRATION_COLUMNS}"
    )))
    .bind(new.id)
    .bind(new.company_id)
    .bind(new.provider)
    .bind(new.name)
    .bind(new.mode)
    .bind(new.keyvault_secret_id)
    .bind(new.extra_json)
    .fetch_one(conn)
    .await
    .map_err(map_error)
}

/// One integration of the tenant.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn find_integration(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<Integration, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE id = $1 AND company_id = $2"
    )))
    .bind(id)
    .bind(company_id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound("integration"))
}

/// Integrations by (company, id) pairs, in one statement: a pair whose
/// integration does not exist or belongs to another company finds nothing.
///
/// # Errors
/// Database failures.
pub async fn find_integrations(
    conn: &mut PgConnection,
    keys: &[(Uuid, Uuid)],
) -> Result<Vec<Integration>, DbError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (companies, ids): (Vec<Uuid>, Vec<Uuid>) = keys.iter().copied().unzip();
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INTEGRATION_COLUMNS} FROM integrations
         WHERE id = ANY($2)
           AND (company_id, id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))"
    )))
    .bind(&companies)
    .bind(&ids)
    .fetch_all(conn)
    .await?)
}

/// The company's integrations, by name.
///
/// # Errors
/// Database failures.
pub async fn list_integrations(
    conn: &mut PgConnection,
    company_id: Uuid,
    provider: Option<Provider>,
    limit: i64,
    offset: i64,
) -> Result<Vec<Integration>, DbError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE company_id = $1 AND ($2::text IS NULL OR provider = $2) ORDER BY name, id LIMIT $3 OFFSET $4"
    )))
    .bind(company_id)
    .bind(provider)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await?)
}

/// Changes to an integration; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct IntegrationChanges<'a> {
    /// New name.
    pub name: Option<&'a str>,
    /// New mode.
    pub mode: Option<IntegrationMode>,
    /// New secret identifier (rotated credentials).
    pub keyvault_secret_id: Option<&'a str>,
    /// New settings.
    pub extra_json: Option<&'a serde_json::Value>,
}

/// Applies changes.
///
/// # Errors
/// [`DbError::NotFound`] or [`DbError::Conflict`].
pub async fn update_integration(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
    changes: IntegrationChanges<'_>,
) -> Result<Integration, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE integrations SET
            name = coalesce($3, name),
            mode = coalesce($4, mode),
            keyvault_secret_id = coalesce($5, keyvault_secret_id),
            extra_json = coalesce($6, extra_json),
            updated_at = now()
         WHERE id = $1 AND company_id = $2
         RETURNING {INTEGRATION_COLUMNS}"
    )))
    .bind(id)
    .bind(company_id)
    .bind(changes.name)
    .bind(changes.mode)
    .bind(changes.keyvault_secret_id)
    .bind(changes.extra_json)
    .fetch_optional(conn)
    .await
    .map_err(map_error)?
    .ok_or(DbError::NotFound("integration"))
}

/// Deletes an integration; its actions keep running history with no integration.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn delete_integration(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<(), DbError> {
    let done = sqlx::query("DELETE FROM integrations WHERE id = $1 AND company_id = $2")
        .bind(id)
        .bind(company_id)
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(DbError::NotFound("integration"));
    }
    Ok(())
}
