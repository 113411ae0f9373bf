//! Ticket actions as the worker sees them: claim an attempt, then record its
//! outcome with the ticket's derived status and an audit row, in one
//! transaction, fenced by a compare-and-set on (status, attempts).
//!
//! A claim refused by its integration's limits is *snoozed*: the action stays
//! PENDING with its attempts unchanged and a new job runs it later, so a
//! limit never uses up an attempt and never fails an action.

use std::{borrow::Cow, collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    DbError,
    audit::{NewAuditEvent, insert_audit_event, insert_audit_events},
    limits::{self, Admission, IntegrationLimits, LimitHit},
};
use crate::{
    domain::{ActionStatus, Integration, TicketAction, TicketStatus, derive_ticket_status},
    jobs::{ActionJob, enqueue_action},
    providers::IntegrationSettings,
};

/// What the worker should do with a delivered job.
#[derive(Debug)]
pub enum AttemptStart {
    /// Run attempt number `attempt` of `action` with `integration`.
    Run {
        /// The action, now RUNNING.
        action: Box<TicketAction>,
        /// Its integration, `None` when deleted.
        integration: Option<Integration>,
        /// The attempt number (fencing token for the outcome).
        attempt: i32,
    },
    /// Nothing to do (already finished, cancelled, or a stale delivery).
    Skip(&'static str),
    /// The attempts were used up by crashed workers: recorded as FAILED.
    Exhausted,
    /// The integration is at one of its limits: the action was snoozed (see
    /// [`snooze_action`]) and a new job runs it at `until`.
    Snoozed {
        /// The limit that refused it.
        limit: LimitHit,
        /// When the new job runs.
        until: DateTime<Utc>,
    },
}

/// How claims apply integration limits.
#[derive(Debug, Clone, Copy)]
pub struct ClaimPolicy {
    /// A RUNNING action whose attempt started longer ago than this no longer
    /// holds a concurrency slot of its integration: its worker is gone and
    /// it was not rescued. Set it to the orphan window plus the action timeout.
    pub stale_running_after: Duration,
}

const ACTION_COLUMNS: &str = "id, company_id, ticket_id, position, integration_id, provider, action, params, status, attempts, max_attempts, last_error, result, next_attempt_at, started_at, finished_at, created_at, updated_at";

/// Loads and locks an action, and if it may run, marks it RUNNING with its
/// attempt counter incremented. Call in a tenant transaction and commit
/// before running the provider.
///
/// When the action's integration has limits, they are checked first
/// ([`limits::admit`]); a refusal snoozes the action instead of claiming it.
///
/// # Errors
/// Database failures.
pub async fn start_attempt(
    conn: &mut PgConnection,
    job: &ActionJob,
    policy: ClaimPolicy,
) -> Result<AttemptStart, DbError> {
    let action: Option<TicketAction> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACTION_COLUMNS} FROM ticket_actions WHERE id = $1 AND company_id = $2 FOR UPDATE"
    )))
    .bind(job.action_id)
    .bind(job.company_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(action) = action else {
        return Ok(AttemptStart::Skip("the action no longer exists"));
    };
    if action.status.is_terminal() {
        return Ok(AttemptStart::Skip("the action is already finished"));
    }
    let ticket_status: TicketStatus = sqlx::query_scalar(
        "SELECT status FROM tickets WHERE id = $1 AND company_id = $2 FOR UPDATE",
    )
    .bind(action.ticket_id)
    .bind(job.company_id)
    .fetch_one(&mut *conn)
    .await?;
    if ticket_status.is_terminal() {
        sqlx::query("UPDATE ticket_actions SET status = 'CANCELLED', finished_at = now(), updated_at = now(), last_error = coalesce(last_error, 'ticket closed before the action ran') WHERE id = $1")
            .bind(action.id)
            .execute(&mut *conn)
            .await?;
        return Ok(AttemptStart::Skip("the ticket is already closed"));
    }
    if action.attempts >= action.max_attempts {
        // Every attempt started and none recorded an outcome: the worker
        // died each time (a poison action). Quarantine it.
        let reason = format!(
            "attempts exhausted: {} attempts started without an outcome (worker crashed or was killed each time)",
            action.attempts
        );
        finish_action(
            conn,
            &action,
            action.attempts,
            Outcome::Failed { error: reason },
        )
        .await?;
        return Ok(AttemptStart::Exhausted);
    }
    let integration: Option<Integration> = match action.integration_id {
        None => None,
        Some(id) => sqlx::query_as(
            "SELECT id, company_id, provider, name, mode, keyvault_secret_id, extra_json, created_at, updated_at FROM integrations WHERE id = $1 AND company_id = $2",
        )
        .bind(id)
        .bind(job.company_id)
        .fetch_optional(&mut *conn)
        .await?,
    };
    let mut admitted_at: Option<DateTime<Utc>> = None;
    if let Some(integration) = &integration {
        // Unparsable settings carry no limits; the attempt then fails on them.
        let settings =
            IntegrationSettings::parse(&integration.extra_json, "settings").unwrap_or_default();
        let limits = IntegrationLimits {
            max_concurrency: settings.max_concurrency,
            rate_limit_per_sec: settings.rate_limit_per_sec,
        };
        if !limits.is_unlimited() {
            match limits::admit(
                conn,
                job.company_id,
                integration.id,
                action.id,
                limits,
                policy.stale_running_after,
            )
            .await?
            {
                Admission::Admitted { at } => admitted_at = Some(at),
                Admission::Refused { limit, retry_at } => {
                    let until = snooze_action(conn, &action, limit, retry_at).await?;
                    return Ok(AttemptStart::Snoozed { limit, until });
                }
            }
        }
    }
    let attempt = action.attempts + 1;
    sqlx::query("UPDATE ticket_actions SET status = 'RUNNING', attempts = $2, attempt_started_at = coalesce($3, clock_timestamp()), started_at = coalesce(started_at, $3, clock_timestamp()), next_attempt_at = NULL, slot_wait_since = NULL, updated_at = now() WHERE id = $1")
        .bind(action.id)
        .bind(attempt)
        .bind(admitted_at)
        .execute(&mut *conn)
        .await?;
    Ok(AttemptStart::Run {
        action: Box::new(TicketAction {
            status: ActionStatus::Running,
            attempts: attempt,
            ..action
        }),
        integration,
        attempt,
    })
}

/// Snoozes an action that may not start yet: back to (or left in) PENDING
/// with its attempt counter unchanged (a crashed attempt that left it
/// RUNNING still counts; the refused one does not), and a new job at
/// `retry_at`, rounded up to the queue's whole seconds. Returns that time.
/// Refused for concurrency, it also joins the integration's line of slot
/// waiters ([`limits::wake_slot_waiter`]).
///
/// Fencing stays intact: an outcome is written only on (RUNNING, n), and a
/// snoozed action is not RUNNING until its next claim makes it (RUNNING, n+1).
/// Call inside the claim's tenant transaction, with the action row locked.
///
/// # Errors
/// Database failures.
pub async fn snooze_action(
    conn: &mut PgConnection,
    action: &TicketAction,
    limit: LimitHit,
    retry_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, DbError> {
    let until = crate::jobs::queue_run_at(retry_at);
    let waits_for_slot = matches!(limit, LimitHit::Concurrency { .. });
    sqlx::query("UPDATE ticket_actions SET status = 'PENDING', next_attempt_at = $3, slot_wait_since = CASE WHEN $4 THEN coalesce(slot_wait_since, now()) ELSE slot_wait_since END, updated_at = now() WHERE id = $1 AND attempts = $2 AND status IN ('PENDING', 'RUNNING')")
        .bind(action.id)
        .bind(action.attempts)
        .bind(until)
        .bind(waits_for_slot)
        .execute(&mut *conn)
        .await?;
    let backlog = company_backlog(conn, action.company_id).await?;
    enqueue_action(
        conn,
        &ActionJob {
            company_id: action.company_id,
            ticket_id: action.ticket_id,
            action_id: action.id,
        },
        Some(until),
        backlog,
    )
    .await?;
    Ok(until)
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The provider confirmed the action.
    Succeeded {
        /// The provider's result.
        result: serde_json::Value,
    },
    /// A transient failure with attempts left: run again at `retry_at`.
    Retry {
        /// What happened.
        error: String,
        /// When the next attempt may start.
        retry_at: DateTime<Utc>,
    },
    /// Failed for good.
    Failed {
        /// Why.
        error: String,
    },
    /// A human must follow up.
    Derived {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// The outcome with every U+0000 in its texts and result replaced by
    /// U+FFFD. Postgres stores the NUL character neither in `text` nor in
    /// `jsonb`, and a provider's answer (a result row, an error body) may
    /// hold one: left in, the insert fails, the job is redelivered and the
    /// provider called again, forever.
    #[must_use]
    pub fn storable(self) -> Self {
        match self {
            Self::Succeeded { result } => Self::Succeeded {
                result: storable_json(result),
            },
            Self::Retry { error, retry_at } => Self::Retry {
                error: storable_text(error),
                retry_at,
            },
            Self::Failed { error } => Self::Failed {
                error: storable_text(error),
            },
            Self::Derived { reason } => Self::Derived {
                reason: storable_text(reason),
            },
        }
    }
}

fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// `value` as [`storable_json`] makes it, copied only when it holds a NUL.
fn storable_json_ref(value: &serde_json::Value) -> Cow<'_, serde_json::Value> {
    fn holds_nul(value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().any(holds_nul),
            Value::Object(map) => map
                .iter()
                .any(|(key, item)| key.contains('\0') || holds_nul(item)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    if holds_nul(value) {
        Cow::Owned(storable_json(value.clone()))
    } else {
        Cow::Borrowed(value)
    }
}

fn storable_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(storable_text(text)),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, item)| (storable_text(key), storable_json(item)))
                .collect(),
        ),
        other @ (Value::Null | Value::Bool(_) | Value::Number(_)) => other,
    }
}

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Written; the ticket now has this status.
    Written(TicketStatus),
    /// Another worker owns the action now (our lock was lost): nothing written.
    Fenced,
}

/// Records an attempt's outcome: the action row (compare-and-set on RUNNING
/// and the attempt number), the next job (retry or next action), the
/// ticket's derived status and `executed_at`, and audit rows. Call inside a
/// tenant transaction.
///
/// # Errors
/// Database failures (the caller's transaction then rolls back).
pub async fn record_outcome(
    conn: &mut PgConnection,
    action: &TicketAction,
    attempt: i32,
    outcome: Outcome,
) -> Result<Recorded, DbError> {
    let outcome = outcome.storable();
    if let Outcome::Succeeded { result } = outcome {
        let written = record_success(conn, action, attempt, Cow::Owned(result)).await?;
        return Ok(match written {
            Some(status) => Recorded::Written(status),
            None => Recorded::Fenced,
        });
    }
    let owned: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM ticket_actions WHERE id = $1 AND status IS NOT DISTINCT FROM 'RUNNING' AND attempts = $2 FOR UPDATE",
    )
    .bind(action.id)
    .bind(attempt)
    .fetch_optional(&mut *conn)
    .await?;
    if owned.is_none() {
        return Ok(Recorded::Fenced);
    }
    finish_action(conn, action, attempt, outcome)
        .await
        .map(Recorded::Written)
}

async fn finish_action(
    conn: &mut PgConnection,
    action: &TicketAction,
    attempt: i32,
    outcome: Outcome,
) -> Result<TicketStatus, DbError> {
    let job = ActionJob {
        company_id: action.company_id,
        ticket_id: action.ticket_id,
        action_id: action.id,
    };
    let audit = |verb: &'static str, payload: serde_json::Value| NewAuditEvent {
        company_id: action.company_id,
        actor_user_id: None,
        action: verb,
        entity_type: "ticket_action",
        entity_id: Some(action.id),
        payload,
    };
    let base = json!({"ticket_id": action.ticket_id, "provider": action.provider, "action": action.action, "attempt": attempt});
    match &outcome {
        Outcome::Succeeded { result } => {
            // Reached only with the row locked in (RUNNING, attempt): the
            // set-based path's compare-and-set holds.
            let written = record_success(conn, action, attempt, Cow::Borrowed(result)).await?;
            return Ok(written.unwrap_or(TicketStatus::Pending));
        }
        Outcome::Retry { error, retry_at } => {
            sqlx::query("UPDATE ticket_actions SET status = 'PENDING', last_error = $2, next_attempt_at = $3, updated_at = now() WHERE id = $1")
                .bind(action.id)
                .bind(error)
                .bind(retry_at)
                .execute(&mut *conn)
                .await?;
            let mut payload = base.clone();
            payload["error"] = json!(error);
            payload["retry_at"] = json!(retry_at);
            insert_audit_event(conn, audit("action.retry_scheduled", payload)).await?;
            let backlog = company_backlog(conn, action.company_id).await?;
            enqueue_action(conn, &job, Some(*retry_at), backlog).await?;
        }
        Outcome::Failed { error } | Outcome::Derived { reason: error } => {
            let (status, verb) = match outcome {
                Outcome::Failed { .. } => (ActionStatus::Failed, "action.failed"),
                _ => (ActionStatus::Derived, "action.derived"),
            };
            sqlx::query("UPDATE ticket_actions SET status = $2, last_error = $3, finished_at = now(), updated_at = now() WHERE id = $1")
                .bind(action.id)
                .bind(status)
                .bind(error)
                .execute(&mut *conn)
                .await?;
            sqlx::query("UPDATE ticket_actions SET status = 'CANCELLED', last_error = 'not run: an earlier action did not succeed', finished_at = now(), updated_at = now() WHERE ticket_id = $1 AND company_id = $2 AND position > $3 AND status IS NOT DISTINCT FROM 'PENDING'")
                .bind(action.ticket_id)
                .bind(action.company_id)
                .bind(action.position)
                .execute(&mut *conn)
                .await?;
            let mut payload = base.clone();
            payload["error"] = json!(error);
            insert_audit_event(conn, audit(verb, payload)).await?;
        }
    }
    // The action has left RUNNING: its slot is free for the next waiter.
    if let Some(integration_id) = action.integration_id {
        limits::wake_slot_waiter(conn, action.company_id, integration_id).await?;
    }
    settle_ticket(conn, action.company_id, action.ticket_id).await
}

/// Recomputes a ticket's status from its actions and, on its first move to
/// a terminal status, writes it with `executed_at` and one audit row.
///
/// # Errors
/// Database failures.
pub async fn settle_ticket(
    conn: &mut PgConnection,
    company_id: Uuid,
    ticket_id: Uuid,
) -> Result<TicketStatus, DbError> {
    let settled = settle_tickets(conn, &[(company_id, ticket_id)]).await?;
    Ok(settled
        .get(&ticket_id)
        .copied()
        .unwrap_or(TicketStatus::Pending))
}

/// Actions of the company not yet finished: the fairness input for job
/// priority. Counted up to [`BACKLOG_CAP`] only (every backlog above it gets
/// the lowest priority anyway), so the count costs the same for a company
/// with a million queued actions as for one with a thousand.
///
/// # Errors
/// Database failures.
pub async fn company_backlog(conn: &mut PgConnection, company_id: Uuid) -> Result<i64, DbError> {
    let backlogs = company_backlogs(conn, &[company_id]).await?;
    Ok(backlogs.get(&company_id).copied().unwrap_or(0))
}

/// The largest backlog [`company_backlog`] counts; [`crate::jobs::fair_priority`]
/// gives every backlog at or above it the lowest priority.
pub const BACKLOG_CAP: i64 = 1000;

/// [`company_backlog`] for several companies in one statement.
///
/// # Errors
/// Database failures.
pub async fn company_backlogs(
    conn: &mut PgConnection,
    company_ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, DbError> {
    // One ordered scan per status, each in the order of
    // `ticket_actions_company_status_idx`: only an index scan yields that
    // order, and it stops at the LIMIT. With `status IN (..)` and stale
    // statistics the planner chose a bitmap scan, which reads every queued
    // action of the company before the LIMIT applies (5 ms for 21,000).
    // Each status is a sub-select, a value the planner does not know: a
    // constant would let it prove the predicate of the partial index of
    // live actions (keyed by integration), and when the statistics say
    // nothing is queued it took that index and read every company's queued
    // actions to find one company's (444 ms for 26,000; BENCHMARKS.md).
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT c.id, LEAST($2,
                (SELECT count(*) FROM (SELECT 1 FROM ticket_actions WHERE company_id = c.id AND status = (SELECT 'PENDING'::text) ORDER BY created_at DESC LIMIT $2) AS pending)
              + (SELECT count(*) FROM (SELECT 1 FROM ticket_actions WHERE company_id = c.id AND status = (SELECT 'RUNNING'::text) ORDER BY created_at DESC LIMIT $2) AS running))
         FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS u(id)) AS c",
    )
    .bind(company_ids)
    .bind(BACKLOG_CAP)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A claim made by [`claim_batch`]: attempt `attempt` of `action`, now RUNNING.
#[derive(Debug)]
pub struct Claimed {
    /// The action, now RUNNING.
    pub action: TicketAction,
    /// Its integration, `None` when the action names none.
    pub integration: Option<Integration>,
    /// The attempt number (fencing token for the outcome).
    pub attempt: i32,
}

/// The common case of [`start_attempt`] for many jobs at once, in two
/// statements: claims every job whose action is PENDING with attempts left,
/// whose ticket is PENDING, and whose integration is absent or exists
/// without limits. Returns the claims keyed by action id. Every other job
/// (finished, cancelled, ticket closed, a crashed attempt left RUNNING,
/// limits to apply, the integration deleted) is left untouched: pass it to
/// [`start_attempt`], which handles each case. Call in a transaction from
/// [`crate::db::begin_tenants`] (or scoped by [`crate::db::scope_tenants`])
/// naming every job's company and planned by key
/// ([`super::Plans::Keyed`]); commit before running the providers.
///
/// # Errors
/// Database failures.
pub async fn claim_batch(
    conn: &mut PgConnection,
    jobs: &[ActionJob],
) -> Result<HashMap<Uuid, Claimed>, DbError> {
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    let action_ids: Vec<Uuid> = jobs.iter().map(|j| j.action_id).collect();
    let company_ids: Vec<Uuid> = jobs.iter().map(|j| j.company_id).collect();
    // Both statements reach every row by its key: planned once per
    // connection, as the caller's transaction is (`Plans::Keyed`).
    let returning = ACTION_COLUMNS
        .split(", ")
        .map(|c| format!("a.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Each row is reached by its primary key: a sub-select with FOR UPDATE
    // is never flattened into a join, so the planner cannot trade the
    // lookups for a scan of the batch's companies' rows, which it chose
    // under load with the join form (126 ms a claim at concurrency 128;
    // BENCHMARKS.md). Rows are locked in id order, so two batches
    // never wait on each other in a cycle. The ticket is only read (its
    // sub-select keeps `LIMIT 1` so it stays a keyed lookup): a path that
    // closes a ticket (derive, cancel, delete) either writes this action,
    // and waits for the lock taken here, or leaves it alone, and either way
    // ends as if it had run just after this commit. A share lock on the
    // ticket added a write per claim and a lock-order cycle with
    // `derive_ticket` (ticket, then actions). The update
    // reaches each candidate by its key alone: `cand` is planned as one
    // row, so a second `a.id = ANY($1)` became the inner side of a nested
    // loop and read the whole batch once per candidate (64 x 64 index
    // entries, 20.7 ms for a batch of 64; 4.2 ms without it).
    let claimed: Vec<TicketAction> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH cand AS (
             SELECT a.id
             FROM (SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS r(action_id, company_id) ORDER BY action_id) r
             CROSS JOIN LATERAL (
                 SELECT a.id, a.ticket_id, a.integration_id FROM ticket_actions a
                 WHERE a.id = r.action_id AND a.company_id IS NOT DISTINCT FROM r.company_id
                   AND a.status IS NOT DISTINCT FROM 'PENDING' AND a.attempts < a.max_attempts
                 FOR UPDATE
             ) a
             CROSS JOIN LATERAL (
                 SELECT t.id FROM tickets t
                 WHERE t.id = a.ticket_id AND t.company_id IS NOT DISTINCT FROM r.company_id AND t.status IS NOT DISTINCT FROM 'PENDING'
                 LIMIT 1
             ) t
             LEFT JOIN integrations i ON i.id = a.integration_id AND i.company_id IS NOT DISTINCT FROM r.company_id
             WHERE a.integration_id IS NULL OR (
                 i.id IS NOT NULL
                 AND coalesce(i.extra_json -> 'max_concurrency', 'null') IN ('null', '0')
                 AND coalesce(i.extra_json -> 'rate_limit_per_sec', 'null') IN ('null', '0'))
         )
         UPDATE ticket_actions a
         SET status = 'RUNNING', attempts = a.attempts + 1, attempt_started_at = clock_timestamp(),
             started_at = coalesce(a.started_at, clock_timestamp()), next_attempt_at = NULL,
             slot_wait_since = NULL, updated_at = now()
         FROM cand
         WHERE a.id = cand.id
         RETURNING {returning}"
    )))
    .bind(&action_ids)
    .bind(&company_ids)
    .fetch_all(&mut *conn)
    .await?;
    let integration_ids: Vec<Uuid> = claimed.iter().filter_map(|a| a.integration_id).collect();
    let mut integrations: HashMap<Uuid, Integration> = HashMap::new();
    if !integration_ids.is_empty() {
        let rows: Vec<Integration> = sqlx::query_as(
            "SELECT id, company_id, provider, name, mode, keyvault_secret_id, extra_json, created_at, updated_at FROM integrations WHERE id = ANY($1)",
        )
        .bind(&integration_ids)
        .fetch_all(&mut *conn)
        .await?;
        integrations = rows.into_iter().map(|i| (i.id, i)).collect();
    }
    Ok(claimed
        .into_iter()
        .map(|action| {
            let integration = action
                .integration_id
                .and_then(|id| integrations.get(&id))
                .filter(|i| i.company_id == action.company_id)
                .cloned();
            let attempt = action.attempts;
            (
                action.id,
                Claimed {
                    action,
                    integration,
                    attempt,
                },
            )
        })
        .collect())
}

/// Undoes claims whose jobs were never run: each action still RUNNING with
/// the claimed attempt goes back to PENDING with that attempt uncounted
/// (and no start time, when it was the first). The worker's fetch claims a
/// batch ahead of its deliveries; at shutdown, the claims of the jobs it
/// hands back unrun are released with them, so a restart costs no attempt.
/// Returns how many were released. Call in a transaction scoped to the
/// claims' companies ([`crate::db::scope_tenants`]).
///
/// # Errors
/// Database failures.
pub async fn release_claims(conn: &mut PgConnection, claims: &[Claimed]) -> Result<u64, DbError> {
    if claims.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = claims.iter().map(|c| c.action.id).collect();
    let companies: Vec<Uuid> = claims.iter().map(|c| c.action.company_id).collect();
    let attempts: Vec<i32> = claims.iter().map(|c| c.attempt).collect();
    let released = sqlx::query(
        "UPDATE ticket_actions a
         SET status = 'PENDING', attempts = a.attempts - 1, attempt_started_at = NULL,
             started_at = CASE WHEN v.attempt = 1 THEN NULL ELSE a.started_at END, updated_at = now()
         FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS v(id, company_id, attempt)
         WHERE a.id = v.id AND a.company_id = v.company_id
           AND a.status IS NOT DISTINCT FROM 'RUNNING' AND a.attempts = v.attempt",
    )
    .bind(&ids)
    .bind(&companies)
    .bind(&attempts)
    .execute(&mut *conn)
    .await?;
    Ok(released.rows_affected())
}

/// One attempt's outcome for [`record_batch`].
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The action as claimed.
    pub action: TicketAction,
    /// The attempt number it was claimed with (the fence).
    pub attempt: i32,
    /// How the attempt ended.
    pub outcome: Outcome,
}

/// [`record_outcome`] for many attempts in one transaction (group commit).
/// Successes, the common case, are written set-based: one update of the
/// actions (the same compare-and-set on RUNNING and the attempt), one query
/// for the next actions and one push of their jobs, the slot wake-ups, one
/// settle of the finished tickets, and last one insert of the audit rows of
/// both the actions and the tickets, each planned once per connection and
/// by key ([`super::Plans::Keyed`]). Other outcomes go through
/// [`record_outcome`] one by one in the same transaction, their statements
/// planned per execution. The results come back in the order of `items`.
/// Call in a transaction from [`crate::db::begin_tenants`] naming every
/// item's company and planned by key: a batch of successes, the common
/// case, then changes no setting.
///
/// # Errors
/// Database failures (the caller's transaction then rolls back, and nothing
/// of the batch is written).
pub async fn record_batch(
    conn: &mut PgConnection,
    items: &[AttemptOutcome],
) -> Result<Vec<Recorded>, DbError> {
    let mut results: Vec<Option<Recorded>> = vec![None; items.len()];
    let mut successes: Vec<Success<'_>> = Vec::new();
    let mut keyed = true;
    for (index, item) in items.iter().enumerate() {
        match &item.outcome {
            Outcome::Succeeded { result } => successes.push(Success {
                index,
                action: &item.action,
                attempt: item.attempt,
                result: storable_json_ref(result),
            }),
            other => {
                if keyed {
                    super::plan(conn, super::Plans::PerExecution).await?;
                    keyed = false;
                }
                results[index] =
                    Some(record_outcome(conn, &item.action, item.attempt, other.clone()).await?);
            }
        }
    }
    if !successes.is_empty() {
        if !keyed {
            super::plan(conn, super::Plans::Keyed).await?;
        }
        let written = record_successes(conn, &successes).await?;
        for success in &successes {
            results[success.index] = Some(match written.get(&success.action.id) {
                Some(status) => Recorded::Written(*status),
                None => Recorded::Fenced,
            });
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Recorded::Fenced))
        .collect())
}

/// One success through [`record_successes`]: the same compare-and-set,
/// chaining and settling as a batch of one. `None`: fenced. The rest of the
/// transaction is planned by key.
async fn record_success(
    conn: &mut PgConnection,
    action: &TicketAction,
    attempt: i32,
    result: Cow<'_, serde_json::Value>,
) -> Result<Option<TicketStatus>, DbError> {
    super::plan(conn, super::Plans::Keyed).await?;
    let success = Success {
        index: 0,
        action,
        attempt,
        result,
    };
    let written = record_successes(conn, std::slice::from_ref(&success)).await?;
    Ok(written.get(&action.id).copied())
}

/// A succeeded attempt for [`record_successes`]: the item at `index` of its
/// batch, with its result ready to store.
struct Success<'a> {
    index: usize,
    action: &'a TicketAction,
    attempt: i32,
    result: Cow<'a, serde_json::Value>,
}

/// The set-based success path of [`record_batch`]; returns the ticket
/// status of every action written (absent: fenced).
async fn record_successes(
    conn: &mut PgConnection,
    successes: &[Success<'_>],
) -> Result<HashMap<Uuid, TicketStatus>, DbError> {
    let ids: Vec<Uuid> = successes.iter().map(|s| s.action.id).collect();
    let attempts: Vec<i32> = successes.iter().map(|s| s.attempt).collect();
    let payloads: Vec<&serde_json::Value> = successes.iter().map(|s| s.result.as_ref()).collect();
    // Every statement below reaches its rows by the keys the batch names:
    // each is planned once per connection, for any batch and table size
    // (the caller has the transaction planned `Plans::Keyed`).
    // The batch's updates join their rows by key alone. With a second
    // `a.id = ANY($1)` and statistics that say almost nothing is RUNNING
    // (a long finished history), the planner expected one row from the
    // table, made the `unnest` the inner side of a nested loop and read it
    // once per row: 204 x 204 comparisons, 10-20 ms a batch (BENCHMARKS.md).
    let written: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE ticket_actions a
         SET status = 'SUCCEEDED', result = v.result, last_error = NULL, finished_at = now(), updated_at = now()
         FROM unnest($1::uuid[], $2::int[], $3::jsonb[]) AS v(id, attempt, result)
         WHERE a.id = v.id AND a.status IS NOT DISTINCT FROM 'RUNNING' AND a.attempts = v.attempt
         RETURNING a.id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&payloads)
    .fetch_all(&mut *conn)
    .await?;
    let written: std::collections::HashSet<Uuid> = written.into_iter().collect();
    let actions: Vec<(&TicketAction, i32)> = successes
        .iter()
        .filter(|s| written.contains(&s.action.id))
        .map(|s| (s.action, s.attempt))
        .collect();
    if actions.is_empty() {
        return Ok(HashMap::new());
    }
    // The batch's audit rows, written together at the end.
    let mut audits: Vec<NewAuditEvent<'static>> = actions
        .iter()
        .map(|(a, attempt)| NewAuditEvent {
            company_id: a.company_id,
            actor_user_id: None,
            action: "action.succeeded",
            entity_type: "ticket_action",
            entity_id: Some(a.id),
            payload: json!({"ticket_id": a.ticket_id, "provider": a.provider, "action": a.action, "attempt": attempt}),
        })
        .collect();
    // One read of every action of the batch's tickets serves both what
    // follows: the chain (each ticket's next PENDING action after the one
    // that succeeded gets its job) and the settling of the tickets that have
    // no next action. It reaches the actions by the (ticket_id, position) key.
    let batch_tickets: Vec<(Uuid, Uuid)> = actions
        .iter()
        .map(|(a, _)| (a.company_id, a.ticket_id))
        .collect();
    let rows = read_ticket_actions(conn, &batch_tickets).await?;
    let by_ticket: HashMap<Uuid, &[ActionRow]> = rows
        .chunk_by(|x, y| x.ticket_id == y.ticket_id)
        .map(|run| (run[0].ticket_id, run))
        .collect();
    // The tickets that go on to a next action (one job each), not settled.
    let mut continuing = std::collections::HashSet::new();
    let mut next: Vec<(Uuid, Uuid, Uuid)> = Vec::new();
    for (a, _) in &actions {
        let following = by_ticket.get(&a.ticket_id).and_then(|run| {
            run.iter().find(|r| {
                r.company_id == a.company_id
                    && r.position > a.position
                    && r.status == ActionStatus::Pending
            })
        });
        if let Some(n) = following
            && continuing.insert(a.ticket_id)
        {
            next.push((a.ticket_id, a.company_id, n.id));
        }
    }
    if !next.is_empty() {
        let next_companies: Vec<Uuid> = next.iter().map(|n| n.1).collect();
        let backlogs = company_backlogs(conn, &next_companies).await?;
        let jobs: Vec<crate::jobs::ActionEnqueue> = next
            .iter()
            .map(
                |(ticket_id, company_id, action_id)| crate::jobs::ActionEnqueue {
                    job: ActionJob {
                        company_id: *company_id,
                        ticket_id: *ticket_id,
                        action_id: *action_id,
                    },
                    run_at: None,
                    backlog: backlogs.get(company_id).copied().unwrap_or(0),
                },
            )
            .collect();
        crate::jobs::enqueue_actions(conn, &jobs).await?;
    }
    // The actions have left RUNNING: their slots are free for the next waiters.
    let freed: Vec<(Uuid, Uuid)> = actions
        .iter()
        .filter_map(|(a, _)| a.integration_id.map(|i| (a.company_id, i)))
        .collect();
    limits::wake_slot_waiters(conn, &freed).await?;
    let settle: Vec<ActionRow> = rows
        .into_iter()
        .filter(|r| !continuing.contains(&r.ticket_id))
        .collect();
    let settled = settle_from_rows(conn, &settle, &mut audits).await?;
    insert_audit_events(conn, audits).await?;
    Ok(actions
        .iter()
        .map(|(a, _)| {
            (
                a.id,
                settled
                    .get(&a.ticket_id)
                    .copied()
                    .unwrap_or(TicketStatus::Pending),
            )
        })
        .collect())
}

/// [`settle_ticket`] for many `(company, ticket)` pairs: one read of their
/// actions, one update of the tickets that reach a terminal status, one
/// insert of their audit rows. Returns each ticket's derived status.
///
/// # Errors
/// Database failures.
pub async fn settle_tickets(
    conn: &mut PgConnection,
    tickets: &[(Uuid, Uuid)],
) -> Result<HashMap<Uuid, TicketStatus>, DbError> {
    if tickets.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = read_ticket_actions(conn, tickets).await?;
    let mut audits = Vec::new();
    let settled = settle_from_rows(conn, &rows, &mut audits).await?;
    insert_audit_events(conn, audits).await?;
    Ok(settled)
}

/// One action as [`settle_tickets`] and the success batch's chain see it.
#[derive(sqlx::FromRow)]
struct ActionRow {
    ticket_id: Uuid,
    company_id: Uuid,
    id: Uuid,
    position: i32,
    status: ActionStatus,
    last_error: Option<String>,
}

/// Every action of the `(company, ticket)` pairs, ordered by ticket and
/// position, reached by the `(ticket_id, position)` key.
///
/// Each ticket's actions are a lateral subquery that `OFFSET 0` keeps from
/// being merged into a join: before `ticket_actions` is first analysed, an
/// equality on `ticket_id` (which no unique index covers alone) is
/// estimated at 0.5 % of the table per value, and for a batch of tickets a
/// scan of the whole table looked cheaper than the key. In the benchmark,
/// after 120,000 tickets and no analyse yet, the read took 4.8 ms a call
/// instead of 0.3 (BENCHMARKS.md).
async fn read_ticket_actions(
    conn: &mut PgConnection,
    tickets: &[(Uuid, Uuid)],
) -> Result<Vec<ActionRow>, DbError> {
    let (companies, ticket_ids): (Vec<Uuid>, Vec<Uuid>) = tickets.iter().copied().unzip();
    Ok(sqlx::query_as(
        "SELECT a.ticket_id, a.company_id, a.id, a.position, a.status, a.last_error
         FROM (SELECT DISTINCT * FROM unnest($1::uuid[], $2::uuid[]) AS v(company_id, ticket_id)) v
         CROSS JOIN LATERAL (
             SELECT a.ticket_id, a.company_id, a.id, a.position, a.status, a.last_error
             FROM ticket_actions a
             WHERE a.ticket_id = v.ticket_id AND a.company_id IS NOT DISTINCT FROM v.company_id
             OFFSET 0
         ) a
         ORDER BY a.ticket_id, a.position",
    )
    .bind(&companies)
    .bind(&ticket_ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Derives each ticket's status from `rows` (all its actions, as
/// [`read_ticket_actions`] returns them) and writes the tickets that reach
/// a terminal status; their audit rows are added to `audits`, for the
/// caller to insert.
async fn settle_from_rows(
    conn: &mut PgConnection,
    rows: &[ActionRow],
    audits: &mut Vec<NewAuditEvent<'static>>,
) -> Result<HashMap<Uuid, TicketStatus>, DbError> {
    // Rows come ordered by ticket: one run of rows per ticket.
    let mut statuses = HashMap::new();
    let (mut ids, mut owners, mut new_statuses, mut reasons) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in rows.chunk_by(|x, y| x.ticket_id == y.ticket_id) {
        let (ticket_id, company_id) = (run[0].ticket_id, run[0].company_id);
        let view: Vec<(ActionStatus, Option<&str>)> = run
            .iter()
            .map(|r| (r.status, r.last_error.as_deref()))
            .collect();
        let (status, reason) = derive_ticket_status(&view);
        statuses.insert(ticket_id, status);
        if status.is_terminal() {
            ids.push(ticket_id);
            owners.push(company_id);
            new_statuses.push(status.as_str());
            reasons.push(reason);
        }
    }
    if ids.is_empty() {
        return Ok(statuses);
    }
    // Only the first transition to a terminal status writes (one outcome per ticket).
    let moved: Vec<(Uuid, Uuid, TicketStatus, Option<String>)> = sqlx::query_as(
        "UPDATE tickets t
         SET status = v.status, status_reason = v.reason, executed_at = now(), updated_at = now()
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS v(id, company_id, status, reason)
         WHERE t.id = v.id AND t.company_id IS NOT DISTINCT FROM v.company_id AND t.status IS NOT DISTINCT FROM 'PENDING'
         RETURNING t.id, t.company_id, t.status, t.status_reason",
    )
    .bind(&ids)
    .bind(&owners)
    .bind(&new_statuses)
    .bind(&reasons)
    .fetch_all(&mut *conn)
    .await?;
    audits.extend(
        moved
            .iter()
            .map(|(ticket_id, company_id, status, reason)| NewAuditEvent {
                company_id: *company_id,
                actor_user_id: None,
                action: "ticket.status_changed",
                entity_type: "ticket",
                entity_id: Some(*ticket_id),
                payload: json!({"from": TicketStatus::Pending, "to": status, "reason": reason}),
            }),
    );
    Ok(statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_is_made_storable_by_replacing_every_nul_character() {
        let result = json!({"rows": [{"host\u{0}": "a\u{0}b", "n": 1}], "ok": true});
        let Outcome::Succeeded { result } = (Outcome::Succeeded { result }).storable() else {
            panic!("the variant changed");
        };
        assert_eq!(
            result,
            json!({"rows": [{"host\u{FFFD}": "a\u{FFFD}b", "n": 1}], "ok": true})
        );
        assert_eq!(
            Outcome::Failed {
                error: "PAN-OS: \u{0}bad".into()
            }
            .storable(),
            Outcome::Failed {
                error: "PAN-OS: \u{FFFD}bad".into()
            }
        );
        let clean = Outcome::Derived {
            reason: "partial success".into(),
        };
        assert_eq!(clean.clone().storable(), clean);
    }
}
