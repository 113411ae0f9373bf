//! Wazuh manager API (4.x), usually on :55000.
//!
//! Every call carries a JWT from `POST /security/user/authenticate` (basic
//! auth with `username`/`password`). Tokens live 900 s; one is cached per
//! integration and renewed after 800 s, or at once when the manager answers
//! 401 (revoked, manager restarted). Answers are an envelope
//! `{data: {affected_items, failed_items, ..}, message, error}` where
//! `error` 1 means partial success and 2 total failure, even on HTTP 200.

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use shared::providers::{IntegrationSettings, WazuhActiveResponse, WazuhListAgents};

use super::{ActionCall, Credentials, ProviderError, Providers, http::Api, params, unknown_action};

const NAME: &str = "Wazuh";
/// Renew a cached JWT after this long (the manager's default lifetime is
/// 900 s; the margin covers clock skew and a slow call).
pub const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(800);
/// Agents listed when the action does not say.
const DEFAULT_LIMIT: u32 = 100;
/// Agents listed at most.
const MAX_LIMIT: u32 = 1000;

/// Runs a Wazuh action.
///
/// # Errors
/// A classified [`ProviderError`]; a partial active response is
/// [`ProviderError::NeedsHuman`].
pub async fn execute(providers: &Providers, call: &ActionCall<'_>) -> Result<Value, ProviderError> {
    let mut api = providers.api(
        NAME,
        call.settings.base_url.as_deref(),
        call.settings,
        call.credentials,
    )?;
    match call.action {
        "list_agents" => list_agents(providers, &mut api, &params(call)?).await,
        "run_active_response" => run_active_response(providers, &mut api, &params(call)?).await,
        _ => Err(unknown_action(call)),
    }
}

/// Authenticates afresh (a cached token would prove nothing).
///
/// # Errors
/// A classified [`ProviderError`]; wrong credentials are permanent.
pub async fn test_connection(
    providers: &Providers,
    settings: &IntegrationSettings,
    credentials: &Credentials,
) -> Result<Value, ProviderError> {
    let api = providers.api(NAME, settings.base_url.as_deref(), settings, credentials)?;
    authenticate(&api).await?;
    Ok(json!({"authenticated": true}))
}

/// `POST /security/user/authenticate` → `{data: {token}}`.
async fn authenticate(api: &Api<'_>) -> Result<String, ProviderError> {
    let credentials = api.credentials();
    let (Some(user), Some(password)) = (credentials.get("username"), credentials.get("password"))
    else {
        return Err(ProviderError::Permanent {
            message: "Wazuh: credentials lack `username` + `password`".into(),
        });
    };
    let url = api.url(&["security", "user", "authenticate"])?;
    let request = api.client().post(url).basic_auth(user, Some(password));
    #[derive(Deserialize)]
    struct Authenticated {
        data: Token,
    }
    #[derive(Deserialize)]
    struct Token {
        token: String,
    }
    let answer: Authenticated = api
        .json(api.send_ok(request).await?, "authenticate")
        .await?;
    if answer.data.token.is_empty() {
        return Err(api.malformed("authenticate", "the token is empty"));
    }
    Ok(answer.data.token)
}

/// The cached JWT of this integration, or a fresh one.
async fn token(
    providers: &Providers,
    api: &mut Api<'_>,
    account: [u8; 32],
) -> Result<String, ProviderError> {
    let value = {
        let api: &Api<'_> = api;
        providers
            .tokens()
            .get_or_obtain(account, Some(TOKEN_RENEW_AFTER), || authenticate(api))
            .await?
    };
    api.remember_secret(&value);
    Ok(value)
}

/// Sends the request `build` makes with a JWT; on 401 the token is renewed
/// and the request sent once more.
async fn authorized(
    providers: &Providers,
    api: &mut Api<'_>,
    build: impl Fn(&reqwest::Client) -> RequestBuilder,
) -> Result<Response, ProviderError> {
    let account = api.account_key(&["username", "password"]);
    let jwt = token(providers, api, account).await?;
    let mut response = api.send(build(api.client()).bearer_auth(&jwt)).await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        providers.tokens().forget(account, &jwt).await;
        let jwt = token(providers, api, account).await?;
        response = api.send(build(api.client()).bearer_auth(&jwt)).await?;
    }
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(api.error_from(response).await)
    }
}

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: i64,
}

#[derive(Debug, Default, Deserialize)]
struct Data {
    #[serde(default)]
    affected_items: Vec<Value>,
    #[serde(default)]
    total_affected_items: Option<u64>,
    #[serde(default)]
    failed_items: Vec<FailedItem>,
}

#[derive(Debug, Deserialize)]
struct FailedItem {
    #[serde(default)]
    error: FailedError,
    #[serde(default)]
    id: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct FailedError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

/// `"002, 003: Agent is not active (code 1707)"` per failed item.
fn describe_failures(items: &[FailedItem]) -> String {
    items
        .iter()
        .map(|item| {
            let ids = item
                .id
                .iter()
                .map(|id| id.as_str().map_or_else(|| id.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(", ");
            let message = item.error.message.as_deref().unwrap_or("failed");
            match item.error.code {
                Some(code) => format!("{ids}: {message} (code {code})"),
                None => format!("{ids}: {message}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn item_names(items: &[Value]) -> String {
    items
        .iter()
        .map(|item| match item {
            Value::String(id) => id.clone(),
            other => other
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| other.to_string(), str::to_owned),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn list_agents(
    providers: &Providers,
    api: &mut Api<'_>,
    p: &WazuhListAgents,
) -> Result<Value, ProviderError> {
    let url = api.url(&["agents"])?;
    let mut query = vec![(
        "limit",
        p.limit
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT)
            .to_string(),
    )];
    if let Some(status) = &p.status {
        query.push(("status", status.clone()));
    }
    if let Some(search) = &p.search {
        query.push(("search", search.clone()));
    }
    let response = authorized(providers, api, |client| {
        client.get(url.clone()).query(&query)
    })
    .await?;
    let envelope: Envelope = api.json(response, "agents").await?;
    let data = envelope
        .data
        .ok_or_else(|| api.malformed("agents", "it has no `data`"))?;
    if envelope.error != 0 && data.affected_items.is_empty() {
        return Err(ProviderError::Permanent {
            message: api.quote(&format!(
                "Wazuh: listing agents failed: {}",
                if data.failed_items.is_empty() {
                    envelope.message.unwrap_or_else(|| "no message".into())
                } else {
                    describe_failures(&data.failed_items)
                }
            )),
        });
    }
    Ok(json!({
        "total_affected_items": data.total_affected_items.unwrap_or(data.affected_items.len() as u64),
        "affected_items": data.affected_items,
    }))
}

async fn run_active_response(
    providers: &Providers,
    api: &mut Api<'_>,
    p: &WazuhActiveResponse,
) -> Result<Value, ProviderError> {
    if p.agents.is_empty() {
        // The API reads a missing agents_list as "every agent".
        return Err(ProviderError::Permanent {
            message: "Wazuh: run_active_response needs at least one agent id".into(),
        });
    }
    let url = api.url(&["active-response"])?;
    let agents = p.agents.join(",");
    let mut body = Map::new();
    body.insert("command".into(), json!(p.command));
    body.insert("arguments".into(), json!(p.arguments));
    if let Some(srcip) = p.srcip {
        body.insert(
            "alert".into(),
            json!({"data": {"srcip": srcip.to_string()}}),
        );
    }
    let response = authorized(providers, api, |client| {
        client
            .put(url.clone())
            .query(&[("agents_list", agents.as_str())])
            .json(&body)
    })
    .await?;
    let envelope: Envelope = api.json(response, "active-response").await?;
    let data = envelope
        .data
        .ok_or_else(|| api.malformed("active-response", "it has no `data`"))?;
    if envelope.error == 0 && data.failed_items.is_empty() {
        return Ok(json!({
            "command": p.command,
            "total_affected_items": data.total_affected_items.unwrap_or(data.affected_items.len() as u64),
            "affected_items": data.affected_items,
            "failed_items": [],
        }));
    }
    let failures = if data.failed_items.is_empty() {
        envelope
            .message
            .clone()
            .unwrap_or_else(|| "no message".into())
    } else {
        describe_failures(&data.failed_items)
    };
    if envelope.error == 2 || data.affected_items.is_empty() {
        return Err(ProviderError::Permanent {
            message: api.quote(&format!(
                "Wazuh: active response `{}` reached no agent: {failures}",
                p.command
            )),
        });
    }
    // Some agents ran it, some did not: retrying would run it twice on the
    // first ones, so a human follows up on the rest.
    Err(ProviderError::NeedsHuman {
        reason: format!(
            "partial success: active response `{}` ran on {}; failed on {}",
            p.command,
            api.quote(&item_names(&data.affected_items)),
            api.quote(&failures)
        ),
    })
}
