-- Refresh tokens are stored as SHA-256 hashes. Every login starts a family;
-- each refresh rotates (revokes the used token, issues its successor in the
-- same family); presenting a revoked token revokes the whole family.
CREATE TABLE refresh_tokens (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id   uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id    uuid        NOT NULL,
    token_hash   text        NOT NULL CONSTRAINT refresh_tokens_token_hash_key UNIQUE,
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    replaced_by  uuid,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

-- Failed logins, for throttling per username and per client address. Not
-- tenant data (an unknown username has no company), so outside RLS.
CREATE TABLE login_failures (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username    text        NOT NULL,
    client_ip   text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_username_idx ON login_failures (username, created_at);
CREATE INDEX login_failures_client_ip_idx ON login_failures (client_ip, created_at);

-- One row per state change, written in the same transaction as the change.
CREATE TABLE audit_logs (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id     uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    -- NULL for the system (the worker) or a deleted user.
    actor_user_id  uuid        REFERENCES users (id) ON DELETE SET NULL,
    action         text        NOT NULL,
    entity_type    text        NOT NULL,
    entity_id      uuid,
    -- Never holds a secret.
    payload        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_company_created_idx ON audit_logs (company_id, created_at DESC, id DESC);
CREATE INDEX audit_logs_company_entity_idx ON audit_logs (company_id, entity_type, entity_id);
