-- Platform operators: not tied to any company, allowed into the queue board
-- (/board) that shows every company's jobs. Created with `api create-operator`.
-- Not tenant data, so outside row-level security; the app role cannot read it.
CREATE TABLE operators (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    username       text        NOT NULL CONSTRAINT operators_username_format CHECK (username ~ '^[a-z0-9._@-]{3,64}$'),
    -- argon2id PHC string.
    password_hash  text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT operators_username_key UNIQUE (username)
);
