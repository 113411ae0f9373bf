-- The batch-scope policies of 0022 (altered by 0025) admit the rows of the
-- companies a multi-company transaction names in `app.company_ids`. The
-- api's group commit of new tickets uses them as well as the worker's
-- batches, so they are named for what they do: `<table>_batch_scope`.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['integrations', 'tickets', 'ticket_actions', 'audit_logs']
    LOOP
        EXECUTE format('ALTER POLICY %I ON %I RENAME TO %I',
            t || '_worker_batch', t, t || '_batch_scope');
    END LOOP;
END
$$;
