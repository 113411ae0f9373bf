-- Every row-level security policy reads its setting through a scalar
-- sub-select, which PostgreSQL evaluates once per statement (an InitPlan),
-- where the bare `nullif(current_setting(..), '')::uuid` was evaluated for
-- every row the statement touched. The batch-scope policies parsed their
-- whole list of companies (`app.company_ids`, up to one id per job of a
-- batch) once per row: with 64 companies named, 4 clients inserting 64
-- audit rows a transaction ran 405-484 transactions/s, 652-750 with the
-- list read once (BENCHMARKS.md). The policies admit exactly the same
-- rows; the tenant policies stay usable as index conditions, and the
-- batch-scope ones stay wrapped in `IS TRUE` so that they are not (0025).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['integrations', 'tickets', 'ticket_actions',
                             'ticket_idempotency_keys', 'refresh_tokens', 'audit_logs',
                             'agent_sessions', 'agent_memory_refs', 'users',
                             'integration_call_starts', 'integration_checks']
    LOOP
        EXECUTE format(
            'ALTER POLICY %I ON %I '
            'USING (company_id = (SELECT nullif(current_setting(''app.company_id'', true), '''')::uuid)) '
            'WITH CHECK (company_id = (SELECT nullif(current_setting(''app.company_id'', true), '''')::uuid))',
            t || '_tenant_isolation', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['integrations', 'tickets', 'ticket_actions', 'audit_logs']
    LOOP
        EXECUTE format(
            'ALTER POLICY %I ON %I '
            'USING ((company_id = ANY ((SELECT nullif(current_setting(''app.company_ids'', true), '''')::uuid[])::uuid[])) IS TRUE) '
            'WITH CHECK ((company_id = ANY ((SELECT nullif(current_setting(''app.company_ids'', true), '''')::uuid[])::uuid[])) IS TRUE)',
            t || '_batch_scope', t);
    END LOOP;
END
$$;

ALTER POLICY companies_tenant_isolation ON companies
    USING (id = (SELECT nullif(current_setting('app.company_id', true), '')::uuid))
    WITH CHECK (id = (SELECT nullif(current_setting('app.company_id', true), '')::uuid));
ALTER POLICY users_login_lookup ON users
    USING (username = (SELECT nullif(current_setting('app.login_username', true), '')));
