//! One interface over every provider:
//! [`Providers::execute`](crate::providers::Providers::execute) runs a
//! catalogue action and answers with the provider's outcome or a classified
//! error; [`Providers::test_connection`](crate::providers::Providers::test_connection)
//! makes the cheapest authenticated call.
//!
//! Live clients are one file per provider
//! ([`splunk`](crate::providers::splunk),
//! [`palo_alto`](crate::providers::palo_alto),
//! [`wazuh`](crate::providers::wazuh), [`meraki`](crate::providers::meraki))
//! over the shared HTTP machinery in [`http`](crate::providers::http)
//! (clients per TLS setting, error classification) and the session-token
//! cache in [`tokens`](crate::providers::tokens);
//! [`simulated`](crate::providers::simulated) answers the same actions
//! deterministically with no network, for the embedded default and demos.
//! `docs/PROVIDERS.md` has the table of actions and the error rules.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use serde::de::DeserializeOwned;
use serde_json::Value;
use shared::{
    domain::{IntegrationMode, Provider},
    providers::IntegrationSettings,
};
use uuid::Uuid;

pub mod http;
pub mod meraki;
pub mod palo_alto;
pub mod simulated;
pub mod splunk;
pub mod tokens;
pub mod wazuh;

/// An integration's credentials (a flat JSON object of strings). `Debug`
/// prints the field names only.
#[derive(Clone, Default)]
pub struct Credentials(HashMap<String, String>);

impl Credentials {
    /// Parses the secret store's JSON document.
    ///
    /// # Errors
    /// A permanent error when the document is not an object of strings.
    pub fn from_json(raw: &str) -> Result<Self, ProviderError> {
        serde_json::from_str::<HashMap<String, String>>(raw)
            .map(Self)
            .map_err(|_| ProviderError::Permanent {
                message: "stored credentials are not an object of strings".into(),
            })
    }

    /// One field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every field's value: what error messages must never contain.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }

    /// One required field.
    ///
    /// # Errors
    /// A permanent error naming the missing field.
    pub fn require(&self, key: &str) -> Result<&str, ProviderError> {
        self.get(key).ok_or_else(|| ProviderError::Permanent {
            message: format!("credentials lack `{key}`"),
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.0.keys().collect();
        keys.sort();
        write!(f, "Credentials({keys:?}, <redacted>)")
    }
}

/// What the worker asks a provider to do.
#[derive(Debug, Clone)]
pub struct ActionCall<'a> {
    /// The action's id: sent as an idempotency key where the provider takes one.
    pub action_id: Uuid,
    /// Which provider.
    pub provider: Provider,
    /// Catalogue action name.
    pub action: &'a str,
    /// Params, already validated against the catalogue.
    pub params: &'a Value,
    /// The integration's non-secret settings.
    pub settings: &'a IntegrationSettings,
    /// The integration's credentials.
    pub credentials: &'a Credentials,
}

/// A provider failure, classified once, here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying with backoff: timeouts, connection errors, 429, 5xx.
    #[error("{message}")]
    Transient {
        /// What happened (no secret).
        message: String,
        /// The provider's `Retry-After`, honoured over our backoff.
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again: bad credentials, invalid params, 4xx.
    #[error("{message}")]
    Permanent {
        /// What happened (no secret).
        message: String,
    },
    /// The provider says a human must follow up; the ticket becomes DERIVED.
    #[error("{reason}")]
    NeedsHuman {
        /// Why.
        reason: String,
    },
}

/// How long a Splunk search job may run before the attempt gives up
/// (transient); kept under the worker's default 20 s action timeout.
pub const DEFAULT_SEARCH_TIME_LIMIT: Duration = Duration::from_secs(15);

/// The provider clients of one worker process. Clones share the HTTP
/// clients and the session-token cache.
#[derive(Debug, Clone)]
pub struct Providers {
    clients: Arc<http::ClientCache>,
    tokens: Arc<tokens::TokenCache>,
    search_time_limit: Duration,
}

impl Providers {
    /// Builds the shared default HTTP client (10 s timeout, user agent,
    /// verified TLS) and empty caches.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            clients: Arc::new(http::ClientCache::new()?),
            tokens: Arc::new(tokens::TokenCache::default()),
            search_time_limit: DEFAULT_SEARCH_TIME_LIMIT,
        })
    }

    /// The same clients with another limit on a Splunk search job's run
    /// time (keep it under the worker's action timeout).
    #[must_use]
    pub fn with_search_time_limit(mut self, limit: Duration) -> Self {
        self.search_time_limit = limit;
        self
    }

    /// Runs one action and returns the provider's outcome as JSON.
    ///
    /// # Errors
    /// A classified [`ProviderError`].
    pub async fn execute(
        &self,
        mode: IntegrationMode,
        call: ActionCall<'_>,
    ) -> Result<Value, ProviderError> {
        match mode {
            IntegrationMode::Simulated => {
                if let Some(ms) = call.settings.simulated_latency_ms.filter(|ms| *ms > 0) {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                }
                simulated::execute(&call)
            }
            // Boxed, so that a delivery's future does not carry room for
            // the four live providers' HTTP futures when the call is
            // simulated: one allocation per live call, beside a round trip.
            IntegrationMode::Live => Box::pin(self.execute_live(&call)).await,
        }
    }

    async fn execute_live(&self, call: &ActionCall<'_>) -> Result<Value, ProviderError> {
        tracing::debug!(action.id = %call.action_id, provider = %call.provider, action = call.action, "live call {} {}", call.provider, call.action);
        match call.provider {
            Provider::Splunk => splunk::execute(self, call).await,
            Provider::PaloAlto => palo_alto::execute(self, call).await,
            Provider::Wazuh => wazuh::execute(self, call).await,
            Provider::Meraki => meraki::execute(self, call).await,
        }
    }

    /// Makes the provider's cheapest authenticated call with these settings
    /// and credentials (live): Splunk `server/info` (or an empty HEC post
    /// for a HEC-only integration), PAN-OS `show system info`, Wazuh
    /// authenticate, Meraki `GET /organizations`. Simulated integrations use
    /// [`simulated::test_connection`].
    ///
    /// # Errors
    /// A classified [`ProviderError`]: bad credentials are permanent, an
    /// unreachable provider transient.
    pub async fn test_connection(
        &self,
        provider: Provider,
        settings: &IntegrationSettings,
        credentials: &Credentials,
    ) -> Result<Value, ProviderError> {
        match provider {
            Provider::Splunk => splunk::test_connection(self, settings, credentials).await,
            Provider::PaloAlto => palo_alto::test_connection(self, settings, credentials).await,
            Provider::Wazuh => wazuh::test_connection(self, settings, credentials).await,
            Provider::Meraki => meraki::test_connection(self, settings, credentials).await,
        }
    }

    /// A view of the provider at `base_url` with the client `settings` call
    /// for.
    ///
    /// # Errors
    /// Permanent when there is no base URL or the TLS settings are unusable.
    fn api<'a>(
        &self,
        name: &'static str,
        base_url: Option<&str>,
        settings: &IntegrationSettings,
        credentials: &'a Credentials,
    ) -> Result<http::Api<'a>, ProviderError> {
        let base_url =
            base_url
                .filter(|b| !b.trim().is_empty())
                .ok_or_else(|| ProviderError::Permanent {
                    message: format!("{name}: integration has no base_url"),
                })?;
        let client = self.clients.client_for(settings)?;
        http::Api::new(name, client, base_url, settings, credentials)
    }

    fn tokens(&self) -> &tokens::TokenCache {
        &self.tokens
    }

    fn search_time_limit(&self) -> Duration {
        self.search_time_limit
    }
}

/// An action's params parsed into the catalogue's type.
///
/// # Errors
/// Permanent: params are validated on the way in, so only a catalogue change
/// makes this happen.
fn params<T: DeserializeOwned>(call: &ActionCall<'_>) -> Result<T, ProviderError> {
    serde_json::from_value(call.params.clone()).map_err(|e| ProviderError::Permanent {
        message: format!("invalid params for {} {}: {e}", call.provider, call.action),
    })
}

/// The error for an action a provider file does not implement.
fn unknown_action(call: &ActionCall<'_>) -> ProviderError {
    ProviderError::Permanent {
        message: format!("{} has no action `{}`", call.provider, call.action),
    }
}

/// A key that actions which must not run concurrently share (e.g. Meraki
/// firewall edits on one network: the PUT replaces the whole rule list).
/// The worker holds a Postgres advisory lock on it across all processes.
pub fn serialization_key(call: &ActionCall<'_>) -> Option<String> {
    match (call.provider, call.action) {
        (Provider::Meraki, "block_ip" | "unblock_ip") => call
            .params
            .get("network_id")
            .and_then(Value::as_str)
            .map(|network| format!("meraki-l3:{network}")),
        _ => None,
    }
}
