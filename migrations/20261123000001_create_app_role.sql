-- The role every tenant transaction runs as (`SET LOCAL ROLE txdx_app`).
-- It is neither superuser, owner of the tenant tables, nor BYPASSRLS, so the
-- row-level security policies below bind it even when the pool connects as a
-- superuser (as the development Postgres does). NOLOGIN: it is only ever
-- assumed from inside a transaction, never connected to.
-- Roles are cluster-wide: a second database on the same cluster (tests create
-- one per test, concurrently) finds it already there.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'txdx_app') THEN
        CREATE ROLE txdx_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The connecting role must be able to switch to txdx_app.
DO $$
BEGIN
    EXECUTE format('GRANT txdx_app TO %I', current_user);
EXCEPTION WHEN others THEN
    -- Already a member, or a superuser (who may SET ROLE to anything).
    NULL;
END
$$;
