-- The queue fetch reads only due jobs, one priority at a time, and keeps
-- its plans (and the plan of the foreign-key check of each job it locks).
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
--    Here a recursive query walks the priorities downwards. Each step is one
--    index descent that finds the next priority and the run time of its
--    first claimable job (`since`); that priority's jobs are then read from
--    `since` to `now()`, so neither the scheduled jobs nor the entries of
--    jobs already taken (dead until a vacuum) are read twice. The outer
--    LIMIT stops the walk as soon as the batch is full: levels are produced,
--    and their jobs locked, only as they are read. Same contract as before:
--    same arguments, filter, order, columns set, SKIP LOCKED, primary-key
--    updates (migration 0021).
--
-- 2. Plans. The workers' sessions plan every statement at each execution
--    (plan_cache_mode = force_custom_plan, shared/src/db.rs), and that
--    includes the foreign-key check every locked job runs (`jobs.lock_by`
--    references `workers.id`): planned once per row, it was about half of a
--    256-job fetch. The function runs with `plan_cache_mode = auto`, so the
--    check and this statement keep their plans. A kept plan is made for no
--    particular values and may have been made while the table was small;
--    with sequential and bitmap scans off inside the function, the only
--    plans left are the index walks above, which suit any size. Measured
--    with pgbench, one client, force_custom_plan sessions: an empty fetch
--    0.23 -> 0.12 ms (BENCHMARKS.md).
--
-- A priority is never NULL any more. apalis-postgres writes 0 for a task
-- without one and reads NULL as 0, but `priority DESC` sorted NULLs first
-- and the walk skips them: rather than a separate scan for a case apalis
-- never writes, the column says so (existing NULLs become 0, as apalis
-- already showed them).
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
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
BEGIN
    RETURN QUERY
    WITH RECURSIVE levels (level, since) AS (
        (
            SELECT priority, run_at
            FROM apalis.jobs
            WHERE
                (
                    status = 'Pending'
                    OR (
                        status = 'Failed'
                        AND attempts < max_attempts
                    )
                )
                AND job_type = v_job_type
            ORDER BY priority DESC, run_at ASC
            LIMIT 1
        )
        UNION ALL
        SELECT next.priority, next.run_at
        FROM levels
        CROSS JOIN LATERAL (
            SELECT priority, run_at
            FROM apalis.jobs
            WHERE
                (
                    status = 'Pending'
                    OR (
                        status = 'Failed'
                        AND attempts < max_attempts
                    )
                )
                AND job_type = v_job_type
                AND priority < levels.level
            ORDER BY priority DESC, run_at ASC
            LIMIT 1
        ) AS next
    )
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = worker_id,
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
                AND job_type = v_job_type
                AND priority = levels.level
                AND run_at >= levels.since
                AND run_at < now()
            ORDER BY run_at ASC
            LIMIT v_job_count
            FOR UPDATE SKIP LOCKED
        ) AS due
        LIMIT v_job_count
    ))
    RETURNING j.*;
END;
$$;
