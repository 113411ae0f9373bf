//! The audit log: one row per state change, written in the caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;
use crate::domain::AuditEvent;

/// A row to append.
#[derive(Debug, Clone)]
pub struct NewAuditEvent<'a> {
    /// The company.
    pub company_id: Uuid,
    /// The user who acted; `None` for the system.
    pub actor_user_id: Option<Uuid>,
    /// Dotted verb, e.g. `ticket.created`.
    pub action: &'a str,
    /// `ticket`, `user`, ...
    pub entity_type: &'a str,
    /// The entity.
    pub entity_id: Option<Uuid>,
    /// Details; never a secret.
    pub payload: serde_json::Value,
}

/// Appends one audit row.
///
/// # Errors
/// When the insert fails.
pub async fn insert_audit_event(
    conn: &mut PgConnection,
    event: NewAuditEvent<'_>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO audit_logs (company_id, actor_user_id, action, entity_type, entity_id, payload) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.company_id)
    .bind(event.actor_user_id)
    .bind(event.action)
    .bind(event.entity_type)
    .bind(event.entity_id)
    .bind(event.payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends many audit rows with one insert.
///
/// # Errors
/// When the insert fails.
pub async fn insert_audit_events(
    conn: &mut PgConnection,
    events: Vec<NewAuditEvent<'_>>,
) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len();
    let (mut companies, mut actors, mut verbs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut types, mut entities, mut payloads) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for event in events {
        companies.push(event.company_id);
        actors.push(event.actor_user_id);
        verbs.push(event.action);
        types.push(event.entity_type);
        entities.push(event.entity_id);
        payloads.push(event.payload);
    }
    sqlx::query(
        "INSERT INTO audit_logs (company_id, actor_user_id, action, entity_type, entity_id, payload)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::jsonb[])",
    )
    .bind(&companies)
    .bind(&actors)
    .bind(&verbs)
    .bind(&types)
    .bind(&entities)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// Filters for [`list_audit_events`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this entity type.
    pub entity_type: Option<String>,
    /// Only this entity.
    pub entity_id: Option<Uuid>,
    /// Only this actor.
    pub actor_user_id: Option<Uuid>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Keyset cursor: rows strictly older than this (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

/// The company's audit rows, newest first (the tenant transaction scopes it).
///
/// # Errors
/// When the query fails.
pub async fn list_audit_events(
    conn: &mut PgConnection,
    company_id: Uuid,
    f: &AuditFilter,
) -> Result<Vec<AuditEvent>, DbError> {
    Ok(sqlx::query_as::<_, AuditEvent>(
        "SELECT id, company_id, actor_user_id, action, entity_type, entity_id, payload, created_at
         FROM audit_logs
         WHERE company_id = $1
           AND ($2::text IS NULL OR entity_type = $2)
           AND ($3::uuid IS NULL OR entity_id = $3)
           AND ($4::uuid IS NULL OR actor_user_id = $4)
           AND ($5::timestamptz IS NULL OR created_at >= $5)
           AND ($6::timestamptz IS NULL OR created_at < $6)
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))
         ORDER BY created_at DESC, id DESC
         LIMIT $9",
    )
    .bind(company_id)
    .bind(&f.entity_type)
    .bind(f.entity_id)
    .bind(f.actor_user_id)
    .bind(f.since)
    .bind(f.until)
    .bind(f.before.map(|b| b.0))
    .bind(f.before.map(|b| b.1))
    .bind(f.limit)
    .fetch_all(conn)
    .await?)
}
