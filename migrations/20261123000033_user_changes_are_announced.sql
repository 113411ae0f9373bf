-- Each api process remembers what it read of a token's user (its role and
-- token version) so that a client's requests do not each read it again
-- (TOKEN_CHECK_CACHE_MS). A change that ends the user's tokens must reach
-- every process: deleting the user, or a new role or token version (a
-- password change bumps it). These triggers announce the user's id on the
-- channel `txdx_user_changes`, delivered at the commit of the change
-- whatever made it (the api, a cascade from its company's deletion, an
-- operator's SQL); each api process listens there and forgets that user.
--
-- Users change rarely (an ADMIN's actions, password changes), so the
-- announcements cost nothing on the paths that carry the load. The login
-- that re-hashes a password with newer parameters changes neither column
-- and announces nothing: the user's tokens stay good.
CREATE FUNCTION announce_user_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('txdx_user_changes', OLD.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER users_announce_token_change
    AFTER UPDATE OF role, token_version, company_id ON users
    FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role
          OR OLD.token_version IS DISTINCT FROM NEW.token_version
          OR OLD.company_id IS DISTINCT FROM NEW.company_id)
    EXECUTE FUNCTION announce_user_change();

CREATE TRIGGER users_announce_deletion
    AFTER DELETE ON users
    FOR EACH ROW
    EXECUTE FUNCTION announce_user_change();
