-- Companies are the tenants. Every other tenant table carries company_id.
CREATE TABLE companies (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Names are unique regardless of case, so "Acme" and "acme" cannot both register.
    name        text        NOT NULL CONSTRAINT companies_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX companies_name_key ON companies (lower(name));

CREATE TABLE users (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id     uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    -- Usernames are global (login takes no company), stored lower case.
    username       text        NOT NULL CONSTRAINT users_username_format CHECK (username ~ '^[a-z0-9._@-]{3,64}$'),
    email          text        NOT NULL CONSTRAINT users_email_format CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND char_length(email) <= 254),
    -- argon2id PHC string; never the password.
    password_hash  text        NOT NULL,
    role           text        NOT NULL CONSTRAINT users_role_check CHECK (role IN ('ADMIN', 'USER')),
    -- Bumped on password or role change: tokens issued before it are refused.
    token_version  integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username)
);
-- Listing a company's users, and the "last ADMIN" check.
CREATE INDEX users_company_id_role_idx ON users (company_id, role);
