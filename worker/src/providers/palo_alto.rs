//! Palo Alto Networks PAN-OS firewalls and Panorama through the XML API at
//! `{base_url}/api/`.
//!
//! Blocking is a User-ID `register` of a tag on the IP: a dynamic address
//! group matching the tag (referenced by a deny rule) picks it up at once,
//! with no commit. The API key comes from the credentials (`api_key`) or
//! from `type=keygen` with `username`/`password`, cached per integration
//! and regenerated once if the firewall refuses it. Every answer is
//! `<response status="success|error" code="..">`, parsed with quick-xml.

use std::collections::HashMap;

use quick_xml::events::Event;
use reqwest::Response;
use serde_json::{Value, json};
use shared::providers::{IntegrationSettings, PaloAltoIpTag};

use super::{
    ActionCall, Credentials, ProviderError, Providers,
    http::{self, Api},
    params, unknown_action,
};

const NAME: &str = "PAN-OS";
/// The tag a dynamic address group matches when the action names none.
pub const DEFAULT_TAG: &str = "txdx-blocked";
/// The cheapest operational command.
const SHOW_SYSTEM_INFO: &str = "<show><system><info/></system></show>";

/// Runs a PAN-OS action.
///
/// # Errors
/// A classified [`ProviderError`].
pub async fn execute(providers: &Providers, call: &ActionCall<'_>) -> Result<Value, ProviderError> {
    let register = match call.action {
        "block_ip" => true,
        "unblock_ip" => false,
        _ => return Err(unknown_action(call)),
    };
    let p: PaloAltoIpTag = params(call)?;
    let mut api = providers.api(
        NAME,
        call.settings.base_url.as_deref(),
        call.settings,
        call.credentials,
    )?;
    let tag = p
        .tag
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or(DEFAULT_TAG);
    let form = [
        ("type", "user-id".to_owned()),
        ("cmd", uid_message(&p, tag, register)),
    ];
    let mut query = Vec::new();
    if let Some(vsys) = &p.vsys {
        query.push(("vsys", vsys.clone()));
    }
    if let Some(target) = &p.target {
        query.push(("target", target.clone()));
    }
    let answer = call_with_key(providers, &mut api, &form, &query).await?;
    let verb = if register {
        "registered"
    } else {
        "unregistered"
    };
    let already = if answer.status == "success" {
        false
    } else if is_already_done(&answer, register) {
        // Registering a tag the IP has, or removing one it lacks: the
        // firewall is already in the state we want (a retried action).
        true
    } else {
        return Err(error(&api, &answer));
    };
    let mut result = serde_json::Map::new();
    result.insert("status".into(), json!("success"));
    result.insert(verb.into(), json!([{"ip": p.ip.to_string(), "tag": tag}]));
    result.insert(format!("already_{verb}"), json!(already));
    if register {
        result.insert("timeout_secs".into(), json!(p.timeout_secs));
    }
    let result = Value::Object(result);
    Ok(result)
}

/// `show system info`: proves the key (or the username and password) and
/// names the device.
///
/// # Errors
/// A classified [`ProviderError`].
pub async fn test_connection(
    providers: &Providers,
    settings: &IntegrationSettings,
    credentials: &Credentials,
) -> Result<Value, ProviderError> {
    let mut api = providers.api(NAME, settings.base_url.as_deref(), settings, credentials)?;
    let form = [
        ("type", "op".to_owned()),
        ("cmd", SHOW_SYSTEM_INFO.to_owned()),
    ];
    let answer = call_with_key(providers, &mut api, &form, &[]).await?;
    if answer.status != "success" {
        return Err(error(&api, &answer));
    }
    let field = |name: &str| answer.fields.get(name).cloned();
    Ok(json!({
        "hostname": field("hostname"),
        "model": field("model"),
        "sw_version": field("sw-version"),
        "serial": field("serial"),
    }))
}

/// The User-ID message tagging (or untagging) one IP. Version 2.0 is the
/// current User-ID API message format.
fn uid_message(p: &PaloAltoIpTag, tag: &str, register: bool) -> String {
    let (verb, timeout) = match (register, p.timeout_secs) {
        (true, Some(seconds)) => ("register", format!(" timeout=\"{seconds}\"")),
        (true, None) => ("register", String::new()),
        (false, _) => ("unregister", String::new()),
    };
    let tag = quick_xml::escape::escape(tag);
    format!(
        "<uid-message><version>2.0</version><type>update</type><payload><{verb}><entry ip=\"{ip}\"><tag><member{timeout}>{tag}</member></tag></entry></{verb}></payload></uid-message>",
        ip = p.ip
    )
}

/// PAN-OS's own words for "nothing to do" on a User-ID update.
fn is_already_done(answer: &PanResponse, register: bool) -> bool {
    let marker = if register {
        "already exists, ignore"
    } else {
        "does not exist, ignore unreg"
    };
    !answer.messages.is_empty() && answer.messages.iter().all(|m| m.contains(marker))
}

/// The API key: from the credentials, or generated (cached).
enum ApiKey {
    Given(String),
    Generated { value: String, account: [u8; 32] },
}

impl ApiKey {
    fn value(&self) -> &str {
        match self {
            Self::Given(value) | Self::Generated { value, .. } => value,
        }
    }
}

async fn api_key(providers: &Providers, api: &mut Api<'_>) -> Result<ApiKey, ProviderError> {
    let credentials = api.credentials();
    if let Some(key) = credentials.get("api_key") {
        return Ok(ApiKey::Given(key.to_owned()));
    }
    let (Some(user), Some(password)) = (credentials.get("username"), credentials.get("password"))
    else {
        return Err(ProviderError::Permanent {
            message: "PAN-OS: credentials lack `api_key` (or `username` + `password`)".into(),
        });
    };
    let account = api.account_key(&["username", "password"]);
    let value = {
        let api: &Api<'_> = api;
        providers
            .tokens()
            .get_or_obtain(account, None, || keygen(api, user, password))
            .await?
    };
    api.remember_secret(&value);
    Ok(ApiKey::Generated { value, account })
}

/// `type=keygen`, posted so the password stays out of URLs and logs.
async fn keygen(api: &Api<'_>, user: &str, password: &str) -> Result<String, ProviderError> {
    let request = api.client().post(api.url(&["api", ""])?).form(&[
        ("type", "keygen"),
        ("user", user),
        ("password", password),
    ]);
    let answer = read(api, api.send(request).await?, "keygen").await?;
    if answer.status != "success" {
        return Err(error(api, &answer));
    }
    answer
        .fields
        .get("key")
        .filter(|k| !k.is_empty())
        .cloned()
        .ok_or_else(|| api.malformed("keygen", "it has no <key>"))
}

/// One API call with the key in `X-PAN-KEY`; a generated key the firewall
/// refuses (expired, revoked) is regenerated once.
async fn call_with_key(
    providers: &Providers,
    api: &mut Api<'_>,
    form: &[(&str, String)],
    query: &[(&str, String)],
) -> Result<PanResponse, ProviderError> {
    let key = api_key(providers, api).await?;
    let answer = call(api, key.value(), form, query).await?;
    match key {
        ApiKey::Generated { value, account } if answer.is_auth_failure() => {
            providers.tokens().forget(account, &value).await;
            let key = api_key(providers, api).await?;
            call(api, key.value(), form, query).await
        }
        _ => Ok(answer),
    }
}

async fn call(
    api: &Api<'_>,
    key: &str,
    form: &[(&str, String)],
    query: &[(&str, String)],
) -> Result<PanResponse, ProviderError> {
    let request = api
        .client()
        .post(api.url(&["api", ""])?)
        .header("X-PAN-KEY", http::secret_header(key)?)
        .query(query)
        .form(form);
    read(api, api.send(request).await?, "the XML API call").await
}

/// Reads an answer: XML `<response>` on 2xx, and on 401/403 too (PAN-OS
/// explains refused keys in XML); other statuses are classified as HTTP.
async fn read(api: &Api<'_>, response: Response, what: &str) -> Result<PanResponse, ProviderError> {
    let status = response.status();
    if status.is_success() {
        let body = api.text(response).await?;
        return parse(&body).map_err(|detail| api.malformed(what, &detail));
    }
    let headers = response.headers().clone();
    let body = api.error_body(response).await;
    match (status.as_u16(), parse(&body)) {
        (401 | 403, Ok(mut answer)) => {
            answer.status = "error".into();
            answer.code.get_or_insert(403);
            Ok(answer)
        }
        _ => Err(api.status_error(status, &headers, &body)),
    }
}

/// The parts of a `<response>` we use.
#[derive(Debug, Default, PartialEq, Eq)]
struct PanResponse {
    /// `success` or `error`.
    status: String,
    /// The `code` attribute (PAN-OS XML API error codes).
    code: Option<u32>,
    /// Texts of `<msg>` and its `<line>`s, and `message` attributes of
    /// User-ID entries under `<msg>`.
    messages: Vec<String>,
    /// Leaf elements under `<result>`, first occurrence: `key`, `hostname`..
    fields: HashMap<String, String>,
}

impl PanResponse {
    fn is_auth_failure(&self) -> bool {
        self.status != "success"
            && (matches!(self.code, Some(403 | 16))
                || self
                    .messages
                    .iter()
                    .any(|m| m.to_ascii_lowercase().contains("invalid credential")))
    }
}

/// Classifies an error answer: refused credentials are permanent; internal
/// errors (codes 2-5, 11, 21), an expired session (22) and "busy / try
/// again" messages are transient; anything else is permanent with the
/// firewall's message.
fn error(api: &Api<'_>, answer: &PanResponse) -> ProviderError {
    let text = if answer.messages.is_empty() {
        "no message".to_owned()
    } else {
        answer.messages.join("; ")
    };
    let text = api.quote(&text);
    let code = answer
        .code
        .map(|c| format!(" (code {c})"))
        .unwrap_or_default();
    if answer.is_auth_failure() {
        return ProviderError::Permanent {
            message: format!("PAN-OS: bad credentials: {text}{code}"),
        };
    }
    let lower = text.to_ascii_lowercase();
    let retryable_text = ["try again", "busy", "timed out", "in progress", "not ready"]
        .iter()
        .any(|m| lower.contains(m));
    if matches!(answer.code, Some(2..=5 | 11 | 21 | 22)) || retryable_text {
        ProviderError::Transient {
            message: format!("PAN-OS: {text}{code}"),
            retry_after: None,
        }
    } else {
        ProviderError::Permanent {
            message: format!("PAN-OS: {text}{code}"),
        }
    }
}

/// Parses a `<response>` document.
fn parse(body: &str) -> Result<PanResponse, String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut answer: Option<PanResponse> = None;
    let mut open: Vec<(String, String)> = Vec::new();
    let mut in_msg = 0usize;
    let root = |element: &quick_xml::events::BytesStart<'_>, name: &str| {
        if name != "response" {
            return Err(format!("its root element is <{name}>, not <response>"));
        }
        let status = http::attribute(element, "status")
            .ok_or_else(|| "<response> has no status".to_owned())?;
        Ok(PanResponse {
            status: status.trim().to_owned(),
            code: http::attribute(element, "code").and_then(|c| c.trim().parse().ok()),
            ..PanResponse::default()
        })
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("it is not XML ({e})"))?;
        match event {
            Event::Start(element) => {
                let name = element.local_name().as_ref().to_owned();
                if open.is_empty() {
                    if answer.is_some() {
                        return Err("it has more than one root element".into());
                    }
                    answer = Some(root(&element, &name)?);
                }
                if name == "msg" {
                    in_msg += 1;
                }
                open.push((name, String::new()));
            }
            Event::Empty(element) => {
                let name = element.local_name().as_ref().to_owned();
                if open.is_empty() {
                    if answer.is_some() {
                        return Err("it has more than one root element".into());
                    }
                    answer = Some(root(&element, &name)?);
                } else if in_msg > 0
                    && let Some(message) = http::attribute(&element, "message")
                    && let Some(answer) = answer.as_mut()
                {
                    answer.messages.push(message);
                }
            }
            Event::Text(text) => {
                if let Some((_, buffer)) = open.last_mut() {
                    buffer.push_str(&text.xml10_content());
                }
            }
            Event::CData(data) => {
                if let Some((_, buffer)) = open.last_mut() {
                    buffer.push_str(&data.xml10_content());
                }
            }
            Event::GeneralRef(entity) => {
                if let Some((_, buffer)) = open.last_mut() {
                    buffer.push_str(&http::entity_text(&entity));
                }
            }
            Event::End(_) => {
                let (name, text) = open.pop().ok_or("it closes an element it never opened")?;
                if name == "msg" {
                    in_msg = in_msg.saturating_sub(1);
                }
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                if let Some(answer) = answer.as_mut()
                    && !text.is_empty()
                {
                    if name == "msg" || (in_msg > 0 && name == "line") {
                        answer.messages.push(text);
                    } else if in_msg == 0 && open.iter().any(|(n, _)| n == "result") {
                        answer.fields.entry(name).or_insert(text);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err("it ends before its elements are closed".into());
    }
    answer.ok_or_else(|| "it has no <response> element".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_answers_expose_result_fields() {
        let answer = parse(
            r#"<?xml version="1.0"?><response status = 'success'><result><key>LUFRPT1 &amp; x</key></result></response>"#,
        )
        .unwrap();
        assert_eq!(answer.status, "success");
        assert_eq!(answer.fields["key"], "LUFRPT1 & x");
    }

    #[test]
    fn error_answers_collect_messages_from_lines_and_entries() {
        let answer = parse(
            r#"<response status="error" code="403"><result><msg>Invalid Credential</msg></result></response>"#,
        )
        .unwrap();
        assert_eq!(answer.messages, ["Invalid Credential"]);
        assert!(answer.is_auth_failure());
        let answer = parse(
            r#"<response status="error"><msg><line><uid-response><version>2.0</version><payload><register><entry ip="10.1.1.1" message="tag txdx-blocked already exists, ignore"/></register></payload></uid-response></line></msg></response>"#,
        )
        .unwrap();
        assert!(is_already_done(&answer, true));
        assert!(!is_already_done(&answer, false));
    }

    #[test]
    fn other_documents_are_refused_with_a_reason() {
        assert!(
            parse("{\"status\":\"success\"}")
                .unwrap_err()
                .contains("no <response>")
        );
        assert!(
            parse("<html><body>login</body></html>")
                .unwrap_err()
                .contains("<html>")
        );
        assert!(
            parse("<response status=\"success\"><result>")
                .unwrap_err()
                .contains("closed")
        );
    }

    #[test]
    fn the_uid_message_escapes_the_tag_and_sets_the_timeout_only_on_register() {
        let p = PaloAltoIpTag {
            ip: "203.0.113.7".parse().unwrap(),
            tag: None,
            timeout_secs: Some(3600),
            vsys: None,
            target: None,
        };
        assert_eq!(
            uid_message(&p, "a<b", true),
            "<uid-message><version>2.0</version><type>update</type><payload><register><entry ip=\"203.0.113.7\"><tag><member timeout=\"3600\">a&lt;b</member></tag></entry></register></payload></uid-message>"
        );
        assert!(!uid_message(&p, "t", false).contains("timeout"));
    }

    mod properties {
        use proptest::{collection, prelude::*, sample::select};

        use super::*;

        /// XML-ish text: the tags, attributes and entities a `<response>`
        /// uses, shuffled, unbalanced and cut anywhere.
        fn any_xmlish() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                select(vec![
                    "<response status=\"success\">",
                    "<response status=\"error\" code=\"403\">",
                    "<response status='success' code='x'>",
                    "<response>",
                    "</response>",
                    "<result>",
                    "</result>",
                    "<msg>",
                    "</msg>",
                    "<line>",
                    "</line>",
                    "<key>",
                    "</key>",
                    "<entry ip=\"10.0.0.1\" message=\"already exists, ignore\"/>",
                    "<![CDATA[x<y]]>",
                    "&amp;",
                    "&#0;",
                    "&#x110000;",
                    "&unknown;",
                    "<?xml version=\"1.0\"?>",
                    "<!DOCTYPE r [<!ENTITY e \"boom\">]>",
                    "<!-- c -->",
                    "<a:b xmlns:a=\"u\">",
                    "</a:b>",
                    "<",
                    ">",
                    "/>",
                    "\"",
                ])
                .prop_map(str::to_owned),
                "[ -~]{0,12}",
            ];
            collection::vec(token, 0..24).prop_map(|tokens| tokens.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn parsing_any_text_never_panics_and_only_a_response_document_is_read(
                body in prop_oneof![".{0,200}", any_xmlish()],
            ) {
                match parse(&body) {
                    Ok(answer) => {
                        prop_assert!(body.contains("response"), "{:?}", body);
                        prop_assert!(answer.messages.iter().all(|m| !m.is_empty()));
                    }
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            #[test]
            fn a_parsed_answer_is_classified_without_a_panic(body in any_xmlish()) {
                if let Ok(answer) = parse(&body) {
                    let credentials = Credentials::from_json(r#"{"api_key":"k-0001"}"#).unwrap();
                    let api = Api::new(
                        NAME,
                        reqwest::Client::new(),
                        "https://pan.example/",
                        &IntegrationSettings::default(),
                        &credentials,
                    )
                    .unwrap();
                    let classified = error(&api, &answer);
                    let classified_as_error = matches!(
                        classified,
                        ProviderError::Permanent { .. } | ProviderError::Transient { .. }
                    );
                    prop_assert!(classified_as_error, "{:?}", classified);
                    let _ = is_already_done(&answer, true);
                    let _ = is_already_done(&answer, false);
                }
            }
        }
    }
}
