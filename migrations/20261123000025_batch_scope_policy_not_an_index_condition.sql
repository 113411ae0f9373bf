-- The batch-scope policies of 0022 (`company_id = ANY (app.company_ids)`),
-- ORed with the single-tenant ones, were usable as an index condition:
-- before any statistics existed (a busy first minute, before autovacuum's
-- first analyse), generic plans of the batch statements combined the
-- primary key with a BitmapOr over `ticket_actions_company_status_idx`,
-- reading every queued action of the company for each row named by key.
-- Wrapped in `IS TRUE` the check means the same (an unset or empty setting
-- still admits nothing) but no index can serve it, so the keys the
-- statements name are the only way in. Every statement still names each
-- row's company itself.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['integrations', 'tickets', 'ticket_actions', 'audit_logs']
    LOOP
        EXECUTE format(
            'ALTER POLICY %I ON %I '
            'USING ((company_id = ANY (nullif(current_setting(''app.company_ids'', true), '''')::uuid[])) IS TRUE) '
            'WITH CHECK ((company_id = ANY (nullif(current_setting(''app.company_ids'', true), '''')::uuid[])) IS TRUE)',
            t || '_worker_batch', t);
    END LOOP;
END
$$;
