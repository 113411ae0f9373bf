//! Ticket actions as the worker sees them: claim an attempt, then record its
//! outcome with the ticket's derived status and an audit row, in one
//! transaction, fenced by a compare-and-set on (status, attempts).
//!
//! A claim refused by its integration's limits is *snoozed*: the action stays
//! PENDING with its attempts unchanged and a new job runs it later, so a
//! limit never uses up an attempt and never fails an action.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    DbError,
    audit::{NewAuditEvent, insert_audit_event},
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
    let owned: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM ticket_actions WHERE id = $1 AND status = 'RUNNING' AND attempts = $2 FOR UPDATE",
    )
    .bind(action.id)
    .bind(attempt)
    .fetch_optional(&mut *conn)
    .await?;
    if owned.is_none() {
        return Ok(Recorded::Fenced);
    }
    finish_action(conn, action, attempt, outcome.storable())
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
            sqlx::query("UPDATE ticket_actions SET status = 'SUCCEEDED', result = $2, last_error = NULL, finished_at = now(), updated_at = now() WHERE id = $1")
                .bind(action.id)
                .bind(result)
                .execute(&mut *conn)
                .await?;
            insert_audit_event(conn, audit("action.succeeded", base.clone())).await?;
            // Chain: the next action in position order gets its job now.
            let next: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM ticket_actions WHERE ticket_id = $1 AND company_id = $2 AND position > $3 AND status = 'PENDING' ORDER BY position LIMIT 1",
            )
            .bind(action.ticket_id)
            .bind(action.company_id)
            .bind(action.position)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(next_id) = next {
                let backlog = company_backlog(conn, action.company_id).await?;
                enqueue_action(
                    conn,
                    &ActionJob {
                        action_id: next_id,
                        ..job
                    },
                    None,
                    backlog,
                )
                .await?;
            }
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
            sqlx::query("UPDATE ticket_actions SET status = 'CANCELLED', last_error = 'not run: an earlier action did not succeed', finished_at = now(), updated_at = now() WHERE ticket_id = $1 AND company_id = $2 AND position > $3 AND status = 'PENDING'")
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
    let rows: Vec<(ActionStatus, Option<String>)> = sqlx::query_as(
        "SELECT status, last_error FROM ticket_actions WHERE ticket_id = $1 AND company_id = $2 ORDER BY position",
    )
    .bind(ticket_id)
    .bind(company_id)
    .fetch_all(&mut *conn)
    .await?;
    let view: Vec<(ActionStatus, Option<&str>)> =
        rows.iter().map(|(s, e)| (*s, e.as_deref())).collect();
    let (status, reason) = derive_ticket_status(&view);
    if !status.is_terminal() {
        return Ok(status);
    }
    // Only the first transition to a terminal status writes (one outcome per ticket).
    let moved = sqlx::query(
        "UPDATE tickets SET status = $3, status_reason = $4, executed_at = now(), updated_at = now() WHERE id = $1 AND company_id = $2 AND status = 'PENDING'",
    )
    .bind(ticket_id)
    .bind(company_id)
    .bind(status)
    .bind(&reason)
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() == 1 {
        insert_audit_event(
            conn,
            NewAuditEvent {
                company_id,
                actor_user_id: None,
                action: "ticket.status_changed",
                entity_type: "ticket",
                entity_id: Some(ticket_id),
                payload: json!({"from": TicketStatus::Pending, "to": status, "reason": reason}),
            },
        )
        .await?;
    }
    Ok(status)
}

/// Actions of the company not yet finished: the fairness input for job priority.
///
/// # Errors
/// Database failures.
pub async fn company_backlog(conn: &mut PgConnection, company_id: Uuid) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM ticket_actions WHERE company_id = $1 AND status IN ('PENDING', 'RUNNING')",
    )
    .bind(company_id)
    .fetch_one(conn)
    .await?)
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
