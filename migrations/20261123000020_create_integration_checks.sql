-- Connection tests of integrations (POST /api/integrations/{id}/test). The
-- api records a check and queues it; a worker, which has the network path to
-- the provider, makes the provider's cheapest authenticated call and writes
-- the outcome here, where the api reads it back.
CREATE TABLE integration_checks (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id      uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    integration_id  uuid        NOT NULL,
    status          text        NOT NULL DEFAULT 'PENDING' CONSTRAINT integration_checks_status_check CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    -- transient | permanent | needs_human, when FAILED.
    error_kind      text,
    error           text,
    -- What the provider answered (never a credential).
    outcome         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT integration_checks_integration_fkey FOREIGN KEY (company_id, integration_id) REFERENCES integrations (company_id, id) ON DELETE CASCADE
);
CREATE INDEX integration_checks_integration_idx ON integration_checks (integration_id, created_at DESC);

ALTER TABLE integration_checks ENABLE ROW LEVEL SECURITY;
ALTER TABLE integration_checks FORCE ROW LEVEL SECURITY;
-- Same tenant policy as every tenant table.
CREATE POLICY integration_checks_tenant_isolation ON integration_checks
    USING (company_id = nullif(current_setting('app.company_id', true), '')::uuid)
    WITH CHECK (company_id = nullif(current_setting('app.company_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON integration_checks TO txdx_app;
