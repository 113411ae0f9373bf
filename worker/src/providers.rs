//! One interface over every provider: [`Providers::execute`] runs a catalogue
//! action and answers with the provider's outcome or a classified error.
//!
//! Live clients (one file per provider) share one `reqwest::Client` per
//! process; [`simulated`] answers the same actions deterministically with no
//! network, for the embedded default and demos.

use std::{collections::HashMap, fmt, time::Duration};

use serde_json::Value;
use shared::{
    domain::{IntegrationMode, Provider},
    providers::IntegrationSettings,
};
use uuid::Uuid;

pub mod simulated;

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

/// The provider clients of one worker process.
#[derive(Debug, Clone)]
pub struct Providers {
    http: reqwest::Client,
}

impl Providers {
    /// Builds the shared HTTP client (timeouts, user agent, rustls).
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("txdx-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { http })
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
            IntegrationMode::Live => self.execute_live(&call).await,
        }
    }

    async fn execute_live(&self, call: &ActionCall<'_>) -> Result<Value, ProviderError> {
        let _ = &self.http;
        Err(ProviderError::NeedsHuman {
            reason: format!(
                "live {} actions are not available in this build; run `{}` by hand",
                call.provider, call.action
            ),
        })
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
