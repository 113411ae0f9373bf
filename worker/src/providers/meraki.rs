//! Cisco Meraki Dashboard API v1 (`https://api.meraki.com/api/v1` unless
//! the integration sets `base_url`), with `Authorization: Bearer <api_key>`.
//!
//! A network's appliance L3 firewall rules are one list, read with GET and
//! replaced whole with PUT, so two edits at once lose one of them: the
//! worker serialises block/unblock per network (see
//! `providers::serialization_key`), and each edit re-reads the list just
//! before writing it. Meraki appends its "Default rule" to every GET and
//! refuses to be sent it back, so it is dropped before the PUT.

use std::net::IpAddr;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::providers::{IntegrationSettings, MerakiIpRule, MerakiPolicyObject};

use super::{ActionCall, Credentials, ProviderError, Providers, http::Api, params, unknown_action};

const NAME: &str = "Meraki";
/// The Dashboard API when the integration names no other base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.meraki.com/api/v1";
/// The comment Meraki gives the implicit last rule.
const DEFAULT_RULE_COMMENT: &str = "Default rule";

/// Runs a Meraki action.
///
/// # Errors
/// A classified [`ProviderError`].
pub async fn execute(providers: &Providers, call: &ActionCall<'_>) -> Result<Value, ProviderError> {
    let api = api(providers, call.settings, call.credentials)?;
    match call.action {
        "block_ip" => block_ip(&api, &params(call)?).await,
        "unblock_ip" => unblock_ip(&api, &params(call)?).await,
        "create_policy_object" => create_policy_object(&api, &params(call)?).await,
        _ => Err(unknown_action(call)),
    }
}

/// `GET /organizations`: the organisations the key can see.
///
/// # Errors
/// A classified [`ProviderError`].
pub async fn test_connection(
    providers: &Providers,
    settings: &IntegrationSettings,
    credentials: &Credentials,
) -> Result<Value, ProviderError> {
    let api = api(providers, settings, credentials)?;
    let request = authenticated(&api, api.client().get(api.url(&["organizations"])?))?;
    let organizations: Vec<Value> = api
        .json(api.send_ok(request).await?, "organizations")
        .await?;
    Ok(json!({
        "organizations": organizations
            .iter()
            .map(|o| json!({"id": o.get("id"), "name": o.get("name")}))
            .collect::<Vec<_>>(),
    }))
}

fn api<'a>(
    providers: &Providers,
    settings: &IntegrationSettings,
    credentials: &'a Credentials,
) -> Result<Api<'a>, ProviderError> {
    providers.api(
        NAME,
        Some(settings.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL)),
        settings,
        credentials,
    )
}

fn authenticated(
    api: &Api<'_>,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    let key = api
        .credentials()
        .get("api_key")
        .ok_or_else(|| ProviderError::Permanent {
            message: "Meraki: credentials lack `api_key`".into(),
        })?;
    Ok(request.bearer_auth(key))
}

/// `203.0.113.7/32` (or `/128` for IPv6).
fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn is_any(rule: &Value, field: &str) -> bool {
    rule.get(field)
        .and_then(Value::as_str)
        .is_some_and(|v| v.eq_ignore_ascii_case("any"))
}

/// A rule that denies all traffic to `cidr`: TxDx's block rule, whatever
/// its comment (so a block made with a custom comment, or by hand, counts).
fn is_block_rule(rule: &Value, cidr: &str) -> bool {
    rule.get("policy")
        .and_then(Value::as_str)
        .is_some_and(|p| p.eq_ignore_ascii_case("deny"))
        && ["protocol", "srcPort", "srcCidr", "destPort"]
            .iter()
            .all(|f| is_any(rule, f))
        && rule
            .get("destCidr")
            .and_then(Value::as_str)
            .is_some_and(|d| d.trim().eq_ignore_ascii_case(cidr))
}

/// The network's rules without Meraki's trailing default rule.
async fn read_rules(api: &Api<'_>, network_id: &str) -> Result<Vec<Value>, ProviderError> {
    let url = rules_url(api, network_id)?;
    let request = authenticated(api, api.client().get(url))?;
    #[derive(Deserialize)]
    struct Rules {
        rules: Vec<Value>,
    }
    let mut rules = api
        .json::<Rules>(api.send_ok(request).await?, "l3FirewallRules")
        .await?
        .rules;
    if rules
        .last()
        .and_then(|r| r.get("comment"))
        .and_then(Value::as_str)
        == Some(DEFAULT_RULE_COMMENT)
    {
        rules.pop();
    }
    Ok(rules)
}

async fn write_rules(
    api: &Api<'_>,
    network_id: &str,
    rules: &[Value],
) -> Result<(), ProviderError> {
    let url = rules_url(api, network_id)?;
    let request = authenticated(api, api.client().put(url))?.json(&json!({"rules": rules}));
    api.send_ok(request).await?;
    Ok(())
}

fn rules_url(api: &Api<'_>, network_id: &str) -> Result<reqwest::Url, ProviderError> {
    api.url(&[
        "networks",
        network_id,
        "appliance",
        "firewall",
        "l3FirewallRules",
    ])
}

async fn block_ip(api: &Api<'_>, p: &MerakiIpRule) -> Result<Value, ProviderError> {
    let cidr = host_cidr(p.ip);
    let mut rules = read_rules(api, &p.network_id).await?;
    if let Some(existing) = rules.iter().find(|r| is_block_rule(r, &cidr)) {
        return Ok(json!({
            "network_id": p.network_id,
            "rule": existing,
            "added": false,
            "rule_count": rules.len(),
        }));
    }
    let rule = json!({
        "comment": p.comment.clone().unwrap_or_else(|| format!("txdx block {}", p.ip)),
        "policy": "deny",
        "protocol": "any",
        "srcPort": "Any",
        "srcCidr": "Any",
        "destPort": "Any",
        "destCidr": cidr,
        "syslogEnabled": false,
    });
    // First, so no earlier allow rule lets the address through.
    rules.insert(0, rule.clone());
    write_rules(api, &p.network_id, &rules).await?;
    Ok(json!({
        "network_id": p.network_id,
        "rule": rule,
        "added": true,
        "rule_count": rules.len(),
    }))
}

async fn unblock_ip(api: &Api<'_>, p: &MerakiIpRule) -> Result<Value, ProviderError> {
    let cidr = host_cidr(p.ip);
    let mut rules = read_rules(api, &p.network_id).await?;
    let before = rules.len();
    rules.retain(|r| !is_block_rule(r, &cidr));
    let removed = before - rules.len();
    if removed > 0 {
        write_rules(api, &p.network_id, &rules).await?;
    }
    Ok(json!({
        "network_id": p.network_id,
        "removed": p.ip.to_string(),
        "removed_rules": removed,
        "rule_count": rules.len(),
    }))
}

async fn create_policy_object(
    api: &Api<'_>,
    p: &MerakiPolicyObject,
) -> Result<Value, ProviderError> {
    let url = api.url(&["organizations", &p.organization_id, "policyObjects"])?;
    let request = authenticated(api, api.client().post(url.clone()))?.json(&json!({
        "name": p.name,
        "category": "network",
        "type": "cidr",
        "cidr": p.cidr,
    }));
    let response = api.send(request).await?;
    if response.status().is_success() {
        return api.json(response, "policyObjects").await;
    }
    let (status, headers) = (response.status(), response.headers().clone());
    let body = api.error_body(response).await;
    let message = api
        .provider_message(&body)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name_taken = matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY
    ) && (message.contains("taken") || message.contains("already exists"));
    if !name_taken {
        return Err(api.status_error(status, &headers, &body));
    }
    // A retry after a lost answer finds its own object: that is success.
    let request = authenticated(api, api.client().get(url))?.query(&[("perPage", "5000")]);
    let objects: Vec<Value> = api
        .json(api.send_ok(request).await?, "policyObjects")
        .await?;
    let same_name = objects
        .into_iter()
        .find(|o| o.get("name").and_then(Value::as_str) == Some(p.name.as_str()));
    match same_name {
        Some(mut object) if object.get("cidr").and_then(Value::as_str) == Some(p.cidr.as_str()) => {
            if let Value::Object(map) = &mut object {
                map.insert("already_existed".into(), Value::Bool(true));
            }
            Ok(object)
        }
        Some(object) => Err(ProviderError::Permanent {
            message: format!(
                "Meraki: a policy object named `{}` already exists with cidr {}",
                p.name,
                object
                    .get("cidr")
                    .and_then(Value::as_str)
                    .unwrap_or("(none)")
            ),
        }),
        None => Err(api.status_error(status, &headers, &body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_rule_is_recognised_by_shape_not_comment() {
        let rule = json!({"comment": "manual", "policy": "Deny", "protocol": "Any", "srcPort": "Any", "srcCidr": "Any", "destPort": "Any", "destCidr": "203.0.113.7/32"});
        assert!(is_block_rule(&rule, "203.0.113.7/32"));
        assert!(!is_block_rule(&rule, "203.0.113.8/32"));
        let narrower = json!({"policy": "deny", "protocol": "tcp", "srcPort": "Any", "srcCidr": "Any", "destPort": "443", "destCidr": "203.0.113.7/32"});
        assert!(!is_block_rule(&narrower, "203.0.113.7/32"));
        assert_eq!(host_cidr("2001:db8::1".parse().unwrap()), "2001:db8::1/128");
    }
}
