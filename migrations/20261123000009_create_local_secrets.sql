-- The local secret store used when Azure Key Vault is not configured.
-- Values are sealed with XChaCha20-Poly1305 under a key that never enters the
-- database; the secret's name is the associated data, so a ciphertext moved
-- to another row does not decrypt. Not tenant data in the RLS sense: the
-- store itself checks that a name belongs to the caller's company.
CREATE TABLE local_secrets (
    name        text        NOT NULL,
    version     integer     NOT NULL,
    nonce       bytea       NOT NULL CONSTRAINT local_secrets_nonce_length CHECK (octet_length(nonce) = 24),
    ciphertext  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT local_secrets_pkey PRIMARY KEY (name, version)
);
