-- apalis-postgres's queue statements, made to find rows by primary key so
-- their cost does not grow with the history the table keeps.
--
-- 1. `get_jobs` (the fetch) joins the candidate ids back to apalis.jobs with
--    `UPDATE .. FROM (CTE)`; the planner, which cannot see how few ids the CTE
--    yields, may hash-join over the whole table. Locking the candidates by
--    `id = ANY (ARRAY(..))` makes every update a primary-key lookup (measured
--    in BENCHMARKS.md: a fetch of 8 jobs over 50,000 rows, 38 ms -> 0.7 ms).
--    Same contract as apalis's own: same arguments, same filter and order,
--    the same columns set, SKIP LOCKED.
CREATE OR REPLACE FUNCTION apalis.get_jobs(
    worker_id TEXT,
    v_job_type TEXT,
    v_job_count INTEGER DEFAULT 5
)
RETURNS SETOF apalis.jobs
LANGUAGE sql
VOLATILE
AS $$
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = worker_id,
        lock_at = now()
    WHERE j.id = ANY (ARRAY(
        SELECT id
        FROM apalis.jobs
        WHERE
            (
                status = 'Pending'
                OR (
                    status = 'Failed'
                    AND attempts < max_attempts
                )
            )
            AND run_at < now()
            AND job_type = v_job_type
        ORDER BY priority DESC, run_at ASC
        LIMIT v_job_count
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING j.*;
$$;

-- 2. The ack (`handle_result.sql`) and the heartbeat both name the job ids
--    *and* `lock_by = worker`. Finished jobs keep their `lock_by`, so with an
--    index on lock_by the planner may read every row a worker has ever
--    finished to ack a handful. A partial index over live locks only still
--    serves the orphan rescue (which filters on exactly these statuses) and
--    leaves the ack and the heartbeat to the primary key.
--    (apalis's first migration made one too, `lidx`, which its later
--    "streamline" migration left behind.)
CREATE INDEX IF NOT EXISTS idx_apalis_jobs_live_lock_by ON apalis.jobs (lock_by)
    WHERE status = 'Running' OR status = 'Queued';
DROP INDEX IF EXISTS apalis.idx_apalis_jobs_lock_by;
DROP INDEX IF EXISTS apalis.lidx;

-- 3. Duplicates that every insert and update maintains for nothing: the same
--    unique index on jobs.id as the primary key, and copies of the workers'
--    indexes the streamline migration created again under new names.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.wtidx;
DROP INDEX IF EXISTS apalis.lsidx;
