-- Base tables for conversational agents working on tickets. No agent logic
-- yet; the shapes are fixed so later work has a home.
CREATE TABLE agent_sessions (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id          uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    user_id             uuid        REFERENCES users (id) ON DELETE SET NULL,
    -- The thread id at the agent provider.
    external_thread_id  text        NOT NULL,
    purpose             text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_activity_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_sessions_company_id_id_key UNIQUE (company_id, id)
);
CREATE INDEX agent_sessions_company_activity_idx ON agent_sessions (company_id, last_activity_at DESC);

CREATE TABLE agent_memory_refs (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id       uuid        NOT NULL,
    session_id       uuid        NOT NULL,
    vector_store_id  text        NOT NULL,
    scope            text        NOT NULL CONSTRAINT agent_memory_refs_scope_check CHECK (scope IN ('SESSION', 'USER', 'COMPANY')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_memory_refs_session_fkey FOREIGN KEY (company_id, session_id) REFERENCES agent_sessions (company_id, id) ON DELETE CASCADE
);
CREATE INDEX agent_memory_refs_session_idx ON agent_memory_refs (session_id);
