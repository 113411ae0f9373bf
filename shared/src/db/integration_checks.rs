//! Connection tests of integrations, written by the api and completed by a worker.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;

/// A check as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IntegrationCheck {
    /// Id.
    pub id: Uuid,
    /// The integration.
    pub integration_id: Uuid,
    /// PENDING, SUCCEEDED or FAILED.
    pub status: String,
    /// transient, permanent or needs_human.
    pub error_kind: Option<String>,
    /// The classified error.
    pub error: Option<String>,
    /// The provider's answer.
    pub outcome: Option<Value>,
}

/// Records a new PENDING check.
///
/// # Errors
/// Database failures.
pub async fn insert_check(
    conn: &mut PgConnection,
    company_id: Uuid,
    integration_id: Uuid,
) -> Result<Uuid, DbError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO integration_checks (company_id, integration_id) VALUES ($1, $2) RETURNING id",
    )
    .bind(company_id)
    .bind(integration_id)
    .fetch_one(conn)
    .await?)
}

/// One check of the tenant.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn find_check(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<IntegrationCheck, DbError> {
    sqlx::query_as("SELECT id, integration_id, status, error_kind, error, outcome FROM integration_checks WHERE id = $1 AND company_id = $2")
        .bind(id)
        .bind(company_id)
        .fetch_optional(conn)
        .await?
        .ok_or(DbError::NotFound("integration check"))
}

/// Completes a PENDING check; a second completion (a redelivered job) writes nothing.
///
/// # Errors
/// Database failures.
pub async fn complete_check(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
    outcome: Result<&Value, (&str, &str)>,
) -> Result<bool, DbError> {
    let (status, outcome, kind, error) = match outcome {
        Ok(value) => ("SUCCEEDED", Some(value), None, None),
        Err((kind, error)) => ("FAILED", None, Some(kind), Some(error)),
    };
    let done = sqlx::query(
        "UPDATE integration_checks SET status = $3, outcome = $4, error_kind = $5, error = $6, finished_at = now()
         WHERE id = $1 AND company_id = $2 AND status = 'PENDING'",
    )
    .bind(id)
    .bind(company_id)
    .bind(status)
    .bind(outcome)
    .bind(kind)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
