//! The apalis queue as a whole, across tenants: depth for the worker's
//! gauges, the retention sweep that deletes finished job rows (apalis
//! itself never does), and the ack that records a job's end.
//!
//! `apalis.jobs` and `apalis.workers` carry no tenant data beyond ids and
//! sit outside row-level security; these functions run on the worker's own
//! connection, never inside a tenant transaction.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::DbError;

/// Counts of one queue's jobs by state, read in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueueStats {
    /// Jobs runnable now (pending, run time reached), not yet fetched.
    pub ready: i64,
    /// Jobs waiting for a later run time (retry backoff, snoozes).
    pub scheduled: i64,
    /// Jobs fetched by a worker (queued in its buffer or running).
    pub running: i64,
    /// How long the oldest ready job has been runnable, in seconds (0 when
    /// none is ready): the queue's wait, as a client feels it.
    pub oldest_ready_age_secs: f64,
}

/// Reads the depth of `queue`.
///
/// A job apalis may still retry (`Failed` with attempts left) counts as
/// ready, as apalis's own fetch treats it.
///
/// # Errors
/// Database failures.
pub async fn queue_stats(conn: &mut PgConnection, queue: &str) -> Result<QueueStats, DbError> {
    let (ready, scheduled, running, oldest): (i64, i64, i64, Option<f64>) = sqlx::query_as(
        // Two scans, each with exactly the predicate of a partial index
        // over live jobs only (apalis's fetch index; migration 0021's
        // live-lock index), so the cost follows the live work, not the
        // finished history the table keeps (one combined filter read the
        // whole table: 443 ms with 1,000,000 finished jobs).
        "WITH waiting AS (
             SELECT run_at FROM apalis.jobs
             WHERE job_type = $1 AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
         ), taken AS (
             SELECT 1 FROM apalis.jobs
             WHERE (status = 'Running' OR status = 'Queued') AND job_type = $1
         )
         SELECT (SELECT count(*) FROM waiting WHERE run_at <= now()),
                (SELECT count(*) FROM waiting WHERE run_at > now()),
                (SELECT count(*) FROM taken),
                (SELECT extract(epoch FROM now() - min(run_at))::float8 FROM waiting WHERE run_at <= now())",
    )
    .bind(queue)
    .fetch_one(conn)
    .await?;
    Ok(QueueStats {
        ready,
        scheduled,
        running,
        oldest_ready_age_secs: oldest.unwrap_or(0.0).max(0.0),
    })
}

/// The advisory lock (session level) that makes one process at a time run
/// the retention sweep. Its value is arbitrary but fixed (`"txdx:ret"` in
/// ASCII).
pub const RETENTION_LOCK_KEY: i64 = 0x7478_6478_3a72_6574;

/// The least silence before a worker row is deleted, whatever the job
/// retention: a live but stalled worker must find its row again (its fetched
/// jobs reference it).
pub const WORKER_ROW_RETENTION: Duration = Duration::from_secs(3600);

/// What one retention sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    /// Finished job rows deleted.
    pub jobs: u64,
    /// Worker rows deleted (long silent, no job left pointing at them).
    pub workers: u64,
}

/// One batch of the retention sweep: `$1` queue, `$2` retention in seconds,
/// `$3` batch size, `$4` the least job id created at the retention cutoff
/// ([`oldest_job_id_created_at`]).
///
/// Job ids are ULIDs, which sort by creation time, and a job finishes after
/// it is created: `id < $4` lets the primary key bound the scan to jobs
/// created before the cutoff, so a sweep reads the old rows only, however
/// much recent history the table holds (without it, every sweep read the
/// whole table: 660 ms with 1,000,000 recent finished jobs). Public so its
/// plan is tested.
pub const PURGE_FINISHED_JOBS_BATCH: &str = "DELETE FROM apalis.jobs WHERE id IN (
     SELECT id FROM apalis.jobs
     WHERE id < $4
       AND job_type = $1
       AND (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))
       AND coalesce(done_at, run_at) < now() - make_interval(secs => $2)
     LIMIT $3
     FOR UPDATE SKIP LOCKED)";

/// The least ULID (in its text form, as `apalis.jobs.id` holds it) of a job
/// created at `at`: every job created earlier has a smaller id.
#[must_use]
pub fn oldest_job_id_created_at(at: std::time::SystemTime) -> String {
    let millis = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    ulid::Ulid::from_parts(millis, 0).to_string()
}

/// Deletes `queue`'s finished job rows (`Done`, `Killed`, and `Failed` with
/// no attempt left) that finished more than `older_than` ago, `batch` rows
/// per statement so no statement holds many locks or runs long; then the
/// queue's worker rows silent for as long (and at least [`WORKER_ROW_RETENTION`])
/// that no job references any more.
///
/// Runs only if no other process is sweeping: answers `None` when the
/// [`RETENTION_LOCK_KEY`] lock is taken. The lock is held on a connection of
/// its own that is closed afterwards, so a failed sweep cannot leave it held.
///
/// # Errors
/// Database failures (rows deleted by earlier batches stay deleted).
pub async fn purge_finished_jobs(
    pool: &PgPool,
    queue: &str,
    older_than: Duration,
    batch: i64,
) -> Result<Option<Purged>, DbError> {
    let mut conn = pool.acquire().await?;
    // Closing the session is what releases the lock, on every path.
    conn.close_on_drop();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RETENTION_LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let older_than_secs = older_than.as_secs_f64();
    let created_before = oldest_job_id_created_at(
        std::time::SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(std::time::UNIX_EPOCH),
    );
    let mut purged = Purged::default();
    loop {
        let deleted = sqlx::query(PURGE_FINISHED_JOBS_BATCH)
            .bind(queue)
            .bind(older_than_secs)
            .bind(batch.max(1))
            .bind(&created_before)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        purged.jobs += deleted;
        if deleted < u64::try_from(batch.max(1)).unwrap_or(1) {
            break;
        }
    }
    purged.workers = sqlx::query(
        "DELETE FROM apalis.workers w
         WHERE w.worker_type = $1
           AND w.last_seen < now() - make_interval(secs => greatest($2, $3))
           AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
    )
    .bind(queue)
    .bind(older_than_secs)
    .bind(WORKER_ROW_RETENTION.as_secs_f64())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RETENTION_LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    Ok(Some(purged))
}

/// The end of one job, as apalis records it in its row: what
/// [`finish_jobs`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnd {
    /// The job's id (`apalis.jobs.id`).
    pub id: String,
    /// The attempt that ended (`attempts`).
    pub attempt: i32,
    /// apalis's status name: `Done`, `Failed` or `Killed`.
    pub status: String,
    /// apalis's serialised result, `{"Ok": ..}` or `{"Err": ".."}`
    /// (`last_result`).
    pub result: serde_json::Value,
}

impl JobEnd {
    /// The end apalis reports for a job, read as apalis-postgres's
    /// `handle_results` reads it: from the result's JSON form.
    ///
    /// # Errors
    /// A result that does not serialise, or whose attempt count is not a
    /// 32-bit integer (apalis's statement would refuse it too).
    pub fn of(result: &apalis_postgres::queries::ResultPayload) -> Result<Self, serde_json::Error> {
        use serde::de::Error as _;
        let mut value = serde_json::to_value(result)?;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let attempt = value
            .get("attempt")
            .and_then(serde_json::Value::as_i64)
            .and_then(|a| i32::try_from(a).ok())
            .ok_or_else(|| serde_json::Error::custom("attempt is not a 32-bit integer"))?;
        Ok(Self {
            id: value.get("task_id").map(text).unwrap_or_default(),
            attempt,
            status: value.get("status").map(text).unwrap_or_default(),
            result: value
                .get_mut("result")
                .map(serde_json::Value::take)
                .unwrap_or_default(),
        })
    }
}

/// Records the ends of jobs that `worker_id` holds: status, attempts, last
/// result and `done_at`, the row apalis-postgres's `handle_results` writes
/// for the same results. A job another worker holds now (its lock expired
/// and it was rescued) is left alone. Answers the number of rows written.
///
/// apalis-postgres's statement expands its results from one jsonb array and
/// locks the rows in a CTE ordered by id before updating them; here the
/// results arrive as arrays, sorted by id (a nested loop over them, the plan
/// for a batch of primary keys, locks in that order), and each row is found by its primary key and updated in one
/// step (a row has one `lock_by`, so no second worker's ack competes for
/// it).
///
/// Call in a transaction planned by key ([`super::Plans::Keyed`]: the
/// outcome batch's, or one from [`super::begin_planned`]), so the statement
/// is planned once per connection and by key. A plan PostgreSQL
/// reuses is made for the table as it was then: with hash joins allowed,
/// one made while `apalis.jobs` held a few rows read the whole table ever
/// after (under a steady 300 tickets/s, 8 ms and 487 buffers a call, more
/// than a core of PostgreSQL's time; BENCHMARKS.md). With only keyed
/// nested loops left, the kept plan reaches each job by its primary key at
/// any size.
///
/// # Errors
/// Database failures, as sqlx reports them (the apalis backend that calls
/// this hands them on in its own error type).
pub async fn finish_jobs<'a>(
    conn: &mut PgConnection,
    ends: impl IntoIterator<Item = &'a JobEnd>,
    worker_id: &str,
) -> Result<u64, sqlx::Error> {
    let mut sorted: Vec<&JobEnd> = ends.into_iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<&str> = sorted.iter().map(|e| e.id.as_str()).collect();
    let attempts: Vec<i32> = sorted.iter().map(|e| e.attempt).collect();
    let statuses: Vec<&str> = sorted.iter().map(|e| e.status.as_str()).collect();
    let results: Vec<&serde_json::Value> = sorted.iter().map(|e| &e.result).collect();
    let written = sqlx::query(
        "UPDATE apalis.jobs AS jobs
         SET status = e.status, attempts = e.attempt, last_result = e.result, done_at = now()
         FROM unnest($1::text[], $2::int4[], $3::text[], $4::jsonb[]) AS e(id, attempt, status, result)
         WHERE jobs.id = e.id AND jobs.lock_by = $5",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&results)
    .bind(worker_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(written)
}
