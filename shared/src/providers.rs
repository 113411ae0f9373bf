//! The provider catalogue: which actions each provider offers, their typed
//! parameters, the credentials an integration needs, and its settings.
//!
//! The api validates a ticket's actions here before anything is written; the
//! worker parses the same types before calling the provider, so both sides
//! agree on one definition. Params structs deny unknown fields.

use std::net::IpAddr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

use crate::domain::Provider;

/// A parameter or credential document that does not match the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CatalogueError {
    /// Dotted path of the offending field (`actions[0].params.ip`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Splunk `run_search`: a search job, polled to completion, rows returned (bounded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplunkRunSearch {
    /// SPL, e.g. `search index=main src_ip=10.0.0.5`.
    pub query: String,
    /// e.g. `-24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_time: Option<String>,
    /// e.g. `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_time: Option<String>,
    /// Rows kept in the result (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_results: Option<u32>,
}

/// Splunk `send_event`: one event through the HTTP Event Collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplunkSendEvent {
    /// The event body (any JSON).
    pub event: serde_json::Value,
    /// HEC `sourcetype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sourcetype: Option<String>,
    /// HEC `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// HEC `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// HEC `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// PAN-OS `block_ip` / `unblock_ip`: tag (or untag) an IP through the User-ID
/// API so a dynamic address group matching the tag picks it up, no commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaloAltoIpTag {
    /// The address to (un)block.
    #[schema(value_type = String, example = "203.0.113.7")]
    pub ip: IpAddr,
    /// The tag the dynamic address group matches (default `txdx-blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Seconds until the tag (the block) expires by itself; register only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// Virtual system, e.g. `vsys1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsys: Option<String>,
    /// Panorama: serial number of the managed firewall to target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Wazuh `list_agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WazuhListAgents {
    /// `active`, `disconnected`, `pending` or `never_connected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Free-text search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// At most this many agents (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Wazuh `run_active_response`, e.g. `!firewall-drop` with `srcip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WazuhActiveResponse {
    /// Agent ids, e.g. `["001", "002"]`.
    pub agents: Vec<String>,
    /// The command, e.g. `!firewall-drop`.
    pub command: String,
    /// The source IP the command acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub srcip: Option<IpAddr>,
    /// Extra arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
}

/// Meraki `block_ip` / `unblock_ip` in a network's appliance L3 firewall rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MerakiIpRule {
    /// The network, e.g. `L_646829496481105433`.
    pub network_id: String,
    /// The address to (un)block.
    #[schema(value_type = String, example = "203.0.113.7")]
    pub ip: IpAddr,
    /// Rule comment (default `txdx block <ip>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Meraki `create_policy_object`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MerakiPolicyObject {
    /// The organisation.
    pub organization_id: String,
    /// Object name.
    pub name: String,
    /// CIDR, e.g. `203.0.113.0/24`.
    pub cidr: String,
}

/// One catalogue entry: a provider's action and its parameter schema name.
#[derive(Debug, Clone, Copy)]
pub struct ActionSpec {
    /// The provider.
    pub provider: Provider,
    /// The action's name as tickets spell it.
    pub name: &'static str,
    /// One line of what it does.
    pub summary: &'static str,
    /// The params schema (an OpenAPI component name).
    pub params_schema: &'static str,
    validate: fn(&serde_json::Value) -> Result<serde_json::Value, String>,
}

fn typed<T: DeserializeOwned + Serialize>(
    v: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let parsed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(parsed).map_err(|e| e.to_string())
}

/// Every action TxDx can run.
pub const CATALOGUE: &[ActionSpec] = &[
    ActionSpec {
        provider: Provider::Splunk,
        name: "run_search",
        summary: "Run a search job and return its rows",
        params_schema: "SplunkRunSearch",
        validate: typed::<SplunkRunSearch>,
    },
    ActionSpec {
        provider: Provider::Splunk,
        name: "send_event",
        summary: "Send an event to the HTTP Event Collector",
        params_schema: "SplunkSendEvent",
        validate: typed::<SplunkSendEvent>,
    },
    ActionSpec {
        provider: Provider::PaloAlto,
        name: "block_ip",
        summary: "Tag an IP so a dynamic address group blocks it",
        params_schema: "PaloAltoIpTag",
        validate: typed::<PaloAltoIpTag>,
    },
    ActionSpec {
        provider: Provider::PaloAlto,
        name: "unblock_ip",
        summary: "Remove the block tag from an IP",
        params_schema: "PaloAltoIpTag",
        validate: typed::<PaloAltoIpTag>,
    },
    ActionSpec {
        provider: Provider::Wazuh,
        name: "list_agents",
        summary: "List agents",
        params_schema: "WazuhListAgents",
        validate: typed::<WazuhListAgents>,
    },
    ActionSpec {
        provider: Provider::Wazuh,
        name: "run_active_response",
        summary: "Run an active-response command on agents",
        params_schema: "WazuhActiveResponse",
        validate: typed::<WazuhActiveResponse>,
    },
    ActionSpec {
        provider: Provider::Meraki,
        name: "block_ip",
        summary: "Add a deny rule for an IP to a network's L3 firewall",
        params_schema: "MerakiIpRule",
        validate: typed::<MerakiIpRule>,
    },
    ActionSpec {
        provider: Provider::Meraki,
        name: "unblock_ip",
        summary: "Remove TxDx's deny rule for an IP",
        params_schema: "MerakiIpRule",
        validate: typed::<MerakiIpRule>,
    },
    ActionSpec {
        provider: Provider::Meraki,
        name: "create_policy_object",
        summary: "Create a network policy object",
        params_schema: "MerakiPolicyObject",
        validate: typed::<MerakiPolicyObject>,
    },
];

/// The catalogue entry for `provider` / `action`.
pub fn find_action(provider: Provider, action: &str) -> Option<&'static ActionSpec> {
    CATALOGUE
        .iter()
        .find(|spec| spec.provider == provider && spec.name == action)
}

/// Checks `params` against the action's schema and returns them normalised.
///
/// # Errors
/// A [`CatalogueError`] whose `field` is `{prefix}.action` for an unknown
/// action or `{prefix}.params` for parameters that do not match.
pub fn validate_action(
    provider: Provider,
    action: &str,
    params: &serde_json::Value,
    prefix: &str,
) -> Result<serde_json::Value, CatalogueError> {
    let spec = find_action(provider, action).ok_or_else(|| CatalogueError {
        field: format!("{prefix}.action"),
        message: format!(
            "`{action}` is not an action of {provider}; known: {}",
            CATALOGUE
                .iter()
                .filter(|s| s.provider == provider)
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    (spec.validate)(params).map_err(|message| CatalogueError {
        field: format!("{prefix}.params"),
        message,
    })
}

/// Non-secret settings of an integration (`extra_json`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSettings {
    /// The provider's API base URL (live mode), e.g. `https://splunk.example:8089`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Splunk HTTP Event Collector URL, e.g. `https://splunk.example:8088`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hec_url: Option<String>,
    /// Verify the provider's TLS certificate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_tls: Option<bool>,
    /// PEM of a CA to trust for a self-signed appliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<String>,
    /// Per-request timeout in seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// Attempts started against this integration in any one second, across
    /// all workers (a sliding window); an action over the limit waits without
    /// using an attempt. Absent or 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<u32>,
    /// Actions of this integration running at once across all workers; an
    /// action over the limit waits without using an attempt. Absent or 0: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Simulated mode only: how long each simulated call takes, in
    /// milliseconds (default 0, at most 60000), for demos and load tests
    /// that need realistic provider latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated_latency_ms: Option<u32>,
}

impl IntegrationSettings {
    /// Parses and checks settings.
    ///
    /// # Errors
    /// A [`CatalogueError`] naming the field under `prefix`.
    pub fn parse(value: &serde_json::Value, prefix: &str) -> Result<Self, CatalogueError> {
        let settings: Self = serde_json::from_value(value.clone()).map_err(|e| CatalogueError {
            field: prefix.to_owned(),
            message: e.to_string(),
        })?;
        for (name, url) in [
            ("base_url", &settings.base_url),
            ("hec_url", &settings.hec_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(CatalogueError {
                    field: format!("{prefix}.{name}"),
                    message: "must be an http(s) URL".into(),
                });
            }
        }
        if settings.simulated_latency_ms.is_some_and(|ms| ms > 60_000) {
            return Err(CatalogueError {
                field: format!("{prefix}.simulated_latency_ms"),
                message: "must be at most 60000".into(),
            });
        }
        if settings.timeout_secs.is_some_and(|t| t == 0 || t > 120) {
            return Err(CatalogueError {
                field: format!("{prefix}.timeout_secs"),
                message: "must be between 1 and 120".into(),
            });
        }
        Ok(settings)
    }
}

/// The credential fields each provider needs (all strings). Checked when an
/// integration is created or its credentials rotated.
pub fn required_credentials(provider: Provider) -> &'static [&'static [&'static str]] {
    // Each inner slice is one accepted combination.
    match provider {
        Provider::Splunk => &[&["token"], &["username", "password"], &["hec_token"]],
        Provider::PaloAlto => &[&["api_key"], &["username", "password"]],
        Provider::Wazuh => &[&["username", "password"]],
        Provider::Meraki => &[&["api_key"]],
    }
}

/// Checks a credentials document: a flat object of strings holding one of
/// the provider's accepted combinations.
///
/// # Errors
/// A [`CatalogueError`] naming the field under `prefix`.
pub fn validate_credentials(
    provider: Provider,
    credentials: &serde_json::Value,
    prefix: &str,
) -> Result<(), CatalogueError> {
    let object = credentials.as_object().ok_or_else(|| CatalogueError {
        field: prefix.to_owned(),
        message: "must be an object of strings".into(),
    })?;
    for (key, value) in object {
        if !value.is_string() || value.as_str().is_some_and(str::is_empty) {
            return Err(CatalogueError {
                field: format!("{prefix}.{key}"),
                message: "must be a non-empty string".into(),
            });
        }
    }
    let combos = required_credentials(provider);
    if combos
        .iter()
        .any(|combo| combo.iter().all(|k| object.contains_key(*k)))
    {
        Ok(())
    } else {
        Err(CatalogueError {
            field: prefix.to_owned(),
            message: format!(
                "{provider} needs one of: {}",
                combos
                    .iter()
                    .map(|c| c.join(" + "))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_params_are_normalised() {
        let v = validate_action(
            Provider::PaloAlto,
            "block_ip",
            &json!({"ip": "203.0.113.7"}),
            "actions[0]",
        )
        .unwrap();
        assert_eq!(v, json!({"ip": "203.0.113.7"}));
    }

    #[test]
    fn an_unknown_action_names_the_action_field() {
        let err = validate_action(Provider::Wazuh, "reboot", &json!({}), "actions[1]").unwrap_err();
        assert_eq!(err.field, "actions[1].action");
        assert!(err.message.contains("list_agents"));
    }

    #[test]
    fn a_bad_ip_names_the_params_field() {
        let err = validate_action(
            Provider::Meraki,
            "block_ip",
            &json!({"network_id": "N_1", "ip": "not-an-ip"}),
            "actions[0]",
        )
        .unwrap_err();
        assert_eq!(err.field, "actions[0].params");
        assert!(
            err.message.contains("invalid IP address"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_params_are_refused() {
        let err = validate_action(
            Provider::Splunk,
            "run_search",
            &json!({"query": "x", "drop_table": true}),
            "a",
        )
        .unwrap_err();
        assert!(err.message.contains("unknown field"), "{}", err.message);
    }

    #[test]
    fn credentials_need_one_accepted_combination() {
        assert!(
            validate_credentials(
                Provider::Wazuh,
                &json!({"username": "u", "password": "p"}),
                "credentials"
            )
            .is_ok()
        );
        let err = validate_credentials(Provider::Wazuh, &json!({"username": "u"}), "credentials")
            .unwrap_err();
        assert!(err.message.contains("username + password"));
        assert!(
            validate_credentials(Provider::Meraki, &json!({"api_key": 5}), "credentials").is_err()
        );
    }

    #[test]
    fn settings_reject_unknown_fields_and_bad_urls() {
        assert!(IntegrationSettings::parse(&json!({"base_url": "https://x"}), "settings").is_ok());
        assert!(IntegrationSettings::parse(&json!({"base_url": "ftp://x"}), "settings").is_err());
        assert!(IntegrationSettings::parse(&json!({"colour": "red"}), "settings").is_err());
    }
}
