-- Per-integration limits (settings `max_concurrency` and `rate_limit_per_sec`),
-- enforced by the worker's claim transaction across every worker process.
--
-- Concurrency needs no table of its own: an action holds a slot of its
-- integration while it is RUNNING. The claim counts the integration's RUNNING
-- actions under a per-integration transaction lock before it marks one more;
-- the outcome's transaction frees the slot as it leaves RUNNING.
-- `attempt_started_at` dates the current attempt, so a RUNNING row left by a
-- worker that died and was never rescued stops holding its slot after the
-- orphan window plus the action timeout.
ALTER TABLE ticket_actions ADD COLUMN attempt_started_at timestamptz;
-- Set when a claim is refused for `max_concurrency` (kept across repeated
-- refusals, cleared by the claim that runs it): when an action of the
-- integration leaves RUNNING, the longest-waiting one is woken at once
-- instead of sleeping out its snooze.
ALTER TABLE ticket_actions ADD COLUMN slot_wait_since timestamptz;

-- The claim's count: a limited integration's RUNNING (and waiting PENDING)
-- actions, without reading its finished history.
CREATE INDEX ticket_actions_integration_active_idx ON ticket_actions (integration_id, status)
    WHERE status IN ('PENDING', 'RUNNING');

-- The rate limiter's sliding log: one row per attempt admitted in the last
-- second for an integration with `rate_limit_per_sec`. An attempt is admitted
-- only while fewer than the limit started in the second before it, so no
-- one-second window (aligned or not) holds more starts than the limit. Rows
-- older than a second are deleted by the next admission of the same
-- integration, so the table holds at most `rate_limit_per_sec` rows per
-- integration.
CREATE TABLE integration_call_starts (
    company_id      uuid        NOT NULL,
    integration_id  uuid        NOT NULL,
    started_at      timestamptz NOT NULL,
    -- Same company as the integration; removed with it.
    CONSTRAINT integration_call_starts_integration_fkey FOREIGN KEY (company_id, integration_id)
        REFERENCES integrations (company_id, id) ON DELETE CASCADE,
    -- Two admissions of one integration never share a timestamp: they are
    -- serialised by the claim's per-integration lock and read clock_timestamp().
    CONSTRAINT integration_call_starts_pkey PRIMARY KEY (integration_id, started_at)
);

-- Tenant data like the rest: the claim runs as txdx_app with the job's
-- company set, and sees and writes only that company's rows.
ALTER TABLE integration_call_starts ENABLE ROW LEVEL SECURITY;
ALTER TABLE integration_call_starts FORCE ROW LEVEL SECURITY;
CREATE POLICY integration_call_starts_tenant_isolation ON integration_call_starts
    USING (company_id = nullif(current_setting('app.company_id', true), '')::uuid)
    WITH CHECK (company_id = nullif(current_setting('app.company_id', true), '')::uuid);
GRANT SELECT, INSERT, DELETE ON integration_call_starts TO txdx_app;
