-- apalis-postgres's insert trigger notifies the workers of a new job only
-- when `NEW.run_at <= now()`, and `now()` is the time the inserting
-- transaction began. A job's `run_at` is the api's clock when it builds the
-- insert, in whole seconds. A transaction that began before a second's
-- boundary and inserted its job after it gave the job a `run_at` later
-- than `now()`: no notification, and the job waited for a worker's
-- fallback tick (100 ms by default; one ticket in twenty waited 18 s in a
-- worker test whose tick was 20 s). The longer a ticket's transaction, the
-- likelier: a loaded machine made it common.
--
-- The job is due when its `run_at` is not after the insert itself
-- (`clock_timestamp()`). The payload is apalis's own. apalis's setup runs
-- before our migrations and replaces this function only in a migration
-- of its own, which `shared/tests/queue.rs` would catch.
CREATE OR REPLACE FUNCTION apalis.notify_new_jobs() RETURNS TRIGGER AS $$
BEGIN
    IF NEW.run_at <= clock_timestamp() THEN
        PERFORM pg_notify(
            'apalis::job::insert',
            json_build_object(
                'job_type', NEW.job_type,
                'id', NEW.id,
                'run_at', NEW.run_at
            )::text
        );
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
