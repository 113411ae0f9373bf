-- Worker batches: a worker process records the claims and outcomes of many
-- jobs in one transaction (group commit; see ARCHITECTURE.md). Those jobs
-- belong to several companies, so such a transaction names exactly the
-- companies of the jobs it holds, as a uuid[] literal in `app.company_ids`.
-- These permissive policies admit those companies' rows on the four tables
-- the worker's batch statements touch (permissive policies are ORed with the
-- single-tenant ones). Unset or empty, the setting admits nothing: like
-- `app.company_id`, it fails closed. Only txdx_app is bound (and it is never
-- superuser, owner, or BYPASSRLS).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['integrations', 'tickets', 'ticket_actions', 'audit_logs']
    LOOP
        EXECUTE format(
            'CREATE POLICY %I ON %I TO txdx_app '
            'USING (company_id = ANY (nullif(current_setting(''app.company_ids'', true), '''')::uuid[])) '
            'WITH CHECK (company_id = ANY (nullif(current_setting(''app.company_ids'', true), '''')::uuid[]))',
            t || '_worker_batch', t);
    END LOOP;
END
$$;
