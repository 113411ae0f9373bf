-- The queue fetch reads only due jobs, one priority at a time.
--
-- The fetch wants the claimable jobs with `run_at < now()`, ordered by
-- `priority DESC, run_at ASC`. Its index is apalis-postgres's
-- (job_type, priority DESC, run_at ASC) over claimable jobs. In one scan
-- ordered by that key, `run_at < now()` bounds nothing once a priority has
-- been passed: every scheduled job (a retry's backoff, a snooze, a job
-- pushed for later) of every priority the scan crosses is read and
-- discarded. With 100,000 jobs scheduled for the next day, a fetch that
-- found one due job read all 100,000 entries: about 10 ms a call, 620
-- buffers (BENCHMARKS.md, the history run).
--
-- Here each priority gets a scan of its own, bounded by
-- (job_type, priority, run_at < now()), and the next priority down is found
-- with one descent of the same index (`max(priority) .. WHERE priority <
-- level`). A fetch reads its due jobs, plus about two index descents per
-- priority it crosses: scheduled jobs cost nothing. Same contract as
-- before: same arguments, filter, order, columns set, SKIP LOCKED,
-- primary-key updates (migration 0021), PL/pgSQL (0024).
--
-- A priority is never NULL any more. apalis-postgres writes 0 for a task
-- without one and reads NULL as 0, but `priority DESC` sorted NULLs first
-- and `max(priority)` skips them: rather than a third statement for a case
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
AS $$
DECLARE
    -- No count means no limit, as `LIMIT NULL` did.
    wanted INTEGER := coalesce(v_job_count, 2147483647);
    taken INTEGER;
    level INTEGER;
    -- Priorities below this one are left to visit: at first, every INTEGER.
    above BIGINT := 2147483648;
BEGIN
    LOOP
        SELECT max(priority) INTO level
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
            AND priority < above;
        EXIT WHEN level IS NULL;

        RETURN QUERY
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
                AND job_type = v_job_type
                AND priority = level
                AND run_at < now()
            ORDER BY run_at ASC
            LIMIT wanted
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING j.*;
        GET DIAGNOSTICS taken = ROW_COUNT;
        wanted := wanted - taken;
        EXIT WHEN wanted <= 0;
        above := level;
    END LOOP;
END;
$$;
