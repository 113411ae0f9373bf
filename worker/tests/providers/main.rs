//! The live provider clients against HTTP fakes of Splunk, PAN-OS, Wazuh
//! and Meraki: our real client code runs; only the providers are fake.
//! Each file asserts the requests our client sends and how every answer
//! (success, bad credentials, 429, 5xx, timeouts, malformed bodies and each
//! provider's own failure shapes) is classified.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on broken fixtures"
)]

mod fakes;
mod meraki;
mod palo_alto;
mod parsers;
mod splunk;
mod tls;
mod wazuh;

use serde_json::Value;
use shared::{
    domain::{IntegrationMode, Provider},
    providers::{IntegrationSettings, validate_action},
};
use txdx_worker::providers::{ActionCall, Credentials, ProviderError, Providers};
use uuid::Uuid;

/// Settings pointing at `base_url` with everything else default.
pub fn settings(base_url: &str) -> IntegrationSettings {
    IntegrationSettings {
        base_url: Some(base_url.to_owned()),
        ..IntegrationSettings::default()
    }
}

/// Credentials from a JSON object of strings.
pub fn credentials(json: Value) -> Credentials {
    Credentials::from_json(&json.to_string()).unwrap()
}

/// Runs one live action, its params checked against the catalogue first
/// (as the api does before anything reaches the worker).
pub async fn run(
    providers: &Providers,
    provider: Provider,
    action: &str,
    params: Value,
    settings: &IntegrationSettings,
    credentials: &Credentials,
) -> Result<Value, ProviderError> {
    run_as(
        Uuid::now_v7(),
        providers,
        provider,
        action,
        params,
        settings,
        credentials,
    )
    .await
}

/// [`run`] with a chosen action id.
pub async fn run_as(
    action_id: Uuid,
    providers: &Providers,
    provider: Provider,
    action: &str,
    params: Value,
    settings: &IntegrationSettings,
    credentials: &Credentials,
) -> Result<Value, ProviderError> {
    let params = validate_action(provider, action, &params, "params").unwrap();
    providers
        .execute(
            IntegrationMode::Live,
            ActionCall {
                action_id,
                provider,
                action,
                params: &params,
                settings,
                credentials,
            },
        )
        .await
}

/// The message of a permanent error, or a panic naming what came instead.
pub fn permanent(result: Result<Value, ProviderError>) -> String {
    match result {
        Err(ProviderError::Permanent { message }) => message,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

/// The message and `retry_after` of a transient error.
pub fn transient(result: Result<Value, ProviderError>) -> (String, Option<std::time::Duration>) {
    match result {
        Err(ProviderError::Transient {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_live_integration_without_base_url_is_refused_before_any_request() {
    let providers = Providers::new().unwrap();
    let none = IntegrationSettings::default();
    for (provider, action, params, creds) in [
        (
            Provider::Splunk,
            "run_search",
            serde_json::json!({"query": "index=main"}),
            serde_json::json!({"token": "t-0001"}),
        ),
        (
            Provider::PaloAlto,
            "block_ip",
            serde_json::json!({"ip": "203.0.113.7"}),
            serde_json::json!({"api_key": "k-0001"}),
        ),
        (
            Provider::Wazuh,
            "list_agents",
            serde_json::json!({}),
            serde_json::json!({"username": "u", "password": "p-0001"}),
        ),
    ] {
        let message = permanent(
            run(
                &providers,
                provider,
                action,
                params,
                &none,
                &credentials(creds),
            )
            .await,
        );
        assert!(
            message.ends_with("integration has no base_url"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn simulated_test_connection_checks_the_credential_combination() {
    use txdx_worker::providers::simulated;
    let ok = simulated::test_connection(
        Provider::Wazuh,
        &IntegrationSettings::default(),
        &credentials(serde_json::json!({"username": "u", "password": "p"})),
    )
    .unwrap();
    assert_eq!(ok["simulated"], true);
    let missing = simulated::test_connection(
        Provider::Wazuh,
        &IntegrationSettings::default(),
        &credentials(serde_json::json!({"username": "u"})),
    );
    assert!(
        matches!(missing, Err(ProviderError::Permanent { ref message }) if message.contains("username + password")),
        "{missing:?}"
    );
}
