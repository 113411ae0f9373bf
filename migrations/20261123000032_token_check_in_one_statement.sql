-- The api checks every request's access token against its user (the token
-- version and role must still hold). That was a transaction of four round
-- trips: BEGIN, the tenant settings, the user's row, COMMIT; a round trip
-- costs PostgreSQL about 40 µs of CPU whatever it carries (BENCHMARKS.md).
-- This function makes it one statement, run outside any transaction (its
-- own implicit transaction, which the settings below end with): it scopes
-- itself as `begin_tenant` does (role `txdx_app`, `app.company_id`), so
-- row-level security confines the read to the token's company exactly as
-- before, and keeps its plan (`plan_cache_mode = auto`: one primary-key
-- lookup, the api's `Plans::Reused`).
--
-- Called inside an open transaction, its settings would last until that
-- transaction ends: the api calls it only on a connection of its own, in
-- autocommit. It returns the user's public columns, never the password hash.
CREATE FUNCTION token_user(token_company uuid, token_user_id uuid)
RETURNS TABLE (id uuid, company_id uuid, username text, email text, role text,
               token_version integer, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM set_config('app.company_id', token_company::text, true),
            set_config('role', 'txdx_app', true),
            set_config('plan_cache_mode', 'auto', true);
    RETURN QUERY
        SELECT u.id, u.company_id, u.username, u.email, u.role, u.token_version,
               u.created_at, u.updated_at
        FROM users u
        WHERE u.id = token_user_id AND u.company_id = token_company;
END
$$;
REVOKE ALL ON FUNCTION token_user(uuid, uuid) FROM PUBLIC;
