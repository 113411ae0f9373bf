//! Splunk Enterprise / Cloud: search jobs on the management port
//! (`base_url`, usually :8089) and events through the HTTP Event Collector
//! (`hec_url`, usually :8088, else `base_url`).
//!
//! Management calls authenticate with `Authorization: Bearer <token>` when
//! the credentials hold `token`, else basic auth with `username`/`password`;
//! HEC calls with `Authorization: Splunk <hec_token>`. HEC answers carry a
//! `code` that says more than the HTTP status; it is classified here.

use std::time::{Duration, Instant};

use reqwest::{RequestBuilder, StatusCode, header::HeaderMap};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use shared::providers::{IntegrationSettings, SplunkRunSearch, SplunkSendEvent};

use super::{
    ActionCall, Credentials, ProviderError, Providers,
    http::{self, Api},
    params, unknown_action,
};

const NAME: &str = "Splunk";
/// Rows kept when the action does not say.
const DEFAULT_MAX_RESULTS: u32 = 100;
/// Rows kept at most.
const MAX_RESULTS: u32 = 1000;
/// Between polls of a search job: starts short, grows to this.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs a Splunk action.
///
/// # Errors
/// A classified [`ProviderError`].
pub async fn execute(providers: &Providers, call: &ActionCall<'_>) -> Result<Value, ProviderError> {
    match call.action {
        "run_search" => {
            let api = providers.api(
                NAME,
                call.settings.base_url.as_deref(),
                call.settings,
                call.credentials,
            )?;
            run_search(&api, &params(call)?, providers.search_time_limit()).await
        }
        "send_event" => {
            let api = providers.api(
                NAME,
                hec_base(call.settings),
                call.settings,
                call.credentials,
            )?;
            send_event(&api, &params(call)?, &call.action_id.to_string()).await
        }
        _ => Err(unknown_action(call)),
    }
}

/// `GET /services/server/info`, or for an integration holding only a HEC
/// token, an empty HEC post: HEC checks the token before the body, so
/// "No data" (code 5) proves the token.
///
/// # Errors
/// A classified [`ProviderError`].
pub async fn test_connection(
    providers: &Providers,
    settings: &IntegrationSettings,
    credentials: &Credentials,
) -> Result<Value, ProviderError> {
    let has_management_credentials = credentials.get("token").is_some()
        || (credentials.get("username").is_some() && credentials.get("password").is_some());
    if !has_management_credentials && credentials.get("hec_token").is_some() {
        let api = providers.api(NAME, hec_base(settings), settings, credentials)?;
        let request = hec_request(&api, None)?.body("");
        let response = api.send(request).await?;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = api.text(response).await?;
        return match api.parse_json::<HecAnswer>(&body, "the event collector") {
            // The token is checked before the (empty) body: 0, 5 "No data"
            // and 6 "Invalid data format" all mean it was accepted.
            Ok(answer) if matches!(answer.code, Some(0 | 5 | 6)) => {
                Ok(json!({"hec": "token accepted"}))
            }
            Ok(answer) if answer.code.is_some() => Err(hec_error(&api, &answer, &headers, status)),
            _ if !status.is_success() => Err(api.status_error(status, &headers, &body)),
            Ok(_) | Err(_) => Ok(json!({"hec": "token accepted"})),
        };
    }
    let api = providers.api(NAME, settings.base_url.as_deref(), settings, credentials)?;
    let url = api.url(&["services", "server", "info"])?;
    let request = authenticated(&api, api.client().get(url))?.query(&[("output_mode", "json")]);
    let info: Entries<Value> = api.json(api.send_ok(request).await?, "server/info").await?;
    let content = info
        .entry
        .into_iter()
        .next()
        .map(|e| e.content)
        .ok_or_else(|| api.malformed("server/info", "it has no entry"))?;
    Ok(json!({
        "server_name": content.get("serverName"),
        "version": content.get("version"),
        "build": content.get("build"),
    }))
}

fn hec_base(settings: &IntegrationSettings) -> Option<&str> {
    settings.hec_url.as_deref().or(settings.base_url.as_deref())
}

/// Adds management-port authentication.
fn authenticated(api: &Api<'_>, request: RequestBuilder) -> Result<RequestBuilder, ProviderError> {
    let credentials = api.credentials();
    if let Some(token) = credentials.get("token") {
        Ok(request.bearer_auth(token))
    } else if let (Some(user), Some(password)) =
        (credentials.get("username"), credentials.get("password"))
    {
        Ok(request.basic_auth(user, Some(password)))
    } else {
        Err(ProviderError::Permanent {
            message: "Splunk: credentials lack `token` (or `username` + `password`) for the management API".into(),
        })
    }
}

/// SPL must start with a command: a bare query gets the implicit `search`.
fn spl(query: &str) -> String {
    let query = query.trim();
    if query.starts_with('|') || query.split_whitespace().next() == Some("search") {
        query.to_owned()
    } else {
        format!("search {query}")
    }
}

#[derive(Debug, Deserialize)]
struct Entries<T> {
    entry: Vec<Entry<T>>,
}

#[derive(Debug, Deserialize)]
struct Entry<T> {
    content: T,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobContent {
    dispatch_state: String,
    #[serde(default)]
    result_count: Option<u64>,
    #[serde(default)]
    messages: Value,
}

impl JobContent {
    /// The job's messages (`[{type, text}]`), joined.
    fn messages(&self) -> Option<String> {
        let texts: Vec<String> = self
            .messages
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let text = m.get("text").and_then(Value::as_str)?;
                Some(match m.get("type").and_then(Value::as_str) {
                    Some(kind) => format!("{kind}: {text}"),
                    None => text.to_owned(),
                })
            })
            .collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    }
}

async fn run_search(
    api: &Api<'_>,
    p: &SplunkRunSearch,
    time_limit: Duration,
) -> Result<Value, ProviderError> {
    let count = p
        .max_results
        .unwrap_or(DEFAULT_MAX_RESULTS)
        .clamp(1, MAX_RESULTS)
        .to_string();
    let mut form = vec![("search", spl(&p.query)), ("output_mode", "json".into())];
    if let Some(earliest) = &p.earliest_time {
        form.push(("earliest_time", earliest.clone()));
    }
    if let Some(latest) = &p.latest_time {
        form.push(("latest_time", latest.clone()));
    }
    let jobs = api.url(&["services", "search", "jobs"])?;
    let request = authenticated(api, api.client().post(jobs))?.form(&form);
    #[derive(Deserialize)]
    struct Created {
        sid: String,
    }
    let created: Created = api.json(api.send_ok(request).await?, "search/jobs").await?;
    let sid = created.sid;
    let job_url = api.url(&["services", "search", "jobs", &sid])?;

    let deadline = Instant::now() + time_limit;
    let mut interval = Duration::from_millis(200);
    let content = loop {
        let request = authenticated(api, api.client().get(job_url.clone()))?
            .query(&[("output_mode", "json")]);
        let job: Entries<JobContent> = api
            .json(api.send_ok(request).await?, "the search job's status")
            .await?;
        let content = job
            .entry
            .into_iter()
            .next()
            .map(|e| e.content)
            .ok_or_else(|| api.malformed("the search job's status", "it has no entry"))?;
        match content.dispatch_state.as_str() {
            "DONE" => break content,
            "FAILED" => {
                return Err(ProviderError::Permanent {
                    message: api.quote(&format!(
                        "Splunk: search job {sid} failed: {}",
                        content.messages().unwrap_or_else(|| "no message".into())
                    )),
                });
            }
            state @ ("INTERNAL_CANCEL" | "USER_CANCEL" | "BAD_INPUT_CANCEL" | "QUIT") => {
                return Err(ProviderError::Permanent {
                    message: api.quote(&format!(
                        "Splunk: search job {sid} ended as {state}{}",
                        content
                            .messages()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )),
                });
            }
            _ => {}
        }
        if Instant::now() + interval > deadline {
            cancel(api, &job_url).await;
            return Err(ProviderError::Transient {
                message: format!(
                    "Splunk: search job {sid} was not done within {} s (cancelled)",
                    time_limit.as_secs_f32()
                ),
                retry_after: None,
            });
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    };

    let results_url = api.url(&["services", "search", "jobs", &sid, "results"])?;
    let request = authenticated(api, api.client().get(results_url))?
        .query(&[("output_mode", "json"), ("count", count.as_str())]);
    let response = api.send_ok(request).await?;
    // Older versions answer 204 for a search without results.
    let rows = if response.status() == StatusCode::NO_CONTENT {
        Vec::new()
    } else {
        #[derive(Deserialize)]
        struct Results {
            results: Vec<Value>,
        }
        let results: Results = api.json(response, "the search job's results").await?;
        results.results
    };
    let total = content.result_count.unwrap_or(rows.len() as u64);
    Ok(json!({
        "sid": sid,
        "dispatch_state": "DONE",
        "result_count": rows.len(),
        "total_result_count": total,
        "truncated": total > rows.len() as u64,
        "results": rows,
    }))
}

/// Best effort: a search we stopped waiting for should not keep running.
async fn cancel(api: &Api<'_>, job_url: &reqwest::Url) {
    let mut control = job_url.clone();
    if let Ok(mut segments) = control.path_segments_mut() {
        segments.push("control");
    }
    if let Ok(request) = authenticated(api, api.client().post(control)) {
        let _ignored = request
            .form(&[("action", "cancel"), ("output_mode", "json")])
            .send()
            .await;
    }
}

/// A HEC answer: `{"text": "Success", "code": 0}`, plus `ackId` when
/// indexer acknowledgement is on.
#[derive(Debug, Deserialize)]
struct HecAnswer {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(default, rename = "ackId")]
    ack_id: Option<Value>,
}

/// `POST /services/collector/event` with the HEC token; `channel` (the
/// action id, a GUID) identifies the sender for indexer acknowledgement
/// and lets an operator find every delivery of one action.
fn hec_request(api: &Api<'_>, channel: Option<&str>) -> Result<RequestBuilder, ProviderError> {
    let token = api
        .credentials()
        .get("hec_token")
        .ok_or_else(|| ProviderError::Permanent {
            message: "Splunk: credentials lack `hec_token` for the event collector".into(),
        })?;
    let url = api.url(&["services", "collector", "event"])?;
    let mut request = api.client().post(url).header(
        reqwest::header::AUTHORIZATION,
        http::secret_header(&format!("Splunk {token}"))?,
    );
    if let Some(channel) = channel {
        request = request.header("X-Splunk-Request-Channel", channel);
    }
    Ok(request)
}

async fn send_event(
    api: &Api<'_>,
    p: &SplunkSendEvent,
    channel: &str,
) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    body.insert("event".into(), p.event.clone());
    for (key, value) in [
        ("sourcetype", &p.sourcetype),
        ("source", &p.source),
        ("index", &p.index),
        ("host", &p.host),
    ] {
        if let Some(value) = value {
            body.insert(key.into(), Value::String(value.clone()));
        }
    }
    let request = hec_request(api, Some(channel))?.json(&body);
    let response = api.send(request).await?;
    let (status, headers) = (response.status(), response.headers().clone());
    if !status.is_success() {
        let text = api.error_body(response).await;
        return Err(match serde_json::from_str::<HecAnswer>(&text) {
            Ok(answer) if answer.code.is_some() => hec_error(api, &answer, &headers, status),
            _ => api.status_error(status, &headers, &text),
        });
    }
    let answer: HecAnswer = api.json(response, "the event collector").await?;
    match answer.code {
        Some(0) => {}
        Some(_) => return Err(hec_error(api, &answer, &headers, status)),
        None => return Err(api.malformed("the event collector", "it has no `code`")),
    }
    let mut result = json!({
        "code": 0,
        "text": answer.text.unwrap_or_else(|| "Success".into()),
        "channel": channel,
    });
    if let (Some(ack), Value::Object(map)) = (answer.ack_id, &mut result) {
        map.insert("ack_id".into(), ack);
    }
    Ok(result)
}

/// Classifies a HEC status code (Splunk's "Troubleshoot HTTP Event
/// Collector" table): token problems and bad data are permanent; internal
/// errors, busy servers and full queues are transient.
fn hec_error(
    api: &Api<'_>,
    answer: &HecAnswer,
    headers: &HeaderMap,
    status: StatusCode,
) -> ProviderError {
    let code = answer.code.unwrap_or_default();
    let text = answer
        .text
        .as_deref()
        .map(|t| api.quote(t))
        .unwrap_or_else(|| "no text".into());
    match code {
        1..=4 => ProviderError::Permanent {
            message: format!("Splunk: bad credentials: HEC token refused (code {code}: {text})"),
        },
        8 | 9 | 18..=20 => ProviderError::Transient {
            message: format!("Splunk: event collector unavailable (code {code}: {text})"),
            retry_after: http::retry_after(headers),
        },
        5..=7 | 10..=16 => ProviderError::Permanent {
            message: format!("Splunk: event refused (code {code}: {text})"),
        },
        _ if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            ProviderError::Transient {
                message: format!(
                    "Splunk: event collector error (HTTP {status}, code {code}: {text})"
                ),
                retry_after: http::retry_after(headers),
            }
        }
        _ => ProviderError::Permanent {
            message: format!("Splunk: event collector error (code {code}: {text})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_queries_get_the_search_command() {
        assert_eq!(
            spl("index=main src=1.2.3.4"),
            "search index=main src=1.2.3.4"
        );
        assert_eq!(spl(" search index=main"), "search index=main");
        assert_eq!(spl("| tstats count"), "| tstats count");
        assert_eq!(spl("searchable=1"), "search searchable=1");
    }
}
