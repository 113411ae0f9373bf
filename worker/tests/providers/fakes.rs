//! Small HTTP fakes of Splunk, PAN-OS, Wazuh and Meraki: axum servers on
//! 127.0.0.1:0 speaking each provider's wire format, with just enough state
//! to answer like the real thing (search jobs, registered tags, JWTs,
//! firewall rule lists).
//!
//! Every fake records each request it receives (method, path, query,
//! headers, body) so tests assert what our client sent, and can be told to
//! answer a path with a canned response (429, 5xx, a slow or malformed
//! answer) a given number of times before behaving normally again.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    #[allow(
        dead_code,
        reason = "read by the pipeline tests, which share this file; `expect` would be unfulfilled there"
    )]
    pub at: chrono::DateTime<chrono::Utc>,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn query_param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    pub fn form_param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(&self.body)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// A canned answer for one path, used once.
#[derive(Debug, Clone)]
pub struct Canned {
    path: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
    times: usize,
}

impl Canned {
    /// Answers requests to exactly `path` with `status` and `body`, once.
    pub fn new(path: &str, status: u16, body: &str) -> Self {
        Self {
            path: path.to_owned(),
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            delay: Duration::ZERO,
            times: 1,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Waits this long before answering (longer than the client's timeout
    /// makes a timeout).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Clone, Default)]
struct Tap {
    seen: Arc<Mutex<Vec<Seen>>>,
    canned: Arc<Mutex<Vec<Canned>>>,
}

/// Records the request, then answers it with a canned response for its
/// path if one is queued, else passes it on.
async fn record_or_can(State(tap): State<Tap>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    tap.seen.lock().unwrap().push(Seen {
        at: chrono::Utc::now(),
        method: parts.method.clone(),
        path: path.clone(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let canned = {
        let mut all = tap.canned.lock().unwrap();
        all.iter().position(|c| c.path == path).map(|i| {
            all[i].times -= 1;
            if all[i].times == 0 {
                all.remove(i)
            } else {
                all[i].clone()
            }
        })
    };
    if let Some(canned) = canned {
        tokio::time::sleep(canned.delay).await;
        let mut response = Response::builder().status(canned.status);
        for (name, value) in &canned.headers {
            response = response.header(name, value);
        }
        return response.body(Body::from(canned.body)).unwrap();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// A running fake.
pub struct Fake {
    /// `http://127.0.0.1:PORT` (or `https://`).
    pub url: String,
    tap: Tap,
    task: JoinHandle<()>,
}

impl Fake {
    async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tap, app) = tapped(router);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            tap,
            task,
        }
    }

    /// Serves `router` over TLS with `config`.
    pub async fn start_tls(router: Router, config: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tap, app) = tapped(router);
        let listener = TlsListener {
            inner: listener,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        };
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("https://{addr}"),
            tap,
            task,
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.tap.seen.lock().unwrap().clone()
    }

    /// The requests to exactly `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// Answers `canned.path` with `canned` (its number of times).
    pub fn respond(&self, canned: Canned) {
        self.tap.canned.lock().unwrap().push(canned);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tapped(router: Router) -> (Tap, Router) {
    let tap = Tap::default();
    let app = router
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such route in the fake") })
        .layer(middleware::from_fn_with_state(tap.clone(), record_or_can));
    (tap, app)
}

/// TLS on accept; failed handshakes (a client refusing our certificate)
/// are skipped.
struct TlsListener {
    inner: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.inner.accept().await else {
                continue;
            };
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn authorization(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

// ------------------------------------------------------------------ Splunk --

pub const SPLUNK_TOKEN: &str = "splunk-token-0001";
pub const SPLUNK_USER: &str = "admin";
pub const SPLUNK_PASSWORD: &str = "splunk-password-0001";
pub const HEC_TOKEN: &str = "hec-token-0001";

/// How search jobs end.
#[derive(Debug, Clone)]
pub struct SplunkJobs {
    /// Status polls answered RUNNING before the final state.
    pub polls_before_done: u32,
    /// `DONE` or `FAILED`.
    pub final_state: &'static str,
    /// The job's messages in the final state.
    pub messages: Value,
    /// Result rows.
    pub rows: Vec<Value>,
}

impl Default for SplunkJobs {
    fn default() -> Self {
        Self {
            polls_before_done: 1,
            final_state: "DONE",
            messages: json!([]),
            rows: (0..5)
                .map(|i| json!({"host": format!("host-{i}"), "count": i.to_string()}))
                .collect(),
        }
    }
}

#[derive(Default)]
struct SplunkState {
    jobs: SplunkJobs,
    polls: HashMap<String, u32>,
    next_sid: u32,
}

pub struct SplunkFake {
    pub fake: Fake,
}

impl std::ops::Deref for SplunkFake {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.fake
    }
}

impl SplunkFake {
    pub async fn start(jobs: SplunkJobs) -> Self {
        let state = Arc::new(Mutex::new(SplunkState {
            jobs,
            ..SplunkState::default()
        }));
        let router = Router::new()
            .route("/services/search/jobs", post(splunk_create_job))
            .route("/services/search/jobs/{sid}", get(splunk_job_status))
            .route("/services/search/jobs/{sid}/results", get(splunk_results))
            .route("/services/search/jobs/{sid}/control", post(splunk_control))
            .route("/services/server/info", get(splunk_server_info))
            .route("/services/collector/event", post(splunk_hec))
            .with_state(state);
        Self {
            fake: Fake::start(router).await,
        }
    }
}

fn splunk_refusal(headers: &HeaderMap) -> Option<Response> {
    let auth = authorization(headers);
    let known =
        auth == format!("Bearer {SPLUNK_TOKEN}") || auth == basic(SPLUNK_USER, SPLUNK_PASSWORD);
    (!known).then(|| {
        json_response(
            StatusCode::UNAUTHORIZED,
            json!({"messages": [{"type": "WARN", "text": "call not properly authenticated"}]}),
        )
    })
}

async fn splunk_create_job(
    State(state): State<Arc<Mutex<SplunkState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = splunk_refusal(&headers) {
        return refused;
    }
    if !form_urlencoded::parse(&body).any(|(k, _)| k == "search") {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"messages": [{"type": "ERROR", "text": "Missing search"}]}),
        );
    }
    let mut state = state.lock().unwrap();
    state.next_sid += 1;
    let sid = format!("1700000000.{}", state.next_sid);
    state.polls.insert(sid.clone(), 0);
    json_response(StatusCode::CREATED, json!({"sid": sid}))
}

async fn splunk_job_status(
    State(state): State<Arc<Mutex<SplunkState>>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = splunk_refusal(&headers) {
        return refused;
    }
    let mut state = state.lock().unwrap();
    let jobs = state.jobs.clone();
    let Some(polls) = state.polls.get_mut(&sid) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"messages": [{"type": "ERROR", "text": "Unknown sid."}]}),
        );
    };
    *polls += 1;
    let done = *polls > jobs.polls_before_done;
    let dispatch_state = if done { jobs.final_state } else { "RUNNING" };
    json_response(
        StatusCode::OK,
        json!({"entry": [{"name": sid, "content": {
            "sid": sid,
            "dispatchState": dispatch_state,
            "isDone": done,
            "isFailed": dispatch_state == "FAILED",
            "resultCount": if done { jobs.rows.len() } else { 0 },
            "messages": if done { jobs.messages } else { json!([]) },
        }}]}),
    )
}

async fn splunk_results(
    State(state): State<Arc<Mutex<SplunkState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = splunk_refusal(&headers) {
        return refused;
    }
    let rows = state.lock().unwrap().jobs.rows.clone();
    let count = query
        .get("count")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(100);
    let rows: Vec<Value> = rows.into_iter().take(count).collect();
    json_response(StatusCode::OK, json!({"preview": false, "results": rows}))
}

async fn splunk_control(headers: HeaderMap) -> Response {
    if let Some(refused) = splunk_refusal(&headers) {
        return refused;
    }
    json_response(
        StatusCode::OK,
        json!({"messages": [{"type": "INFO", "text": "Search job cancelled."}]}),
    )
}

async fn splunk_server_info(headers: HeaderMap) -> Response {
    if let Some(refused) = splunk_refusal(&headers) {
        return refused;
    }
    json_response(
        StatusCode::OK,
        json!({"entry": [{"name": "server-info", "content": {"serverName": "fake-splunk", "version": "9.2.1", "build": "78803f08aabb"}}]}),
    )
}

async fn splunk_hec(headers: HeaderMap, body: Bytes) -> Response {
    let auth = authorization(&headers);
    if auth.is_empty() {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"text": "Token is required", "code": 2}),
        );
    }
    if auth != format!("Splunk {HEC_TOKEN}") {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"text": "Invalid token", "code": 4}),
        );
    }
    if body.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"text": "No data", "code": 5}),
        );
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
        );
    };
    if event.get("event").is_none() {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"text": "Event field is required", "code": 12, "invalid-event-number": 0}),
        );
    }
    json_response(StatusCode::OK, json!({"text": "Success", "code": 0}))
}

// ------------------------------------------------------------------ PAN-OS --

pub const PAN_API_KEY: &str = "pan-api-key-0001";
pub const PAN_USER: &str = "txdx-api";
pub const PAN_PASSWORD: &str = "pan-password-0001";

#[derive(Default)]
struct PanState {
    valid_generated: HashSet<String>,
    generated: u32,
    registered: HashSet<(String, String)>,
}

pub struct PanFake {
    pub fake: Fake,
    state: Arc<Mutex<PanState>>,
}

impl std::ops::Deref for PanFake {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.fake
    }
}

impl PanFake {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(PanState::default()));
        let router = Router::new()
            .route("/api/", post(pan_api).get(pan_api))
            .with_state(state.clone());
        Self {
            fake: Fake::start(router).await,
            state,
        }
    }

    /// Forgets every generated key (as an expired key lifetime would).
    pub fn revoke_generated_keys(&self) {
        self.state.lock().unwrap().valid_generated.clear();
    }

    /// Accepts `key` as an API key from now on (besides [`PAN_API_KEY`]).
    #[allow(
        dead_code,
        reason = "used by the pipeline tests, which share this file; `expect` would be unfulfilled there"
    )]
    pub fn accept_api_key(&self, key: &str) {
        self.state
            .lock()
            .unwrap()
            .valid_generated
            .insert(key.to_owned());
    }

    /// The (ip, tag) pairs registered now.
    pub fn registered(&self) -> HashSet<(String, String)> {
        self.state.lock().unwrap().registered.clone()
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

async fn pan_api(
    State(state): State<Arc<Mutex<PanState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = query;
    params.extend(form_urlencoded::parse(&body).into_owned());
    let mut state = state.lock().unwrap();
    if params.get("type").map(String::as_str) == Some("keygen") {
        if params.get("user").map(String::as_str) == Some(PAN_USER)
            && params.get("password").map(String::as_str) == Some(PAN_PASSWORD)
        {
            state.generated += 1;
            let key = format!("GENERATED-KEY-{}", state.generated);
            state.valid_generated.insert(key.clone());
            return xml_response(
                StatusCode::OK,
                format!(
                    "<response status = 'success'><result><key>{key}</key></result></response>"
                ),
            );
        }
        return xml_response(
            StatusCode::FORBIDDEN,
            "<response status = 'error' code = '403'><result><msg>Invalid Credential</msg></result></response>".into(),
        );
    }
    let key = headers
        .get("X-PAN-KEY")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if key != PAN_API_KEY && !state.valid_generated.contains(key) {
        return xml_response(
            StatusCode::FORBIDDEN,
            "<response status = 'error' code = '403'><result><msg>Invalid credentials.</msg></result></response>".into(),
        );
    }
    let cmd = params.get("cmd").cloned().unwrap_or_default();
    match params.get("type").map(String::as_str) {
        Some("op") if cmd == "<show><system><info/></system></show>" => xml_response(
            StatusCode::OK,
            "<response status=\"success\"><result><system><hostname>fw-lab-01</hostname><ip-address>192.0.2.10</ip-address><model>PA-VM</model><serial>007954000123456</serial><sw-version>11.1.2</sw-version></system></result></response>".into(),
        ),
        Some("user-id") => {
            let register = cmd.contains("<register>");
            let (Some(ip), Some(tag)) = (
                between(&cmd, "<entry ip=\"", "\""),
                between(&cmd, "\">", "</member>")
                    .map(|t| t.rsplit('>').next().unwrap_or(t)),
            ) else {
                return xml_response(
                    StatusCode::OK,
                    "<response status=\"error\" code=\"18\"><msg><line>Malformed command</line></msg></response>".into(),
                );
            };
            let pair = (ip.to_owned(), tag.to_owned());
            let verb = if register { "register" } else { "unregister" };
            let problem = if register && !state.registered.insert(pair.clone()) {
                Some(format!("ip {ip} tag {tag} already exists, ignore"))
            } else if !register && !state.registered.remove(&pair) {
                Some(format!("tag {tag} ip {ip} does not exist, ignore unreg"))
            } else {
                None
            };
            match problem {
                Some(message) => xml_response(
                    StatusCode::OK,
                    format!("<response status=\"error\"><msg><line><uid-response><version>2.0</version><payload><{verb}><entry ip=\"{ip}\" message=\"{message}\"/></{verb}></payload></uid-response></line></msg></response>"),
                ),
                None => xml_response(
                    StatusCode::OK,
                    format!("<response status=\"success\"><result><uid-response><version>2.0</version><payload><{verb}></{verb}></payload></uid-response></result></response>"),
                ),
            }
        }
        _ => xml_response(
            StatusCode::BAD_REQUEST,
            "<response status=\"error\" code=\"400\"><result><msg>Unknown command</msg></result></response>".into(),
        ),
    }
}

// ------------------------------------------------------------------- Wazuh --

pub const WAZUH_USER: &str = "wazuh-wui";
pub const WAZUH_PASSWORD: &str = "wazuh-password-0001";

#[derive(Default)]
struct WazuhState {
    valid_tokens: HashSet<String>,
    issued: u32,
}

pub struct WazuhFake {
    pub fake: Fake,
    state: Arc<Mutex<WazuhState>>,
}

impl std::ops::Deref for WazuhFake {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.fake
    }
}

/// The fake manager's agents: id, name, status.
const WAZUH_AGENTS: &[(&str, &str, &str)] = &[
    ("000", "wazuh-manager", "active"),
    ("001", "web-01", "active"),
    ("002", "db-01", "active"),
    ("003", "laptop-7", "disconnected"),
];

impl WazuhFake {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(WazuhState::default()));
        let router = Router::new()
            .route("/security/user/authenticate", post(wazuh_authenticate))
            .route("/agents", get(wazuh_agents))
            .route(
                "/active-response",
                axum::routing::put(wazuh_active_response),
            )
            .with_state(state.clone());
        Self {
            fake: Fake::start(router).await,
            state,
        }
    }

    /// Invalidates every issued JWT (as a manager restart does).
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().valid_tokens.clear();
    }

    pub fn authentications(&self) -> usize {
        self.seen_at("/security/user/authenticate").len()
    }
}

async fn wazuh_authenticate(
    State(state): State<Arc<Mutex<WazuhState>>>,
    headers: HeaderMap,
) -> Response {
    if authorization(&headers) != basic(WAZUH_USER, WAZUH_PASSWORD) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"title": "Unauthorized", "detail": "Invalid credentials"}),
        );
    }
    let mut state = state.lock().unwrap();
    state.issued += 1;
    let token = format!("eyJhbGciOiJFUzUxMiJ9.fake-jwt-{}", state.issued);
    state.valid_tokens.insert(token.clone());
    json_response(
        StatusCode::OK,
        json!({"data": {"token": token}, "error": 0}),
    )
}

fn wazuh_refusal(state: &Mutex<WazuhState>, headers: &HeaderMap) -> Option<Response> {
    let token = authorization(headers).strip_prefix("Bearer ").unwrap_or("");
    let known = state.lock().unwrap().valid_tokens.contains(token);
    (!known).then(|| {
        json_response(
            StatusCode::UNAUTHORIZED,
            json!({"title": "Unauthorized", "detail": "Invalid token"}),
        )
    })
}

async fn wazuh_agents(
    State(state): State<Arc<Mutex<WazuhState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = wazuh_refusal(&state, &headers) {
        return refused;
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(500);
    let items: Vec<Value> = WAZUH_AGENTS
        .iter()
        .filter(|(_, _, status)| query.get("status").is_none_or(|s| s == status))
        .filter(|(_, name, _)| {
            query
                .get("search")
                .is_none_or(|s| name.contains(s.as_str()))
        })
        .map(|(id, name, status)| json!({"id": id, "name": name, "status": status}))
        .collect();
    let total = items.len();
    let items: Vec<Value> = items.into_iter().take(limit).collect();
    json_response(
        StatusCode::OK,
        json!({"data": {"affected_items": items, "total_affected_items": total, "total_failed_items": 0, "failed_items": []},
               "message": "All selected agents information was returned", "error": 0}),
    )
}

async fn wazuh_active_response(
    State(state): State<Arc<Mutex<WazuhState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = wazuh_refusal(&state, &headers) {
        return refused;
    }
    let requested: Vec<&str> = query
        .get("agents_list")
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    let mut affected = Vec::new();
    let mut failed = Vec::new();
    for id in requested {
        match WAZUH_AGENTS.iter().find(|(agent, _, _)| *agent == id) {
            Some((_, _, "active")) => affected.push(json!(id)),
            Some(_) => failed.push(json!({"error": {"code": 1707, "message": "Cannot send request, agent is not active", "remediation": "Please, check non-active agents connection and try again"}, "id": [id]})),
            None => failed.push(json!({"error": {"code": 1701, "message": "Agent does not exist", "remediation": "Please, use `GET /agents?select=id,name` to find all available agents"}, "id": [id]})),
        }
    }
    let (error, message) = match (affected.is_empty(), failed.is_empty()) {
        (_, true) => (0, "AR command was sent to all agents"),
        (false, false) => (1, "AR command was not sent to some agents"),
        (true, false) => (2, "AR command was not sent to any agent"),
    };
    json_response(
        StatusCode::OK,
        json!({"data": {"affected_items": affected, "total_affected_items": affected.len(),
                        "total_failed_items": failed.len(), "failed_items": failed},
               "message": message, "error": error}),
    )
}

// ------------------------------------------------------------------ Meraki --

pub const MERAKI_KEY: &str = "meraki-api-key-0001";

#[derive(Default)]
struct MerakiState {
    rules: HashMap<String, Vec<Value>>,
    objects: Vec<Value>,
    get_delay: Duration,
}

pub struct MerakiFake {
    pub fake: Fake,
    state: Arc<Mutex<MerakiState>>,
}

impl std::ops::Deref for MerakiFake {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.fake
    }
}

fn meraki_default_rule() -> Value {
    json!({"comment": "Default rule", "policy": "allow", "protocol": "Any", "srcPort": "Any",
           "srcCidr": "Any", "destPort": "Any", "destCidr": "Any", "syslogEnabled": false})
}

impl MerakiFake {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(MerakiState::default()));
        Self::start_with(state, None).await
    }

    async fn start_with(
        state: Arc<Mutex<MerakiState>>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let router = Router::new()
            .route("/api/v1/organizations", get(meraki_organizations))
            .route(
                "/api/v1/networks/{network}/appliance/firewall/l3FirewallRules",
                get(meraki_get_rules).put(meraki_put_rules),
            )
            .route(
                "/api/v1/organizations/{org}/policyObjects",
                get(meraki_list_objects).post(meraki_create_object),
            )
            .with_state(state.clone());
        let fake = match tls {
            Some(config) => Fake::start_tls(router, config).await,
            None => Fake::start(router).await,
        };
        Self { fake, state }
    }

    /// The same fake served over HTTPS with `config`.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(Arc::new(Mutex::new(MerakiState::default())), Some(config)).await
    }

    /// The integration's base URL.
    pub fn base_url(&self) -> String {
        format!("{}/api/v1", self.url)
    }

    /// Seeds a network's rules (without the default rule).
    pub fn set_rules(&self, network: &str, rules: Vec<Value>) {
        self.state
            .lock()
            .unwrap()
            .rules
            .insert(network.to_owned(), rules);
    }

    /// A network's rules now (without the default rule).
    pub fn rules(&self, network: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .rules
            .get(network)
            .cloned()
            .unwrap_or_default()
    }

    /// Makes every GET of the rules read the list, then wait this long
    /// before answering (widens the read-modify-write window).
    pub fn delay_rule_reads(&self, delay: Duration) {
        self.state.lock().unwrap().get_delay = delay;
    }

    pub fn rules_path(network: &str) -> String {
        format!("/api/v1/networks/{network}/appliance/firewall/l3FirewallRules")
    }
}

fn meraki_refusal(headers: &HeaderMap) -> Option<Response> {
    let known = authorization(headers) == format!("Bearer {MERAKI_KEY}");
    (!known).then(|| {
        json_response(
            StatusCode::UNAUTHORIZED,
            json!({"errors": ["Invalid API key"]}),
        )
    })
}

async fn meraki_organizations(headers: HeaderMap) -> Response {
    if let Some(refused) = meraki_refusal(&headers) {
        return refused;
    }
    json_response(
        StatusCode::OK,
        json!([{"id": "549236", "name": "DevNet Sandbox", "url": "https://n149.meraki.com/o/-t35Mb/manage/organization/overview"}]),
    )
}

async fn meraki_get_rules(
    State(state): State<Arc<Mutex<MerakiState>>>,
    Path(network): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = meraki_refusal(&headers) {
        return refused;
    }
    let (mut rules, delay) = {
        let state = state.lock().unwrap();
        (
            state.rules.get(&network).cloned().unwrap_or_default(),
            state.get_delay,
        )
    };
    tokio::time::sleep(delay).await;
    rules.push(meraki_default_rule());
    json_response(StatusCode::OK, json!({"rules": rules}))
}

async fn meraki_put_rules(
    State(state): State<Arc<Mutex<MerakiState>>>,
    Path(network): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = meraki_refusal(&headers) {
        return refused;
    }
    let Some(rules) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("rules").and_then(Value::as_array).cloned())
    else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"errors": ["'rules' must be an array"]}),
        );
    };
    if rules
        .iter()
        .any(|r| r.get("comment").and_then(Value::as_str) == Some("Default rule"))
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"errors": ["The default rule cannot be submitted"]}),
        );
    }
    state.lock().unwrap().rules.insert(network, rules.clone());
    let mut answer = rules;
    answer.push(meraki_default_rule());
    json_response(StatusCode::OK, json!({"rules": answer}))
}

async fn meraki_list_objects(
    State(state): State<Arc<Mutex<MerakiState>>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = meraki_refusal(&headers) {
        return refused;
    }
    let objects = state.lock().unwrap().objects.clone();
    json_response(StatusCode::OK, Value::Array(objects))
}

async fn meraki_create_object(
    State(state): State<Arc<Mutex<MerakiState>>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(refused) = meraki_refusal(&headers) {
        return refused;
    }
    let mut state = state.lock().unwrap();
    let name = body.get("name").cloned().unwrap_or(Value::Null);
    if state.objects.iter().any(|o| o.get("name") == Some(&name)) {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"errors": ["Name has already been taken"]}),
        );
    }
    let object = json!({
        "id": format!("12345678{}", state.objects.len()),
        "organizationId": org,
        "name": name,
        "category": body.get("category"),
        "type": body.get("type"),
        "cidr": body.get("cidr"),
        "groupIds": [],
        "networkIds": [],
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:00Z",
    });
    state.objects.push(object.clone());
    json_response(StatusCode::CREATED, object)
}
