-- The batch-scope policies (0022, 0025, 0027) test each row's company with
-- `company_id = ANY (<the batch's list>)`. The list comes from a sub-select
-- (read once per statement, 0027), and PostgreSQL hashes `= ANY` only over
-- a constant array: over a parameter it compares the row's company with
-- each listed one in turn. A worker batch names up to one company per job,
-- so with 1,000 companies every row a claim or an outcome touched was
-- compared with up to 254 companies, several times per statement
-- (row read, row locked, row written). In the benchmark's drain `uuid_eq`
-- and `ExecEvalScalarArrayOp` were the two hottest functions of
-- PostgreSQL (perf, BENCHMARKS.md); with 10 companies they did not show.
--
-- `company_id IN (SELECT unnest(<list>))` is planned as a hashed sub-plan:
-- the list is parsed and hashed once per statement and each row costs one
-- probe, whatever the number of companies. The policies admit exactly the
-- same rows: an unset or empty setting unnests to nothing and admits
-- nothing, and the `IS TRUE` wrapper of 0025 stays, so no index serves the
-- check and no join is made of it.
DO $$
DECLARE
    t text;
    listed constant text :=
        '(company_id IN (SELECT unnest(nullif(current_setting(''app.company_ids'', true), '''')::uuid[]))) IS TRUE';
BEGIN
    FOREACH t IN ARRAY ARRAY['integrations', 'tickets', 'ticket_actions', 'audit_logs']
    LOOP
        EXECUTE format('ALTER POLICY %I ON %I USING (%s) WITH CHECK (%s)',
                       t || '_batch_scope', t, listed, listed);
    END LOOP;
END
$$;
