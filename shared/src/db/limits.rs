//! Per-integration limits, enforced in Postgres so they hold across every
//! worker process: `max_concurrency` (actions of the integration RUNNING at
//! once) and `rate_limit_per_sec` (attempts admitted in any one second).
//!
//! [`admit`](crate::db::limits::admit) runs inside the claim's tenant transaction, before the action is
//! marked RUNNING, under a transaction-scoped advisory lock on the
//! integration: claims of one integration are serialised, claims of different
//! integrations are not. A concurrency slot is the RUNNING row itself (freed
//! by the outcome's transaction, which also wakes the longest waiter with
//! [`wake_slot_waiter`](crate::db::limits::wake_slot_waiter)); the rate is a sliding log in
//! `integration_call_starts`.

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;

/// An integration's limits, from its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntegrationLimits {
    /// Actions RUNNING at once, across all workers.
    pub max_concurrency: Option<u32>,
    /// Attempts started in any one second, across all workers.
    pub rate_limit_per_sec: Option<u32>,
}

impl IntegrationLimits {
    /// Whether any limit is set (0 counts as unset: it would block for ever).
    pub fn is_unlimited(&self) -> bool {
        self.max_concurrency.is_none_or(|n| n == 0)
            && self.rate_limit_per_sec.is_none_or(|n| n == 0)
    }
}

/// Which limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_concurrency` actions of the integration are RUNNING.
    Concurrency {
        /// The limit.
        max: u32,
    },
    /// `rate_limit_per_sec` attempts started in the last second.
    Rate {
        /// The limit.
        per_sec: u32,
    },
}

impl LimitHit {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Concurrency { .. } => "max_concurrency",
            Self::Rate { .. } => "rate_limit_per_sec",
        }
    }
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Concurrency { max } => {
                write!(
                    f,
                    "the integration already runs {max} action(s) (max_concurrency)"
                )
            }
            Self::Rate { per_sec } => write!(
                f,
                "the integration started {per_sec} attempt(s) in the last second (rate_limit_per_sec)"
            ),
        }
    }
}

/// What [`admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The attempt may start; `at` is its start time (the rate log's entry).
    Admitted {
        /// When the attempt was admitted.
        at: DateTime<Utc>,
    },
    /// A limit is reached: try again at `retry_at`, without using an attempt.
    Refused {
        /// Which limit.
        limit: LimitHit,
        /// The earliest useful time to try again.
        retry_at: DateTime<Utc>,
    },
}

/// How long an action refused for concurrency waits before it asks again,
/// per `max_concurrency` actions already waiting ahead of it.
pub const BUSY_SNOOZE: Duration = Duration::from_secs(1);

/// The longest a refused action waits before it asks again.
pub const MAX_SNOOZE: Duration = Duration::from_secs(30);

/// Decides whether one more attempt of an action of `integration_id` may
/// start now, and if so records it (rate log). Call inside the claim's tenant
/// transaction, before marking the action RUNNING; the decision holds until
/// that transaction ends.
///
/// `action_id` is the action being claimed: a RUNNING row of its own (left by
/// a crashed attempt) is not counted against it. RUNNING rows whose attempt
/// started more than `stale_after` ago are taken as abandoned.
///
/// # Errors
/// Database failures.
pub async fn admit(
    conn: &mut PgConnection,
    company_id: Uuid,
    integration_id: Uuid,
    action_id: Uuid,
    limits: IntegrationLimits,
    stale_after: Duration,
) -> Result<Admission, DbError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('txdx-integration-limits:' || $1::text, 0))",
    )
    .bind(integration_id)
    .execute(&mut *conn)
    .await?;
    // Read after the lock: admissions of one integration get increasing times.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *conn)
        .await?;
    if let Some(max) = limits.max_concurrency.filter(|n| *n > 0) {
        let stale_before = now - chrono::Duration::from_std(stale_after).unwrap_or_default();
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ticket_actions WHERE company_id = $1 AND integration_id = $2 AND status = 'RUNNING' AND id <> $3 AND attempt_started_at > $4",
        )
        .bind(company_id)
        .bind(integration_id)
        .bind(action_id)
        .bind(stale_before)
        .fetch_one(&mut *conn)
        .await?;
        if running >= i64::from(max) {
            let waiting = waiting_actions(conn, company_id, integration_id, now).await?;
            let wait = BUSY_SNOOZE
                .saturating_mul(1 + u32::try_from(waiting / i64::from(max)).unwrap_or(u32::MAX));
            return Ok(Admission::Refused {
                limit: LimitHit::Concurrency { max },
                retry_at: now + chrono_duration(wait.min(MAX_SNOOZE)),
            });
        }
    }
    if let Some(per_sec) = limits.rate_limit_per_sec.filter(|n| *n > 0) {
        sqlx::query(
            "DELETE FROM integration_call_starts WHERE company_id = $1 AND integration_id = $2 AND started_at <= $3 - interval '1 second'",
        )
        .bind(company_id)
        .bind(integration_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let (started, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT count(*), min(started_at) FROM integration_call_starts WHERE company_id = $1 AND integration_id = $2",
        )
        .bind(company_id)
        .bind(integration_id)
        .fetch_one(&mut *conn)
        .await?;
        if started >= i64::from(per_sec) {
            // The oldest start leaves the window a second after it began;
            // those already waiting go first, `per_sec` to each later second.
            let waiting = waiting_actions(conn, company_id, integration_id, now).await?;
            let queue =
                Duration::from_secs(u64::try_from(waiting / i64::from(per_sec)).unwrap_or(0));
            let free_at = oldest.unwrap_or(now) + chrono::Duration::seconds(1);
            return Ok(Admission::Refused {
                limit: LimitHit::Rate { per_sec },
                retry_at: free_at + chrono_duration(queue.min(MAX_SNOOZE)),
            });
        }
        sqlx::query(
            "INSERT INTO integration_call_starts (company_id, integration_id, started_at) VALUES ($1, $2, $3)",
        )
        .bind(company_id)
        .bind(integration_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Admission::Admitted { at: now })
}

/// Makes the job of the integration's longest-waiting action (refused for
/// `max_concurrency`) runnable now and wakes the workers, so a freed slot is
/// taken at once rather than when that action's snooze ends. Call in the
/// transaction that moves an action of the integration out of RUNNING;
/// returns whether a waiter was woken. The waiter still goes through its
/// claim: if another action took the slot first, it waits again, first in line.
///
/// # Errors
/// Database failures.
pub async fn wake_slot_waiter(
    conn: &mut PgConnection,
    company_id: Uuid,
    integration_id: Uuid,
) -> Result<bool, DbError> {
    Ok(wake_slot_waiters(conn, &[(company_id, integration_id)]).await? > 0)
}

/// [`wake_slot_waiter`] for many `(company, integration)` pairs with two
/// statements in all; returns how many waiters were woken.
///
/// # Errors
/// Database failures.
pub async fn wake_slot_waiters(
    conn: &mut PgConnection,
    integrations: &[(Uuid, Uuid)],
) -> Result<usize, DbError> {
    if integrations.is_empty() {
        return Ok(0);
    }
    let (companies, ids): (Vec<Uuid>, Vec<Uuid>) = integrations.iter().copied().unzip();
    // The jobs are reached by their primary key alone. `status = 'Pending'`
    // would let the queue's partial fetch index scan every job due later
    // (`run_at > now()`) instead, a plan that the outcome batch, which plans
    // this once per connection ([`super::Plans::Keyed`]), would keep as
    // retries and snoozes pile up.
    let woken: Vec<(String, String)> = sqlx::query_as(
        "UPDATE apalis.jobs j SET run_at = now()
         WHERE j.id = ANY (ARRAY(
             SELECT w.job_id
             FROM (SELECT DISTINCT * FROM unnest($1::uuid[], $2::uuid[]) AS v(company_id, integration_id)) v
             CROSS JOIN LATERAL (
                 SELECT job_id FROM ticket_actions
                 WHERE company_id = v.company_id AND integration_id = v.integration_id AND status IS NOT DISTINCT FROM 'PENDING'
                   AND slot_wait_since IS NOT NULL AND job_id IS NOT NULL
                 ORDER BY slot_wait_since
                 LIMIT 1
             ) w
         ))
           AND j.status IS NOT DISTINCT FROM 'Pending' AND j.run_at > now()
         RETURNING j.id, j.job_type",
    )
    .bind(&companies)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    if woken.is_empty() {
        return Ok(0);
    }
    let (job_ids, job_types): (Vec<String>, Vec<String>) = woken.into_iter().unzip();
    // The notification apalis-postgres's own insert trigger sends: the
    // workers' listeners fetch at once (delivered at commit).
    sqlx::query("SELECT pg_notify('apalis::job::insert', json_build_object('job_type', t, 'id', i)::text) FROM unnest($1::text[], $2::text[]) AS x(t, i)")
        .bind(&job_types)
        .bind(&job_ids)
        .execute(conn)
        .await?;
    Ok(job_ids.len())
}

/// Actions of the integration already told to wait (PENDING with a later
/// run time): a refused action queues behind them.
async fn waiting_actions(
    conn: &mut PgConnection,
    company_id: Uuid,
    integration_id: Uuid,
    now: DateTime<Utc>,
) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM ticket_actions WHERE company_id = $1 AND integration_id = $2 AND status = 'PENDING' AND next_attempt_at > $3",
    )
    .bind(company_id)
    .bind(integration_id)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
