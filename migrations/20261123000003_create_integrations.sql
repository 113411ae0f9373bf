-- A company's connection to one provider. Credentials never live here: only
-- the identifier of the secret in the secret store (Azure Key Vault or the
-- local encrypted store).
CREATE TABLE integrations (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id         uuid        NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    provider           text        NOT NULL CONSTRAINT integrations_provider_check CHECK (provider IN ('SPLUNK', 'PALO_ALTO', 'WAZUH', 'MERAKI')),
    name               text        NOT NULL CONSTRAINT integrations_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    mode               text        NOT NULL DEFAULT 'simulated' CONSTRAINT integrations_mode_check CHECK (mode IN ('live', 'simulated')),
    keyvault_secret_id text,
    -- Non-secret settings: base URL, TLS options, timeouts, rate limits.
    extra_json         jsonb       NOT NULL DEFAULT '{}'::jsonb CONSTRAINT integrations_extra_json_object CHECK (jsonb_typeof(extra_json) = 'object'),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- Lets ticket_actions reference (company_id, id) so an action can only
    -- name an integration of its own company.
    CONSTRAINT integrations_company_id_id_key UNIQUE (company_id, id),
    CONSTRAINT integrations_company_name_key UNIQUE (company_id, name)
);
