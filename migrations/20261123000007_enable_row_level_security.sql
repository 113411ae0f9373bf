-- Tenant isolation in the database. Every tenant transaction runs
-- `SET LOCAL ROLE txdx_app` and `set_config('app.company_id', <uuid>, true)`;
-- the policies admit only that company's rows. No tenant set: the setting is
-- '' or NULL, nullif(...) gives NULL, and no row matches (fails closed).
-- FORCE binds the table owner too; txdx_app is not the owner anyway.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['integrations', 'tickets', 'ticket_actions',
                             'ticket_idempotency_keys', 'refresh_tokens', 'audit_logs',
                             'agent_sessions', 'agent_memory_refs']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (company_id = nullif(current_setting(''app.company_id'', true), '''')::uuid) '
            'WITH CHECK (company_id = nullif(current_setting(''app.company_id'', true), '''')::uuid)',
            t || '_tenant_isolation', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO txdx_app', t);
    END LOOP;
END
$$;

-- users: the tenant's rows, plus, for the login transaction only, the one
-- row whose username the transaction names in app.login_username (login takes
-- no company, so it cannot set app.company_id before it finds the user).
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY users_tenant_isolation ON users
    USING (company_id = nullif(current_setting('app.company_id', true), '')::uuid)
    WITH CHECK (company_id = nullif(current_setting('app.company_id', true), '')::uuid);
CREATE POLICY users_login_lookup ON users FOR SELECT
    USING (username = nullif(current_setting('app.login_username', true), ''));
GRANT SELECT, INSERT, UPDATE, DELETE ON users TO txdx_app;

-- companies: a tenant sees only its own row, keyed by id.
ALTER TABLE companies ENABLE ROW LEVEL SECURITY;
ALTER TABLE companies FORCE ROW LEVEL SECURITY;
CREATE POLICY companies_tenant_isolation ON companies
    USING (id = nullif(current_setting('app.company_id', true), '')::uuid)
    WITH CHECK (id = nullif(current_setting('app.company_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON companies TO txdx_app;

GRANT USAGE ON SCHEMA public TO txdx_app;
