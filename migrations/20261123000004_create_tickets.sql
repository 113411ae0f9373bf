CREATE TABLE tickets (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id          uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    created_by_user_id  uuid        REFERENCES users (id) ON DELETE SET NULL,
    subject             text        NOT NULL CONSTRAINT tickets_subject_length CHECK (char_length(subject) BETWEEN 1 AND 300),
    description         text        NOT NULL DEFAULT '' CONSTRAINT tickets_description_length CHECK (char_length(description) <= 20000),
    status              text        NOT NULL DEFAULT 'PENDING' CONSTRAINT tickets_status_check CHECK (status IN ('PENDING', 'EXECUTED', 'FAILED', 'DERIVED')),
    status_reason       text,
    -- Set when the ticket reaches a terminal status.
    executed_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tickets_company_id_id_key UNIQUE (company_id, id)
);
-- The list query: a company's tickets, newest first, optionally by status.
CREATE INDEX tickets_company_created_idx ON tickets (company_id, created_at DESC, id DESC);
CREATE INDEX tickets_company_status_created_idx ON tickets (company_id, status, created_at DESC, id DESC);

CREATE TABLE ticket_actions (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id      uuid        NOT NULL,
    ticket_id       uuid        NOT NULL,
    -- Actions run in position order; one fails, the rest do not run.
    position        integer     NOT NULL CONSTRAINT ticket_actions_position_nonnegative CHECK (position >= 0),
    integration_id  uuid,
    provider        text        NOT NULL CONSTRAINT ticket_actions_provider_check CHECK (provider IN ('SPLUNK', 'PALO_ALTO', 'WAZUH', 'MERAKI')),
    action          text        NOT NULL,
    params          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- The apalis job currently carrying this action (one per attempt).
    job_id          text,
    status          text        NOT NULL DEFAULT 'PENDING' CONSTRAINT ticket_actions_status_check CHECK (status IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'DERIVED', 'CANCELLED')),
    attempts        integer     NOT NULL DEFAULT 0 CONSTRAINT ticket_actions_attempts_nonnegative CHECK (attempts >= 0),
    max_attempts    integer     NOT NULL DEFAULT 5 CONSTRAINT ticket_actions_max_attempts_positive CHECK (max_attempts BETWEEN 1 AND 100),
    last_error      text,
    result          jsonb,
    -- When the next attempt may start (durable backoff).
    next_attempt_at timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Same company as the ticket, and the integration (when set) of that company.
    CONSTRAINT ticket_actions_ticket_fkey FOREIGN KEY (company_id, ticket_id) REFERENCES tickets (company_id, id) ON DELETE CASCADE,
    CONSTRAINT ticket_actions_integration_fkey FOREIGN KEY (company_id, integration_id) REFERENCES integrations (company_id, id) ON DELETE SET NULL (integration_id),
    CONSTRAINT ticket_actions_ticket_position_key UNIQUE (ticket_id, position)
);
-- Jobs views and queue stats filter a company's actions by status and provider.
CREATE INDEX ticket_actions_company_status_idx ON ticket_actions (company_id, status, created_at DESC);
CREATE INDEX ticket_actions_integration_idx ON ticket_actions (integration_id);

-- Idempotency-Key on POST /api/tickets: per company, expiring.
CREATE TABLE ticket_idempotency_keys (
    company_id    uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    key           text        NOT NULL CONSTRAINT ticket_idempotency_keys_key_length CHECK (char_length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the canonical request body: the same key with another body is refused.
    request_hash  text        NOT NULL,
    ticket_id     uuid        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    CONSTRAINT ticket_idempotency_keys_pkey PRIMARY KEY (company_id, key),
    CONSTRAINT ticket_idempotency_keys_ticket_fkey FOREIGN KEY (company_id, ticket_id) REFERENCES tickets (company_id, id) ON DELETE CASCADE
);
CREATE INDEX ticket_idempotency_keys_expires_idx ON ticket_idempotency_keys (expires_at);
