//! The queue contract between api and worker: the job payload and the
//! functions that enqueue it inside the caller's transaction.
//!
//! Jobs go into apalis-postgres's `apalis.jobs` table in the caller's
//! transaction, so a job commits or rolls back with its ticket. Action jobs
//! go by our own insert of apalis's row
//! ([`ActionJobRows`](crate::jobs::ActionJobRows), which can be part of a
//! larger statement), connection tests by
//! `apalis_postgres::queries::push_tasks`.

use apalis::prelude::{TaskBuilder, TaskId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, postgres::PgArguments};
use uuid::Uuid;

use crate::db::{ArrayInsert, DbError, bind_next, execute_insert};

/// The apalis queue (`job_type`) that carries ticket actions.
pub const ACTION_QUEUE: &str = "txdx::ticket_action";

/// Attempts apalis itself may make of one job. Provider retries are ours
/// (each attempt is a new job scheduled at its backoff time); this bound
/// only covers infrastructure failures such as the database going away
/// while an outcome is recorded.
pub const QUEUE_MAX_ATTEMPTS: usize = 25;

/// One attempt of one ticket action, as carried by the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionJob {
    /// The tenant: the worker scopes every query to it.
    pub company_id: Uuid,
    /// The ticket.
    pub ticket_id: Uuid,
    /// The action to run.
    pub action_id: Uuid,
}

/// Pushes one job for `job` runnable at `run_at` (now when `None`), with a
/// priority that favours companies with little queued work, and records the
/// job id on the action. Runs on the caller's connection or transaction.
///
/// # Errors
/// When the insert fails; inside a transaction the caller rolls back.
pub async fn enqueue_action(
    conn: &mut PgConnection,
    job: &ActionJob,
    run_at: Option<DateTime<Utc>>,
    backlog: i64,
) -> Result<String, DbError> {
    let mut ids = enqueue_actions(
        conn,
        &[ActionEnqueue {
            job: job.clone(),
            run_at,
            backlog,
        }],
    )
    .await?;
    ids.pop().ok_or_else(|| DbError::Invalid {
        field: "job".into(),
        message: "no job id was returned".into(),
    })
}

/// One job to push with [`enqueue_actions`].
#[derive(Debug, Clone)]
pub struct ActionEnqueue {
    /// The payload.
    pub job: ActionJob,
    /// When it may run (now when `None`), rounded up by [`queue_run_at`].
    pub run_at: Option<DateTime<Utc>>,
    /// The company's backlog, for [`fair_priority`].
    pub backlog: i64,
}

/// A fresh queue job id. apalis-postgres decodes job ids as ULIDs.
pub fn new_job_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Pushes many jobs with one insert and records each job id on its action
/// with one update; the job ids come back in the order of `jobs`.
///
/// # Errors
/// When a statement fails; inside a transaction the caller rolls back.
pub async fn enqueue_actions(
    conn: &mut PgConnection,
    jobs: &[ActionEnqueue],
) -> Result<Vec<String>, DbError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let job_ids: Vec<String> = jobs.iter().map(|_| new_job_id()).collect();
    push_action_jobs(conn, &job_ids, jobs).await?;
    let action_ids: Vec<Uuid> = jobs.iter().map(|j| j.job.action_id).collect();
    sqlx::query(
        "UPDATE ticket_actions a SET job_id = v.job_id, updated_at = now() FROM unnest($1::uuid[], $2::text[]) AS v(action_id, job_id) WHERE a.id = ANY($1) AND a.id = v.action_id",
    )
    .bind(&action_ids)
    .bind(&job_ids)
    .execute(&mut *conn)
    .await?;
    Ok(job_ids)
}

/// Pushes one job per item of `jobs` with the id at the same index of
/// `job_ids`, in one insert, and nothing else: for callers that record each
/// job id on its action themselves.
///
/// # Errors
/// When the insert fails, or the two slices differ in length.
pub async fn push_action_jobs(
    conn: &mut PgConnection,
    job_ids: &[String],
    jobs: &[ActionEnqueue],
) -> Result<(), DbError> {
    let rows = ActionJobRows::new(job_ids, jobs)?;
    if jobs.is_empty() {
        return Ok(());
    }
    execute_insert(conn, &rows).await
}

/// New action jobs as the arrays of one insert into apalis's table
/// ([`ArrayInsert`]).
///
/// The row is the one `apalis_postgres::queries::push_tasks` writes (its
/// `sink.sql`): `Pending`, no attempts, empty metadata, no idempotency key.
/// A job due now gets the transaction's `now()` (apalis's own insert uses
/// the client's clock in whole seconds); a later one its time rounded up
/// by [`queue_run_at`].
#[derive(Debug, Default)]
pub struct ActionJobRows {
    ids: Vec<String>,
    payloads: Vec<Vec<u8>>,
    run_at: Vec<Option<i64>>,
    priorities: Vec<i32>,
}

impl ActionJobRows {
    /// The rows of `jobs`, the id of each at the same index of `job_ids`.
    ///
    /// # Errors
    /// When the two slices differ in length.
    pub fn new(job_ids: &[String], jobs: &[ActionEnqueue]) -> Result<Self, DbError> {
        if job_ids.len() != jobs.len() {
            return Err(DbError::Invalid {
                field: "job".into(),
                message: format!("{} job ids for {} jobs", job_ids.len(), jobs.len()),
            });
        }
        let mut rows = Self::default();
        for (id, item) in job_ids.iter().zip(jobs) {
            rows.ids.push(id.clone());
            rows.payloads
                .push(serde_json::to_vec(&item.job).map_err(|e| DbError::Invalid {
                    field: "job".into(),
                    message: e.to_string(),
                })?);
            rows.run_at
                .push(item.run_at.map(|at| queue_run_at(at).timestamp()));
            rows.priorities
                .push(i32::try_from(fair_priority(item.backlog)).unwrap_or(0));
        }
        Ok(rows)
    }
}

impl ArrayInsert for ActionJobRows {
    fn bind_insert(&self, args: &mut PgArguments) -> Result<String, DbError> {
        let ids = bind_next(args, &self.ids, "text[]")?;
        let payloads = bind_next(args, &self.payloads, "bytea[]")?;
        let run_at = bind_next(args, &self.run_at, "int8[]")?;
        let priorities = bind_next(args, &self.priorities, "int4[]")?;
        Ok(format!(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
             SELECT v.id, '{ACTION_QUEUE}', v.job, 'Pending', 0, {QUEUE_MAX_ATTEMPTS}, coalesce(to_timestamp(v.run_at), now()), v.priority, ''::hstore
             FROM unnest({ids}, {payloads}, {run_at}, {priorities}) AS v(id, job, run_at, priority)"
        ))
    }
}

/// The apalis queue that carries integration connection tests.
pub const CHECK_QUEUE: &str = "txdx::integration_check";

/// One connection test of one integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckJob {
    /// The tenant.
    pub company_id: Uuid,
    /// The `integration_checks` row to complete.
    pub check_id: Uuid,
}

/// Pushes a connection test in the caller's transaction, ahead of actions.
///
/// # Errors
/// When the insert fails.
pub async fn enqueue_check(conn: &mut PgConnection, job: &CheckJob) -> Result<(), DbError> {
    let args = serde_json::to_vec(job).map_err(|e| DbError::Invalid {
        field: "job".into(),
        message: e.to_string(),
    })?;
    let task = TaskBuilder::new(args)
        .task_id(TaskId::from_string(new_job_id()))
        .max_attempts(3)
        .build();
    apalis_postgres::queries::push_tasks(&mut *conn, CHECK_QUEUE, vec![task])
        .await
        .map_err(|e| match e {
            apalis_postgres::Error::Database(db) => DbError::from(db),
            other => DbError::Invalid {
                field: "job".into(),
                message: other.to_string(),
            },
        })
}

/// The run time a job for `at` actually gets: apalis stores whole seconds, so
/// `at` is rounded *up*; a retry or a snooze never runs before its time.
pub fn queue_run_at(at: DateTime<Utc>) -> DateTime<Utc> {
    let whole = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
    DateTime::from_timestamp(whole, 0).unwrap_or(at)
}

/// Queue priority from a company's backlog (its actions not yet finished).
///
/// apalis fetches by `priority DESC, run_at ASC`: a company with a small
/// backlog jumps ahead of one with thousands queued, so one tenant's flood
/// cannot make every other tenant wait behind it.
pub fn fair_priority(backlog: i64) -> usize {
    const TOP: i64 = 1000;
    usize::try_from((TOP - backlog.clamp(0, TOP)).max(0)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_round_up_to_whole_seconds() {
        let at = DateTime::from_timestamp(1_700_000_000, 1_000_000).unwrap();
        assert_eq!(queue_run_at(at).timestamp(), 1_700_000_001);
        let whole = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(queue_run_at(whole), whole);
    }

    #[test]
    fn a_smaller_backlog_gets_a_higher_priority() {
        assert!(fair_priority(0) > fair_priority(10));
        assert!(fair_priority(10) > fair_priority(500));
        assert_eq!(fair_priority(5000), 0);
        assert_eq!(fair_priority(-3), 1000);
    }
}
