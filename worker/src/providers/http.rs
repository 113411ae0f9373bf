//! The one place that builds `reqwest` clients for provider calls, and the
//! one classifier from transport failures and HTTP answers to
//! [`ProviderError`].
//!
//! Clients differ by TLS settings and timeout, which are per integration, so
//! [`ClientCache`] keeps one client per distinct (verify_tls, CA, timeout)
//! and hands the shared default to the common case. [`Api`] is one live
//! call's view of a provider: its base URL, its client, the secrets to keep
//! out of messages, and the helpers every client file uses to send and read.

use std::{
    collections::HashMap,
    error::Error as StdError,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use reqwest::{
    RequestBuilder, Response, StatusCode, Url,
    header::{HeaderMap, LOCATION, RETRY_AFTER},
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::providers::IntegrationSettings;

use super::{Credentials, ProviderError};

/// Per-request timeout when the integration sets none.
pub const DEFAULT_TIMEOUT_SECS: u32 = 10;
/// Sent on every provider request.
pub const USER_AGENT: &str = concat!("txdx-worker/", env!("CARGO_PKG_VERSION"));
/// Answers larger than this are refused rather than buffered.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Error bodies are read up to this size to find the provider's message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Provider messages quoted in our errors are cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 300;
/// Credential values shorter than this are not scrubbed from messages (a
/// one- or two-letter "secret" would blank out ordinary words).
const MIN_REDACTED_LEN: usize = 4;

/// What makes two integrations need different clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey {
    verify_tls: bool,
    ca_digest: Option<[u8; 32]>,
    timeout_secs: u32,
}

impl ClientKey {
    fn of(settings: &IntegrationSettings) -> Self {
        Self {
            verify_tls: settings.verify_tls.unwrap_or(true),
            ca_digest: settings
                .ca_cert_pem
                .as_deref()
                .map(|pem| Sha256::digest(pem.as_bytes()).into()),
            timeout_secs: settings.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS).max(1),
        }
    }

    const DEFAULT: Self = Self {
        verify_tls: true,
        ca_digest: None,
        timeout_secs: DEFAULT_TIMEOUT_SECS,
    };
}

/// Built clients, one per distinct TLS and timeout configuration; the
/// default one (verified TLS, public roots, 10 s) is built at start.
#[derive(Debug)]
pub struct ClientCache {
    default: reqwest::Client,
    others: Mutex<HashMap<ClientKey, reqwest::Client>>,
}

impl ClientCache {
    /// Builds the default client.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            default: builder(ClientKey::DEFAULT.timeout_secs).build()?,
            others: Mutex::new(HashMap::new()),
        })
    }

    /// The client for `settings`: the default one, or one built (once) for
    /// its TLS options and timeout.
    ///
    /// # Errors
    /// Permanent when `ca_cert_pem` holds no usable certificate.
    pub fn client_for(
        &self,
        settings: &IntegrationSettings,
    ) -> Result<reqwest::Client, ProviderError> {
        let key = ClientKey::of(settings);
        if key == ClientKey::DEFAULT {
            return Ok(self.default.clone());
        }
        if let Some(client) = self.lock().get(&key) {
            return Ok(client.clone());
        }
        let mut builder = builder(key.timeout_secs);
        if !key.verify_tls {
            // The integration's owner chose this for an appliance with a
            // certificate nobody can verify; the default stays on.
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(pem) = &settings.ca_cert_pem {
            let certificates =
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|_| {
                    ProviderError::Permanent {
                        message: "integration setting ca_cert_pem is not a PEM certificate".into(),
                    }
                })?;
            if certificates.is_empty() {
                return Err(ProviderError::Permanent {
                    message: "integration setting ca_cert_pem holds no certificate".into(),
                });
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| ProviderError::Permanent {
            message: format!("cannot build an HTTP client for these TLS settings: {e}"),
        })?;
        self.lock().insert(key, client.clone());
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, reqwest::Client>> {
        // A panic while holding this lock leaves a map that is still whole.
        self.others
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn builder(timeout_secs: u32) -> reqwest::ClientBuilder {
    let timeout = Duration::from_secs(u64::from(timeout_secs));
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        // A provider API that redirects means a wrong base_url; following
        // it would send credentials somewhere nobody configured.
        .redirect(reqwest::redirect::Policy::none())
}

/// One live call's view of a provider: where it is, how to reach it, and
/// what must never appear in a message.
#[derive(Debug)]
pub struct Api<'a> {
    client: reqwest::Client,
    base: Url,
    name: &'static str,
    timeout_secs: u32,
    credentials: &'a Credentials,
    session_secrets: Vec<String>,
}

impl<'a> Api<'a> {
    /// A view of the provider `name` at `base_url`.
    ///
    /// # Errors
    /// Permanent when the base URL is not an absolute http(s) URL.
    pub fn new(
        name: &'static str,
        client: reqwest::Client,
        base_url: &str,
        settings: &IntegrationSettings,
        credentials: &'a Credentials,
    ) -> Result<Self, ProviderError> {
        let base = Url::parse(base_url.trim()).map_err(|e| ProviderError::Permanent {
            message: format!("{name}: integration base URL is invalid: {e}"),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ProviderError::Permanent {
                message: format!("{name}: integration base URL must be an http(s) URL"),
            });
        }
        Ok(Self {
            client,
            base,
            name,
            timeout_secs: settings.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
            credentials,
            session_secrets: Vec::new(),
        })
    }

    /// The provider's display name, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The integration's credentials.
    pub fn credentials(&self) -> &'a Credentials {
        self.credentials
    }

    /// The base URL with `segments` appended, each percent-encoded (so an id
    /// from a ticket cannot climb out of its path segment). An empty last
    /// segment gives a trailing slash.
    ///
    /// # Errors
    /// Never for a base accepted by [`Api::new`]; permanent otherwise.
    pub fn url(&self, segments: &[&str]) -> Result<Url, ProviderError> {
        let mut url = self.base.clone();
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|()| ProviderError::Permanent {
                message: format!("{}: integration base URL cannot take a path", self.name),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// A key identifying this integration's account, for caches of session
    /// tokens: provider, base URL and the given credential fields, hashed.
    pub fn account_key(&self, credential_fields: &[&str]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [self.name, self.base.as_str()].into_iter().chain(
            credential_fields
                .iter()
                .map(|f| self.credentials.get(f).unwrap_or("")),
        ) {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.finalize().into()
    }

    /// Marks a session token (a JWT, a generated key) as secret: it is
    /// scrubbed from every message this call produces.
    pub fn remember_secret(&mut self, secret: &str) {
        if secret.len() >= MIN_REDACTED_LEN && !self.session_secrets.iter().any(|s| s == secret) {
            self.session_secrets.push(secret.to_owned());
        }
    }

    /// Sends `request`; transport failures are classified, any HTTP status
    /// is returned as is.
    ///
    /// # Errors
    /// The classified transport failure.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, ProviderError> {
        request.send().await.map_err(|e| self.transport_error(&e))
    }

    /// Sends `request` and insists on a 2xx answer.
    ///
    /// # Errors
    /// The classified transport failure or HTTP status.
    pub async fn send_ok(&self, request: RequestBuilder) -> Result<Response, ProviderError> {
        let response = self.send(request).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.error_from(response).await)
        }
    }

    /// Reads a non-2xx answer and classifies it.
    pub async fn error_from(&self, response: Response) -> ProviderError {
        let status = response.status();
        let headers = response.headers().clone();
        let body = self.error_body(response).await;
        self.status_error(status, &headers, &body)
    }

    /// Reads up to 64 KiB of an error answer, lossily; a broken body reads
    /// as what arrived (the status is what matters).
    pub async fn error_body(&self, mut response: Response) -> String {
        let mut buf = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buf.extend_from_slice(&chunk);
            if buf.len() >= MAX_ERROR_BODY_BYTES {
                buf.truncate(MAX_ERROR_BODY_BYTES);
                break;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Reads a whole answer as text, bounded.
    ///
    /// # Errors
    /// Transient when the body breaks off; permanent when it is too large
    /// or not UTF-8.
    pub async fn text(&self, mut response: Response) -> Result<String, ProviderError> {
        let mut buf = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if buf.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ProviderError::Permanent {
                    message: format!(
                        "{}: the answer is larger than {} MiB",
                        self.name,
                        MAX_BODY_BYTES / (1024 * 1024)
                    ),
                });
            }
            buf.extend_from_slice(&chunk);
        }
        String::from_utf8(buf).map_err(|_| self.malformed("the answer", "it is not UTF-8 text"))
    }

    /// Reads a whole answer as JSON of type `T`.
    ///
    /// # Errors
    /// As [`Api::text`], and permanent when the body is not the expected
    /// JSON (`what` names the call in the message).
    pub async fn json<T: DeserializeOwned>(
        &self,
        response: Response,
        what: &str,
    ) -> Result<T, ProviderError> {
        let text = self.text(response).await?;
        self.parse_json(&text, what)
    }

    /// Parses `text` as JSON of type `T`.
    ///
    /// # Errors
    /// Permanent, naming `what` and the parse failure.
    pub fn parse_json<T: DeserializeOwned>(
        &self,
        text: &str,
        what: &str,
    ) -> Result<T, ProviderError> {
        serde_json::from_str(text).map_err(|e| {
            let detail = if e.is_syntax() || e.is_eof() {
                format!("it is not JSON ({e})")
            } else {
                format!("it does not have the expected shape ({e})")
            };
            self.malformed(what, &detail)
        })
    }

    /// A permanent error for an answer we cannot use. The detail (which
    /// may quote the answer: serde names the value it could not read) is
    /// scrubbed and bounded like any provider text.
    pub fn malformed(&self, what: &str, detail: &str) -> ProviderError {
        ProviderError::Permanent {
            message: format!(
                "{}: malformed answer to {what}: {}",
                self.name,
                self.quote(detail)
            ),
        }
    }

    /// Classifies a transport failure: timeouts and connection failures are
    /// transient; a certificate the client does not trust is permanent (it
    /// will not trust it on the next attempt either).
    pub fn transport_error(&self, error: &reqwest::Error) -> ProviderError {
        let host = error
            .url()
            .and_then(Url::host_str)
            .unwrap_or_else(|| self.base.host_str().unwrap_or("the provider"))
            .to_owned();
        if let Some(reason) = untrusted_certificate(error) {
            return ProviderError::Permanent {
                message: format!(
                    "{}: the TLS certificate of {host} is not trusted ({reason}); set the integration's ca_cert_pem to its CA, or verify_tls: false",
                    self.name
                ),
            };
        }
        let message = if error.is_timeout() {
            format!(
                "{}: {host} did not answer within {} s",
                self.name, self.timeout_secs
            )
        } else if error.is_connect() {
            format!(
                "{}: cannot connect to {host}: {}",
                self.name,
                root_cause(error)
            )
        } else if error.is_builder() {
            return ProviderError::Permanent {
                message: self.scrub(&format!(
                    "{}: cannot build the request: {}",
                    self.name,
                    root_cause(error)
                )),
            };
        } else {
            format!(
                "{}: the exchange with {host} failed: {}",
                self.name,
                root_cause(error)
            )
        };
        ProviderError::Transient {
            message: self.scrub(&message),
            retry_after: None,
        }
    }

    /// Classifies a non-2xx status: 429, 408 and 5xx are transient (with
    /// `Retry-After` on 429 and 503), 401 and 403 are bad credentials, any
    /// other status is permanent with the provider's own message.
    pub fn status_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &str,
    ) -> ProviderError {
        let code = status.as_u16();
        let detail = self.provider_message(body);
        let with_detail = |text: String| match &detail {
            Some(detail) => format!("{text}: {detail}"),
            None => text,
        };
        match code {
            429 => ProviderError::Transient {
                message: with_detail(format!("{}: rate limited (HTTP 429)", self.name)),
                retry_after: retry_after(headers),
            },
            503 => ProviderError::Transient {
                message: with_detail(format!("{}: unavailable (HTTP 503)", self.name)),
                retry_after: retry_after(headers),
            },
            408 | 500..=599 => ProviderError::Transient {
                message: with_detail(format!("{}: server error (HTTP {code})", self.name)),
                retry_after: None,
            },
            401 | 403 => ProviderError::Permanent {
                message: with_detail(format!("{}: bad credentials (HTTP {code})", self.name)),
            },
            300..=399 => ProviderError::Permanent {
                message: format!(
                    "{}: unexpected redirect (HTTP {code}) to {}; check the integration's base URL",
                    self.name,
                    headers
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .map(|l| self.quote(l))
                        .unwrap_or_else(|| "nowhere".into())
                ),
            },
            _ => ProviderError::Permanent {
                message: with_detail(format!("{}: rejected the request (HTTP {code})", self.name)),
            },
        }
    }

    /// The provider's own explanation in an error body, bounded and scrubbed
    /// of secrets: the message fields these providers use in JSON, the text
    /// of an XML answer, or the body itself.
    pub fn provider_message(&self, body: &str) -> Option<String> {
        let body = body.trim();
        if body.is_empty() {
            return None;
        }
        let text = if let Ok(json) = serde_json::from_str::<Value>(body) {
            json_message(&json).unwrap_or_else(|| json.to_string())
        } else if body.starts_with('<') {
            xml_text(body)
        } else {
            body.to_owned()
        };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        (!text.is_empty()).then(|| self.quote(&text))
    }

    /// `text` as a message may quote it: every secret scrubbed, then cut to
    /// the message bound (cutting first could leave a secret's head behind
    /// the cut, where scrubbing no longer finds it).
    pub fn quote(&self, text: &str) -> String {
        bounded(&self.scrub(text))
    }

    /// `text` with every credential value and session token replaced.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self
            .credentials
            .values()
            .chain(self.session_secrets.iter().map(String::as_str))
            .filter(|s| s.len() >= MIN_REDACTED_LEN)
        {
            if text.contains(secret) {
                text = text.replace(secret, "<redacted>");
            }
        }
        text
    }
}

/// A header value holding a secret: marked sensitive so it is never
/// printed by `Debug` or logged by the HTTP stack.
///
/// # Errors
/// Permanent when the secret cannot be a header value (a control
/// character in a stored key).
pub fn secret_header(value: &str) -> Result<reqwest::header::HeaderValue, ProviderError> {
    let mut header =
        reqwest::header::HeaderValue::from_str(value).map_err(|_| ProviderError::Permanent {
            message: "a stored credential contains characters not allowed in an HTTP header".into(),
        })?;
    header.set_sensitive(true);
    Ok(header)
}

/// The delay a `Retry-After` header asks for: seconds, or an HTTP date (a
/// date in the past asks for no delay).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Some(Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Cuts `text` to the message bound, on a character boundary.
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The message fields of the four providers' JSON errors: Splunk
/// `messages[].text` and HEC `text`, Meraki `errors[]`, Wazuh
/// `title`/`detail`, and the common `message`/`error`.
fn json_message(json: &Value) -> Option<String> {
    for key in ["messages", "errors"] {
        let found: Vec<&str> = json
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| {
                item.as_str()
                    .or_else(|| item.get("text").and_then(Value::as_str))
                    .or_else(|| item.get("message").and_then(Value::as_str))
            })
            .collect();
        if !found.is_empty() {
            return Some(found.join("; "));
        }
    }
    let title = json.get("title").and_then(Value::as_str);
    let detail = json.get("detail").and_then(Value::as_str);
    match (title, detail) {
        (Some(title), Some(detail)) => return Some(format!("{title}: {detail}")),
        (Some(one), None) | (None, Some(one)) => return Some(one.to_owned()),
        (None, None) => {}
    }
    ["message", "text", "error", "error_description"]
        .iter()
        .find_map(|k| json.get(*k).and_then(Value::as_str).map(str::to_owned))
}

/// The text content of an XML document (PAN-OS errors), one part per
/// element, plus `message` attributes (PAN-OS puts User-ID errors there).
fn xml_text(body: &str) -> String {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(body);
    let mut parts = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, parts: &mut Vec<String>| {
        let text = current.trim();
        if !text.is_empty() {
            parts.push(text.to_owned());
        }
        current.clear();
    };
    loop {
        match reader.read_event() {
            Ok(Event::Text(text)) => current.push_str(&text.xml10_content()),
            Ok(Event::CData(data)) => current.push_str(&data.xml10_content()),
            Ok(Event::GeneralRef(entity)) => current.push_str(&entity_text(&entity)),
            Ok(Event::Empty(element)) => {
                flush(&mut current, &mut parts);
                if let Some(message) = attribute(&element, "message") {
                    parts.push(message);
                }
            }
            Ok(Event::Start(_) | Event::End(_)) => flush(&mut current, &mut parts),
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    flush(&mut current, &mut parts);
    if parts.is_empty() {
        body.to_owned()
    } else {
        parts.join(" ")
    }
}

/// The text an entity reference stands for (`&amp;`, `&#65;`); unknown
/// entities read as themselves.
pub fn entity_text(entity: &quick_xml::events::BytesRef<'_>) -> String {
    if let Ok(Some(c)) = entity.resolve_char_ref() {
        return c.to_string();
    }
    let name = entity.xml10_content();
    quick_xml::escape::resolve_predefined_entity(&name)
        .map_or_else(|| format!("&{name};"), str::to_owned)
}

/// An attribute's unescaped value.
pub fn attribute(element: &quick_xml::events::BytesStart<'_>, name: &str) -> Option<String> {
    element
        .try_get_attribute(name)
        .ok()
        .flatten()
        .and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok())
        .map(std::borrow::Cow::into_owned)
}

/// The innermost cause's message: hyper's and rustls's texts say what went
/// wrong without the URL reqwest adds.
fn root_cause(error: &reqwest::Error) -> String {
    let mut current: &(dyn StdError + 'static) = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Why rustls refused the server's certificate, if that is what happened.
fn untrusted_certificate(error: &reqwest::Error) -> Option<String> {
    match find_tls_error(error)? {
        rustls::Error::InvalidCertificate(reason) => Some(format!("{reason:?}")),
        rustls::Error::NoCertificatesPresented => Some("no certificate presented".into()),
        _ => None,
    }
}

/// The rustls error in a cause chain. hyper nests it in `io::Error`s, whose
/// `source()` skips the wrapped error, so each is opened by hand.
fn find_tls_error<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && let Some(tls) = find_tls_error(inner)
    {
        return Some(tls);
    }
    error.source().and_then(find_tls_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let asked = retry_after(&headers).unwrap();
        assert!(
            asked > Duration::from_secs(110) && asked <= Duration::from_secs(120),
            "{asked:?}"
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn messages_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    fn api(credentials: &Credentials) -> Api<'_> {
        Api::new(
            "Test",
            reqwest::Client::new(),
            "https://provider.example:8089/",
            &IntegrationSettings::default(),
            credentials,
        )
        .unwrap()
    }

    #[test]
    fn provider_messages_come_from_each_providers_error_shape_without_secrets() {
        let credentials = Credentials::from_json(r#"{"api_key":"s3cr3t-key"}"#).unwrap();
        let api = api(&credentials);
        let cases = [
            (
                r#"{"messages":[{"type":"ERROR","text":"Unknown search command 'foo'."}]}"#,
                "Unknown search command 'foo'.",
            ),
            (
                r#"{"errors":["Invalid API key s3cr3t-key"]}"#,
                "Invalid API key <redacted>",
            ),
            (
                r#"{"title":"Bad Request","detail":"Invalid field"}"#,
                "Bad Request: Invalid field",
            ),
            (r#"{"text":"Incorrect index","code":7}"#, "Incorrect index"),
            (
                r#"<response status="error"><msg><line>Invalid   credentials.</line></msg></response>"#,
                "Invalid credentials.",
            ),
            ("plain text", "plain text"),
        ];
        for (body, expected) in cases {
            assert_eq!(
                api.provider_message(body).as_deref(),
                Some(expected),
                "{body}"
            );
        }
        assert_eq!(api.provider_message("  "), None);
    }

    #[test]
    fn statuses_are_classified() {
        let credentials = Credentials::default();
        let api = api(&credentials);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            api.status_error(StatusCode::TOO_MANY_REQUESTS, &headers, ""),
            ProviderError::Transient {
                message: "Test: rate limited (HTTP 429)".into(),
                retry_after: Some(Duration::from_secs(3)),
            }
        );
        assert!(matches!(
            api.status_error(StatusCode::BAD_GATEWAY, &headers, ""),
            ProviderError::Transient {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            api.status_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), ""),
            ProviderError::Permanent { message } if message.contains("bad credentials")
        ));
        assert!(matches!(
            api.status_error(StatusCode::NOT_FOUND, &HeaderMap::new(), r#"{"message":"no such network"}"#),
            ProviderError::Permanent { message } if message.ends_with("(HTTP 404): no such network")
        ));
    }

    #[test]
    fn urls_encode_each_segment_and_keep_the_base_path() {
        let credentials = Credentials::default();
        let api = Api::new(
            "Test",
            reqwest::Client::new(),
            "https://api.meraki.com/api/v1",
            &IntegrationSettings::default(),
            &credentials,
        )
        .unwrap();
        assert_eq!(
            api.url(&["networks", "N_1/../x", "rules"])
                .unwrap()
                .as_str(),
            "https://api.meraki.com/api/v1/networks/N_1%2F..%2Fx/rules"
        );
        assert_eq!(api.url(&["api", ""]).unwrap().path(), "/api/v1/api/");
    }

    #[test]
    fn the_default_settings_share_the_default_client_and_others_are_cached() {
        let cache = ClientCache::new().unwrap();
        cache.client_for(&IntegrationSettings::default()).unwrap();
        assert!(cache.lock().is_empty());
        let insecure = IntegrationSettings {
            verify_tls: Some(false),
            ..Default::default()
        };
        cache.client_for(&insecure).unwrap();
        cache.client_for(&insecure).unwrap();
        assert_eq!(cache.lock().len(), 1);
        let bad_ca = IntegrationSettings {
            ca_cert_pem: Some("not a certificate".into()),
            ..Default::default()
        };
        assert!(matches!(
            cache.client_for(&bad_ca),
            Err(ProviderError::Permanent { message }) if message.contains("ca_cert_pem")
        ));
    }

    mod properties {
        use proptest::{collection, prelude::*, sample::select};

        use super::*;

        const SECRET: &str = "s3cr3t-key-0001";

        /// Error bodies: text, JSON in the providers' error shapes, and
        /// XML, with the credential sprinkled in.
        fn any_error_body() -> impl Strategy<Value = String> {
            let word = prop_oneof![
                Just(SECRET.to_owned()),
                ".{0,16}",
                "[a-z]{280,299}",
                "[a-z]{300,700}",
                Just("\u{0}".to_owned()),
            ];
            let words = collection::vec(word, 0..4).prop_map(|w| w.join(" "));
            prop_oneof![
                ".{0,300}",
                words.clone(),
                (
                    select(vec![
                        "messages",
                        "errors",
                        "title",
                        "detail",
                        "message",
                        "text",
                        "error",
                        "error_description",
                        "data"
                    ]),
                    words.clone()
                )
                    .prop_map(|(key, text)| {
                        if key == "messages" || key == "errors" {
                            serde_json::json!({key: [{"text": text.clone()}, text]}).to_string()
                        } else {
                            serde_json::json!({key: text}).to_string()
                        }
                    }),
                words.prop_map(|text| format!(
                    "<response status=\"error\"><msg><line>{text}</line></msg></response>"
                )),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_error_answer_is_classified_bounded_and_free_of_the_credential(
                status in 300u16..600,
                body in any_error_body(),
                retry in prop_oneof![Just(None), ".{0,40}".prop_map(Some), "[0-9]{1,30}".prop_map(Some)],
            ) {
                let credentials = Credentials::from_json(&format!(r#"{{"api_key":"{SECRET}"}}"#)).unwrap();
                let api = api(&credentials);
                let mut headers = HeaderMap::new();
                if let Some(value) = retry.and_then(|r| reqwest::header::HeaderValue::from_str(&r).ok()) {
                    headers.insert(RETRY_AFTER, value);
                }
                let Ok(status) = StatusCode::from_u16(status) else {
                    return Ok(());
                };
                let (message, transient) = match api.status_error(status, &headers, &body) {
                    ProviderError::Transient { message, .. } => (message, true),
                    ProviderError::Permanent { message } => (message, false),
                    ProviderError::NeedsHuman { reason } => (reason, false),
                };
                // Not even the head of the credential, where a cut fell across it.
                prop_assert!(!message.contains(&SECRET[..6]), "{}", message);
                prop_assert!(message.chars().count() <= 2 * MAX_MESSAGE_CHARS, "{} chars", message.chars().count());
                prop_assert_eq!(
                    transient,
                    matches!(status.as_u16(), 408 | 429 | 500..=599),
                    "HTTP {}", status
                );
            }

            #[test]
            fn a_malformed_answer_message_is_bounded_and_free_of_the_credential(
                body in any_error_body(),
            ) {
                let credentials = Credentials::from_json(&format!(r#"{{"api_key":"{SECRET}"}}"#)).unwrap();
                let api = api(&credentials);
                #[derive(Debug, serde::Deserialize)]
                #[expect(dead_code, reason = "only the parse matters")]
                struct Shape {
                    data: Vec<u32>,
                }
                if let Err(ProviderError::Permanent { message }) = api.parse_json::<Shape>(&body, "the call") {
                    prop_assert!(!message.contains(&SECRET[..6]), "{}", message);
                    prop_assert!(message.chars().count() <= 2 * MAX_MESSAGE_CHARS, "{} chars: {}", message.chars().count(), message);
                }
            }

            #[test]
            fn a_credential_cut_by_the_message_bound_leaves_no_head_behind(
                padding in 0usize..400,
                wrapper in select(vec!["{}", r#"{{"message":"{}"}}"#, "<response><msg>{}</msg></response>"]),
            ) {
                let credentials = Credentials::from_json(&format!(r#"{{"api_key":"{SECRET}"}}"#)).unwrap();
                let api = api(&credentials);
                let text = format!("{} {SECRET} tail", "x".repeat(padding));
                let body = wrapper.replace("{}", &text).replace("{{", "{").replace("}}", "}");
                let message = api.status_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), &body).to_string();
                prop_assert!(!message.contains(&SECRET[..6]), "{}", message);
                let malformed = api.malformed("the call", &text).to_string();
                prop_assert!(!malformed.contains(&SECRET[..6]), "{}", malformed);
            }

            #[test]
            fn any_retry_after_value_is_read_without_a_panic(value in prop_oneof![".{0,40}", "[0-9]{1,40}", "-?[0-9]{0,20}\\.[0-9]{0,20}(e[0-9]{1,4})?"]) {
                let mut headers = HeaderMap::new();
                if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                    headers.insert(RETRY_AFTER, value);
                }
                if let Some(delay) = retry_after(&headers) {
                    // Seconds parse as given; fractions and dates are capped at a day.
                    prop_assert!(value.trim().parse::<u64>().is_ok() || delay <= Duration::from_secs(86_400) || httpdate::parse_http_date(value.trim()).is_ok());
                }
            }
        }
    }
}
