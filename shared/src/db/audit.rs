//! The audit log: one row per state change, written in the caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, postgres::PgArguments};
use uuid::Uuid;

use super::{ArrayInsert, DbError, bind_next, execute_insert};
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
    execute_insert(conn, &AuditRows::new(events)).await
}

/// Audit rows as the arrays of one insert ([`ArrayInsert`]).
#[derive(Debug, Default)]
pub struct AuditRows<'a> {
    companies: Vec<Uuid>,
    actors: Vec<Option<Uuid>>,
    verbs: Vec<&'a str>,
    types: Vec<&'a str>,
    entities: Vec<Option<Uuid>>,
    payloads: Vec<serde_json::Value>,
}

impl<'a> AuditRows<'a> {
    /// The rows of `events`.
    #[must_use]
    pub fn new(events: Vec<NewAuditEvent<'a>>) -> Self {
        let mut rows = Self::default();
        for event in events {
            rows.companies.push(event.company_id);
            rows.actors.push(event.actor_user_id);
            rows.verbs.push(event.action);
            rows.types.push(event.entity_type);
            rows.entities.push(event.entity_id);
            rows.payloads.push(event.payload);
        }
        rows
    }
}

impl ArrayInsert for AuditRows<'_> {
    fn bind_insert(&self, args: &mut PgArguments) -> Result<String, DbError> {
        let columns = [
            bind_next(args, &self.companies, "uuid[]")?,
            bind_next(args, &self.actors, "uuid[]")?,
            bind_next(args, &self.verbs, "text[]")?,
            bind_next(args, &self.types, "text[]")?,
            bind_next(args, &self.entities, "uuid[]")?,
            bind_next(args, &self.payloads, "jsonb[]")?,
        ];
        Ok(format!(
            "INSERT INTO audit_logs (company_id, actor_user_id, action, entity_type, entity_id, payload)
             SELECT * FROM unnest({})",
            columns.join(", ")
        ))
    }
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
