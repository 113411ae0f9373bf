//! Tickets, their actions, and the Idempotency-Key records of ticket creation.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, postgres::PgArguments};
use uuid::Uuid;

use super::{ArrayInsert, DbError, audit::AuditRows, bind_next};
use crate::domain::{Provider, Ticket, TicketAction, TicketStatus};
use crate::jobs::ActionJobRows;

const TICKET_COLUMNS: &str = "id, company_id, created_by_user_id, subject, description, status, status_reason, executed_at, created_at, updated_at";
const ACTION_COLUMNS: &str = "id, company_id, ticket_id, position, integration_id, provider, action, params, status, attempts, max_attempts, last_error, result, next_attempt_at, started_at, finished_at, created_at, updated_at";

/// A ticket to create; the caller picks its id (time-ordered, see
/// [`new_ticket_id`]) so that the rows of a batch can be matched to their
/// requests.
#[derive(Debug, Clone)]
pub struct NewTicket<'a> {
    /// Id, from [`new_ticket_id`].
    pub id: Uuid,
    /// Company.
    pub company_id: Uuid,
    /// Creator.
    pub created_by_user_id: Uuid,
    /// Subject.
    pub subject: &'a str,
    /// Description.
    pub description: &'a str,
}

/// A fresh ticket id: UUID version 7, like the column's default, so new
/// rows land at the right edge of every index keyed by the id.
pub fn new_ticket_id() -> Uuid {
    Uuid::now_v7()
}

/// An action to create, already validated against the catalogue.
#[derive(Debug, Clone)]
pub struct NewAction {
    /// The integration that runs it.
    pub integration_id: Uuid,
    /// Its provider.
    pub provider: Provider,
    /// Catalogue action.
    pub action: String,
    /// Normalised params.
    pub params: serde_json::Value,
    /// Attempt cap.
    pub max_attempts: i32,
}

/// The actions of one new ticket, for [`insert_ticket_actions`].
#[derive(Debug, Clone)]
pub struct NewTicketActions<'a> {
    /// Company.
    pub company_id: Uuid,
    /// The ticket.
    pub ticket_id: Uuid,
    /// Its actions, in execution order (positions 0..).
    pub actions: &'a [NewAction],
    /// Their ids, from [`new_action_id`], one per action: the caller names
    /// them in the ticket's audit row, written by the same statement.
    pub action_ids: Vec<Uuid>,
    /// The queue job the caller pushes for the first action.
    pub first_job_id: Option<&'a str>,
}

/// A fresh action id, time-ordered like [`new_ticket_id`].
#[must_use]
pub fn new_action_id() -> Uuid {
    Uuid::now_v7()
}

/// Inserts tickets, all in one statement; the rows come back in no
/// particular order.
///
/// # Errors
/// Database failures.
pub async fn insert_tickets(
    conn: &mut PgConnection,
    tickets: &[NewTicket<'_>],
) -> Result<Vec<Ticket>, DbError> {
    if tickets.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = tickets.iter().map(|t| t.id).collect();
    let companies: Vec<Uuid> = tickets.iter().map(|t| t.company_id).collect();
    let creators: Vec<Uuid> = tickets.iter().map(|t| t.created_by_user_id).collect();
    let subjects: Vec<&str> = tickets.iter().map(|t| t.subject).collect();
    let descriptions: Vec<&str> = tickets.iter().map(|t| t.description).collect();
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO tickets (id, company_id, created_by_user_id, subject, description)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[])
         RETURNING {TICKET_COLUMNS}"
    )))
    .bind(&ids)
    .bind(&companies)
    .bind(&creators)
    .bind(&subjects)
    .bind(&descriptions)
    .fetch_all(conn)
    .await?)
}

/// Inserts the actions of several new tickets at positions 0.. of each,
/// the queue jobs of `jobs` and the audit rows of `audits`, all in one
/// statement: under load each round trip of a new ticket's transaction
/// waits for a core, and that wait is paid in `POST /api/tickets` latency
/// (BENCHMARKS.md). Each ticket's first action carries its `first_job_id`.
/// The actions come back in no particular order.
///
/// # Errors
/// Database failures, or a ticket whose `action_ids` do not match its
/// actions.
pub async fn insert_ticket_actions(
    conn: &mut PgConnection,
    tickets: &[NewTicketActions<'_>],
    jobs: &ActionJobRows,
    audits: &AuditRows<'_>,
) -> Result<Vec<TicketAction>, DbError> {
    let n: usize = tickets.iter().map(|t| t.actions.len()).sum();
    let mut ids = Vec::with_capacity(n);
    let mut companies = Vec::with_capacity(n);
    let mut ticket_ids = Vec::with_capacity(n);
    let mut job_ids: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut positions: Vec<i32> = Vec::with_capacity(n);
    let mut integrations = Vec::with_capacity(n);
    let mut providers: Vec<&str> = Vec::with_capacity(n);
    let mut names: Vec<&str> = Vec::with_capacity(n);
    let mut params: Vec<&serde_json::Value> = Vec::with_capacity(n);
    let mut max_attempts: Vec<i32> = Vec::with_capacity(n);
    for ticket in tickets {
        if ticket.action_ids.len() != ticket.actions.len() {
            return Err(DbError::Invalid {
                field: "actions".into(),
                message: format!(
                    "{} ids for {} actions",
                    ticket.action_ids.len(),
                    ticket.actions.len()
                ),
            });
        }
        for (i, (action, id)) in ticket.actions.iter().zip(&ticket.action_ids).enumerate() {
            ids.push(*id);
            companies.push(ticket.company_id);
            ticket_ids.push(ticket.ticket_id);
            job_ids.push(if i == 0 { ticket.first_job_id } else { None });
            positions.push(i32::try_from(i).unwrap_or(i32::MAX));
            integrations.push(action.integration_id);
            providers.push(action.provider.as_str());
            names.push(action.action.as_str());
            params.push(&action.params);
            max_attempts.push(action.max_attempts);
        }
    }
    let mut args = PgArguments::default();
    let columns = [
        bind_next(&mut args, &ids, "uuid[]")?,
        bind_next(&mut args, &companies, "uuid[]")?,
        bind_next(&mut args, &ticket_ids, "uuid[]")?,
        bind_next(&mut args, &job_ids, "text[]")?,
        bind_next(&mut args, &positions, "int[]")?,
        bind_next(&mut args, &integrations, "uuid[]")?,
        bind_next(&mut args, &providers, "text[]")?,
        bind_next(&mut args, &names, "text[]")?,
        bind_next(&mut args, &params, "jsonb[]")?,
        bind_next(&mut args, &max_attempts, "int[]")?,
    ]
    .join(", ");
    let push_jobs = jobs.bind_insert(&mut args)?;
    let audit = audits.bind_insert(&mut args)?;
    // Data-modifying CTEs all run to completion, read or not; the foreign
    // key of each action to its ticket, inserted by the caller's previous
    // statement, is checked at the statement's end.
    Ok(sqlx::query_as_with(
        sqlx::AssertSqlSafe(format!(
            "WITH actions AS (
                INSERT INTO ticket_actions (id, company_id, ticket_id, job_id, position, integration_id, provider, action, params, max_attempts)
                SELECT * FROM unnest({columns})
                RETURNING {ACTION_COLUMNS}
             ), jobs AS ({push_jobs}), audit AS ({audit})
             SELECT {ACTION_COLUMNS} FROM actions"
        )),
        args,
    )
    .fetch_all(conn)
    .await?)
}

/// One ticket of the tenant.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn find_ticket(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<Ticket, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE id = $1 AND company_id = $2"
    )))
    .bind(id)
    .bind(company_id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound("ticket"))
}

/// A ticket's actions in execution order.
///
/// # Errors
/// Database failures.
pub async fn list_ticket_actions(
    conn: &mut PgConnection,
    company_id: Uuid,
    ticket_id: Uuid,
) -> Result<Vec<TicketAction>, DbError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACTION_COLUMNS} FROM ticket_actions WHERE ticket_id = $1 AND company_id = $2 ORDER BY position"
    )))
    .bind(ticket_id)
    .bind(company_id)
    .fetch_all(conn)
    .await?)
}

/// Filters for [`list_tickets`].
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    /// Only this status.
    pub status: Option<TicketStatus>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Keyset cursor: strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

/// The company's tickets, newest first.
///
/// # Errors
/// Database failures.
pub async fn list_tickets(
    conn: &mut PgConnection,
    company_id: Uuid,
    f: &TicketFilter,
) -> Result<Vec<Ticket>, DbError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets
         WHERE company_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)
           AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
         ORDER BY created_at DESC, id DESC
         LIMIT $7"
    )))
    .bind(company_id)
    .bind(f.status)
    .bind(f.created_after)
    .bind(f.created_before)
    .bind(f.before.map(|b| b.0))
    .bind(f.before.map(|b| b.1))
    .bind(f.limit)
    .fetch_all(conn)
    .await?)
}

/// Locks a ticket for a change and returns it.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn lock_ticket(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<Ticket, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE id = $1 AND company_id = $2 FOR UPDATE"
    )))
    .bind(id)
    .bind(company_id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound("ticket"))
}

/// Changes subject and/or description.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn update_ticket_text(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
    subject: Option<&str>,
    description: Option<&str>,
) -> Result<Ticket, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE tickets SET subject = coalesce($3, subject), description = coalesce($4, description), updated_at = now()
         WHERE id = $1 AND company_id = $2 RETURNING {TICKET_COLUMNS}"
    )))
    .bind(id)
    .bind(company_id)
    .bind(subject)
    .bind(description)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound("ticket"))
}

/// Locks every action of a ticket, in id order. The worker locks an action
/// and then its ticket; a path that changes a ticket and its actions takes
/// the actions first too, so the two never wait on each other in a cycle
/// (which PostgreSQL breaks after a second by failing one of them).
async fn lock_ticket_actions(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<(), DbError> {
    sqlx::query(
        "SELECT 1 FROM ticket_actions WHERE ticket_id = $1 AND company_id = $2 ORDER BY id FOR UPDATE",
    )
    .bind(id)
    .bind(company_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Hands a PENDING ticket to a human: DERIVED with a reason; its actions not
/// yet started are cancelled. Returns `None` when the ticket is not PENDING.
///
/// # Errors
/// Database failures.
pub async fn derive_ticket(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
    reason: &str,
) -> Result<Option<Ticket>, DbError> {
    lock_ticket_actions(&mut *conn, company_id, id).await?;
    let ticket: Option<Ticket> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE tickets SET status = 'DERIVED', status_reason = $3, executed_at = now(), updated_at = now()
         WHERE id = $1 AND company_id = $2 AND status IS NOT DISTINCT FROM 'PENDING' RETURNING {TICKET_COLUMNS}"
    )))
    .bind(id)
    .bind(company_id)
    .bind(reason)
    .fetch_optional(&mut *conn)
    .await?;
    if ticket.is_some() {
        sqlx::query("UPDATE ticket_actions SET status = 'CANCELLED', last_error = 'cancelled: ticket derived to a human', finished_at = now(), updated_at = now() WHERE ticket_id = $1 AND company_id = $2 AND status = 'PENDING'")
            .bind(id)
            .bind(company_id)
            .execute(conn)
            .await?;
    }
    Ok(ticket)
}

/// Deletes a ticket and (by cascade) its actions. Queued jobs of deleted
/// actions find nothing and finish as no-ops.
///
/// # Errors
/// [`DbError::NotFound`].
pub async fn delete_ticket(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<(), DbError> {
    lock_ticket_actions(&mut *conn, company_id, id).await?;
    let done = sqlx::query("DELETE FROM tickets WHERE id = $1 AND company_id = $2")
        .bind(id)
        .bind(company_id)
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(DbError::NotFound("ticket"));
    }
    Ok(())
}

/// Serialises requests carrying the same Idempotency-Key (until commit), and
/// returns the live record for it: (request hash, ticket id). An expired
/// record is deleted and `None` returned.
///
/// # Errors
/// Database failures.
pub async fn claim_idempotency_key(
    conn: &mut PgConnection,
    company_id: Uuid,
    key: &str,
) -> Result<Option<(String, Uuid)>, DbError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 7))")
        .bind(company_id.to_string())
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM ticket_idempotency_keys WHERE company_id = $1 AND key = $2 AND expires_at <= now()")
        .bind(company_id)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_as("SELECT request_hash, ticket_id FROM ticket_idempotency_keys WHERE company_id = $1 AND key = $2")
        .bind(company_id)
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

/// Records an Idempotency-Key for a created ticket.
///
/// # Errors
/// Database failures.
pub async fn insert_idempotency_key(
    conn: &mut PgConnection,
    company_id: Uuid,
    key: &str,
    request_hash: &str,
    ticket_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO ticket_idempotency_keys (company_id, key, request_hash, ticket_id, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(company_id)
        .bind(key)
        .bind(request_hash)
        .bind(ticket_id)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// A cheap fingerprint of a ticket's visible state, for the events stream.
///
/// # Errors
/// Database failures.
pub async fn ticket_state_version(
    conn: &mut PgConnection,
    company_id: Uuid,
    id: Uuid,
) -> Result<Option<String>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT t.updated_at::text || '/' || coalesce((SELECT max(a.updated_at)::text || '/' || count(*) FROM ticket_actions a WHERE a.ticket_id = t.id AND a.company_id = t.company_id), '')
         FROM tickets t WHERE t.id = $1 AND t.company_id = $2",
    )
    .bind(id)
    .bind(company_id)
    .fetch_optional(conn)
    .await?)
}
