//! The secret store: where integration credentials live. The database keeps
//! only the identifier
//! [`SecretStore::put`](crate::secrets::SecretStore::put) returns.
//!
//! Backends: Azure Key Vault in production (`key_vault`), and an AEAD-
//! encrypted local store for the embedded default (`local`); `cache` puts a
//! short-lived read cache in front of either. Values travel as
//! [`SecretValue`](crate::secrets::SecretValue), which never prints its content.

use std::fmt;

use async_trait::async_trait;
use uuid::Uuid;

/// A secret value (an integration's credentials as a JSON document).
/// `Debug` and `Display` print nothing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret operation failed. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No such secret (or it belongs to another company).
    #[error("secret not found")]
    NotFound,
    /// Worth retrying: throttling (429), timeouts, 5xx, connection errors.
    #[error("secret store temporarily unavailable: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// How long the store asked us to wait, in seconds.
        retry_after_secs: Option<u64>,
    },
    /// Not worth retrying: bad credentials, forbidden, a wrong key, tampering.
    #[error("secret store error: {0}")]
    Permanent(String),
}

/// The name a company's integration secret gets: derived from both ids, so a
/// company can only ever address its own secrets, and always a valid Key
/// Vault name (alphanumerics and dashes, at most 127 characters).
pub fn secret_name(company_id: Uuid, integration_id: Uuid) -> String {
    format!("txdx-{}-{}", company_id.simple(), integration_id.simple())
}

/// The secret name an identifier refers to, checked against the company:
/// identifiers are `.../secrets/<name>[/<version>]` (Key Vault) or
/// `local:<name>:<version>` (local store).
pub fn name_belongs_to(name: &str, company_id: Uuid) -> bool {
    name.starts_with(&format!("txdx-{}-", company_id.simple()))
}

/// Put, get and delete secrets by the identifier the store hands out.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores a new version of the company's integration secret and returns
    /// its identifier (what `integrations.keyvault_secret_id` holds).
    async fn put(
        &self,
        company_id: Uuid,
        integration_id: Uuid,
        value: &SecretValue,
    ) -> Result<String, SecretError>;

    /// Reads a secret by identifier, refusing identifiers of another company.
    async fn get(&self, company_id: Uuid, id: &str) -> Result<SecretValue, SecretError>;

    /// Deletes the secret (every version) the identifier refers to.
    async fn delete(&self, company_id: Uuid, id: &str) -> Result<(), SecretError>;

    /// A one-line description for start-up logs (no secret).
    fn describe(&self) -> String;

    /// Checks that the store answers (start-up probe).
    async fn check(&self) -> Result<(), SecretError>;
}

/// An in-memory read cache in front of any store (used by the worker).
pub mod cache;
/// Azure Key Vault, through the official SDK.
pub mod key_vault;
/// The AEAD-encrypted store in Postgres, for running without Azure.
pub mod local;

/// Builds the store the configuration selects: Azure Key Vault when
/// `AZURE_KEY_VAULT_URL` is set, else the local encrypted store. Nothing is
/// sent yet; call [`SecretStore::check`] to see that it answers.
///
/// # Errors
/// When the selected backend cannot be set up (bad key, bad vault URL,
/// unusable credential settings).
pub fn from_config(
    config: &crate::config::Config,
    pool: &sqlx::PgPool,
) -> Result<std::sync::Arc<dyn SecretStore>, SecretError> {
    match &config.azure {
        Some(azure) => Ok(std::sync::Arc::new(key_vault::KeyVaultSecretStore::new(
            azure,
        )?)),
        None => Ok(std::sync::Arc::new(local::LocalSecretStore::new(
            pool.clone(),
            config.local_secret_key.as_ref().map(|k| k.expose()),
            std::path::Path::new(&config.local_secret_key_file),
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_print() {
        let v = SecretValue::new("hunter2");
        assert!(!format!("{v:?} {v}").contains("hunter2"));
    }

    #[test]
    fn secret_names_are_valid_key_vault_names_scoped_to_the_company() {
        let c = Uuid::new_v4();
        let name = secret_name(c, Uuid::new_v4());
        assert!(name.len() <= 127);
        assert!(
            name.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        );
        assert!(name_belongs_to(&name, c));
        assert!(!name_belongs_to(&name, Uuid::new_v4()));
    }
}
