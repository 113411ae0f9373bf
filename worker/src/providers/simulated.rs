//! Simulated mode: every catalogue action answers with a realistic,
//! deterministic result and no network, so a ticket still goes through the
//! whole queue, secret store and status path. Results say `simulated: true`.
//!
//! Determinism: outputs depend only on the params (and the action id for
//! ids), so a retried action reports the same thing.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ActionCall, Credentials, ProviderError};
use shared::{
    domain::Provider,
    providers::{IntegrationSettings, required_credentials},
};

/// Answers `call` as the provider would.
///
/// # Errors
/// Permanent for params that do not parse (they were validated, so only a
/// catalogue change makes this happen).
pub fn execute(call: &ActionCall<'_>) -> Result<Value, ProviderError> {
    let p = call.params;
    let str_param = |k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let result = match (call.provider, call.action) {
        (Provider::Splunk, "run_search") => {
            let digest = digest(&str_param("query"));
            let rows = (digest[0] % 4) as usize + 1;
            json!({
                "sid": format!("sim_{}", hex::encode(&digest[..6])),
                "dispatch_state": "DONE",
                "result_count": rows,
                "results": (0..rows).map(|i| json!({"_time": "2026-01-01T00:00:00Z", "host": format!("host-{i}"), "count": u32::from(digest[i + 1])})).collect::<Vec<_>>(),
            })
        }
        (Provider::Splunk, "send_event") => json!({"text": "Success", "code": 0}),
        (Provider::PaloAlto, "block_ip") => json!({
            "status": "success", "registered": [{"ip": str_param("ip"), "tag": p.get("tag").and_then(Value::as_str).unwrap_or("txdx-blocked")}],
            "timeout_secs": p.get("timeout_secs"),
        }),
        (Provider::PaloAlto, "unblock_ip") => json!({
            "status": "success", "unregistered": [{"ip": str_param("ip"), "tag": p.get("tag").and_then(Value::as_str).unwrap_or("txdx-blocked")}],
        }),
        (Provider::Wazuh, "list_agents") => json!({
            "total_affected_items": 2,
            "affected_items": [
                {"id": "001", "name": "web-01", "status": "active", "ip": "10.0.0.11"},
                {"id": "002", "name": "db-01", "status": "active", "ip": "10.0.0.12"},
            ],
        }),
        (Provider::Wazuh, "run_active_response") => json!({
            "command": str_param("command"),
            "affected_items": p.get("agents").cloned().unwrap_or(Value::Null),
            "failed_items": [],
        }),
        (Provider::Meraki, "block_ip") => json!({
            "network_id": str_param("network_id"),
            "rule": {"policy": "deny", "srcCidr": "Any", "destCidr": format!("{}/32", str_param("ip")), "comment": format!("txdx block {}", str_param("ip"))},
        }),
        (Provider::Meraki, "unblock_ip") => {
            json!({"network_id": str_param("network_id"), "removed": str_param("ip")})
        }
        (Provider::Meraki, "create_policy_object") => json!({
            "id": format!("{}", u64::from_be_bytes(digest(&str_param("name"))[..8].try_into().unwrap_or([0; 8])) % 1_000_000_000),
            "name": str_param("name"), "cidr": str_param("cidr"), "category": "network", "type": "cidr",
        }),
        (provider, action) => {
            return Err(ProviderError::Permanent {
                message: format!("{provider} has no action `{action}`"),
            });
        }
    };
    let mut result = result;
    if let Value::Object(map) = &mut result {
        map.insert("simulated".into(), Value::Bool(true));
    }
    Ok(result)
}

/// The simulated connection test: no network, but the credentials must
/// hold one of the provider's accepted combinations, as live would need.
///
/// # Errors
/// Permanent when the credentials lack every accepted combination.
pub fn test_connection(
    provider: Provider,
    _settings: &IntegrationSettings,
    credentials: &Credentials,
) -> Result<Value, ProviderError> {
    let combos = required_credentials(provider);
    if !combos
        .iter()
        .any(|combo| combo.iter().all(|k| credentials.get(k).is_some()))
    {
        return Err(ProviderError::Permanent {
            message: format!(
                "{provider} needs credentials with one of: {}",
                combos
                    .iter()
                    .map(|c| c.join(" + "))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    Ok(json!({"simulated": true, "provider": provider.as_str(), "connected": true}))
}

fn digest(input: &str) -> [u8; 32] {
    Sha256::digest(input.as_bytes()).into()
}
