-- The queue fetch reads only due jobs, one priority at a time, and the
-- foreign-key check of each job it locks reuses its plan.
--
-- 1. The fetch wants the claimable jobs with `run_at < now()`, ordered by
--    `priority DESC, run_at ASC`. Its index is apalis-postgres's
--    (job_type, priority DESC, run_at ASC) over claimable jobs. In one scan
--    ordered by that key, `run_at < now()` bounds nothing once a priority
--    has been passed: every scheduled job (a retry's backoff, a snooze, a
--    job pushed for later) of every priority the scan crosses is read and
--    discarded. With 100,000 jobs scheduled for the next day, a fetch that
--    found one due job read all 100,000 entries: about 10 ms a call, 620
--    buffers (BENCHMARKS.md, the history run).
--    Here a recursive query walks the priorities downwards, one index
--    descent each (`max(priority) .. WHERE priority < level`), and each
--    priority gets a scan of its own bounded by
--    (job_type, priority, run_at < now()); the outer LIMIT stops the walk
--    as soon as the batch is full (the levels are produced, and their jobs
--    locked, only as they are read). Scheduled jobs cost nothing. Same
--    contract as before: same arguments, filter, order, columns set, SKIP
--    LOCKED, primary-key updates (migration 0021).
--    It is one statement, not a PL/pgSQL loop of statements: the workers'
--    sessions plan every statement at each execution (plan_cache_mode =
--    force_custom_plan, shared/src/db.rs), and a drain's fetch crossing a
--    few dozen sparse priorities spent more on planning its loop than the
--    old scan cost.
--
-- 2. `jobs.lock_by` references `workers.id`, so every job the fetch locks
--    runs the foreign-key check (`SELECT 1 FROM workers WHERE id = $1 FOR
--    KEY SHARE`). Under force_custom_plan that check was planned again for
--    each row: about half of a 256-job fetch's time. The function runs with
--    `plan_cache_mode = auto`, so the check's plan is kept; its own query is
--    an `EXECUTE`, which is planned at every call with the call's values
--    whatever the mode, as before.
--
-- A priority is never NULL any more. apalis-postgres writes 0 for a task
-- without one and reads NULL as 0, but `priority DESC` sorted NULLs first
-- and `max(priority)` skips them: rather than a separate scan for a case
-- apalis never writes, the column says so (existing NULLs become 0, as
-- apalis already showed them).
UPDATE apalis.jobs SET priority = 0 WHERE priority IS NULL;
ALTER TABLE apalis.jobs ALTER COLUMN priority SET NOT NULL;

CREATE OR REPLACE FUNCTION apalis.get_jobs(
    worker_id TEXT,
    v_job_type TEXT,
    v_job_count INTEGER DEFAULT 5
)
RETURNS SETOF apalis.jobs
LANGUAGE plpgsql
VOLATILE
SET plan_cache_mode = auto
AS $$
BEGIN
    RETURN QUERY EXECUTE $q$
    WITH RECURSIVE levels (level) AS (
        SELECT max(priority)
        FROM apalis.jobs
        WHERE
            (
                status = 'Pending'
                OR (
                    status = 'Failed'
                    AND attempts < max_attempts
                )
            )
            AND job_type = $2
        UNION ALL
        SELECT (
            SELECT max(priority)
            FROM apalis.jobs
            WHERE
                (
                    status = 'Pending'
                    OR (
                        status = 'Failed'
                        AND attempts < max_attempts
                    )
                )
                AND job_type = $2
                AND priority < levels.level
        )
        FROM levels
        WHERE levels.level IS NOT NULL
    )
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = $1,
        lock_at = now()
    WHERE j.id = ANY (ARRAY(
        SELECT due.id
        FROM levels
        CROSS JOIN LATERAL (
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
                AND job_type = $2
                AND priority = levels.level
                AND run_at < now()
            ORDER BY run_at ASC
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        ) AS due
        LIMIT $3
    ))
    RETURNING j.*$q$
    USING worker_id, v_job_type, v_job_count;
END;
$$;
