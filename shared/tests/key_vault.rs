//! The Key Vault backend, driven through the real Azure SDK against a local
//! HTTPS fake of Key Vault's secrets API and Entra ID's token endpoint.
//!
//! The fake's certificate is signed by a CA made at test time; the SDK gets a
//! reqwest transport that trusts only that CA and resolves the fake's host
//! names (`txdx-test.vault.test`, `login.test`) to the local listener, so the
//! SDK's challenge check (the vault host must sit under the challenge's
//! resource domain) runs exactly as in production.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up and assertions fail the test on error"
)]

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use azure_core::http::Transport;
use serde_json::{Value, json};
use shared::{
    config::{AzureClientSecret, AzureConfig, SecretString},
    secrets::{
        SecretError, SecretStore, SecretValue,
        key_vault::{KeyVaultOptions, KeyVaultSecretStore},
        secret_name,
    },
};
use uuid::Uuid;

const VAULT_HOST: &str = "txdx-test.vault.test";
const LOGIN_HOST: &str = "login.test";
const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000bb";
const CLIENT_SECRET: &str = "client-secret-that-must-never-print";
const CREDENTIALS: &str = r#"{"api_key":"sk-live-never-print-me"}"#;

/// A scripted answer for the next authenticated vault request.
#[derive(Clone)]
enum Scripted {
    /// Answer with this status, an optional `Retry-After`, and a Key Vault error body.
    Fail(u16, Option<&'static str>),
    /// Answer only after this long.
    Stall(Duration),
    /// Answer a `set` with a 400 whose message quotes the request body, as a
    /// careless service might.
    EchoBody,
}

/// What the fake holds and what it saw.
#[derive(Default)]
struct Seen {
    /// name → versions (version, value), oldest first.
    secrets: HashMap<String, Vec<(String, String)>>,
    /// Tokens the token endpoint issued.
    issued_tokens: Vec<String>,
    /// Bearer tokens the vault accepted.
    accepted_tokens: Vec<String>,
    /// Token requests: (tenant, form fields minus the secret, secret matched).
    token_requests: Vec<(String, HashMap<String, String>, bool)>,
    /// Vault requests that came without a valid token and were challenged,
    /// with the body they carried.
    challenged: Vec<(String, Vec<u8>)>,
    /// Authenticated vault requests: "METHOD path".
    vault_requests: Vec<String>,
    /// Answers to give to the next authenticated vault requests.
    script: VecDeque<Scripted>,
    /// When set, the token endpoint answers with this status.
    token_failure: Option<u16>,
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    vault_url: String,
}

impl Fake {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.seen().script.extend(answers);
    }
}

/// A running fake and what a client needs to reach it.
struct Harness {
    fake: Fake,
    addr: SocketAddr,
    ca_pem: String,
    server: axum_server::Handle<SocketAddr>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

impl Harness {
    async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "TxDx test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec![VAULT_HOST.to_owned(), LOGIN_HOST.to_owned()])
                .unwrap();
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Fake {
            seen: Arc::default(),
            vault_url: format!("https://{VAULT_HOST}:{}", addr.port()),
        };
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(issue_token))
            .route(
                "/secrets/{name}",
                put(set_secret).delete(delete_secret).get(get_latest),
            )
            .route("/secrets/{name}/", get(get_latest))
            .route("/secrets/{name}/{version}", get(get_version))
            .with_state(fake.clone());
        let server = axum_server::Handle::new();
        let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
        let serve = axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .handle(server.clone())
            .serve(app.into_make_service());
        tokio::spawn(serve);
        server.listening().await.unwrap();
        Self {
            fake,
            addr,
            ca_pem: ca_cert.pem(),
            server,
        }
    }

    /// A reqwest client that trusts only the test CA and resolves the fake's
    /// names to its listener: the SDK's transport in these tests.
    fn transport(&self) -> Transport {
        let client = reqwest_azure::Client::builder()
            .tls_certs_only([reqwest_azure::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .resolve(VAULT_HOST, self.addr)
            .resolve(LOGIN_HOST, self.addr)
            .redirect(reqwest_azure::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        Transport::new(Arc::new(client))
    }

    fn options(&self) -> KeyVaultOptions {
        KeyVaultOptions {
            transport: Some(self.transport()),
            authority_host: Some(format!("https://{LOGIN_HOST}:{}", self.addr.port())),
            retry: None,
            operation_timeout: Duration::from_secs(5),
        }
    }

    fn config(&self, client_secret: &str) -> AzureConfig {
        AzureConfig {
            vault_url: format!("{}/", self.fake.vault_url),
            client_secret: Some(AzureClientSecret {
                tenant_id: TENANT.to_owned(),
                client_id: CLIENT_ID.to_owned(),
                client_secret: SecretString::new(client_secret),
            }),
            workload_identity: None,
            managed_identity_client_id: None,
        }
    }

    fn store(&self) -> KeyVaultSecretStore {
        KeyVaultSecretStore::with_options(&self.config(CLIENT_SECRET), self.options()).unwrap()
    }
}

// ------------------------------------------------------------ the fake ----

/// Entra ID's client-credentials grant.
async fn issue_token(
    State(fake): State<Fake>,
    Path(tenant): Path<String>,
    Form(mut form): Form<HashMap<String, String>>,
) -> Response {
    let secret_ok = form.remove("client_secret").as_deref() == Some(CLIENT_SECRET);
    let mut seen = fake.seen();
    seen.token_requests
        .push((tenant.clone(), form.clone(), secret_ok));
    if let Some(status) = seen.token_failure {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred.", "error_codes": [90033]})),
        )
            .into_response();
    }
    let valid = tenant == TENANT
        && secret_ok
        && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && form.get("scope").map(String::as_str) == Some("https://vault.test/.default");
    if !valid {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
                "error_codes": [7000215]
            })),
        )
            .into_response();
    }
    let token = format!("fake-token-{}", Uuid::new_v4().simple());
    seen.issued_tokens.push(token.clone());
    Json(json!({
        "token_type": "Bearer",
        "expires_in": 3600,
        "ext_expires_in": 3600,
        "access_token": token
    }))
    .into_response()
}

/// Key Vault's gate: a request without a token this fake issued gets the
/// bearer challenge that tells the SDK where to authenticate.
fn authorize(fake: &Fake, headers: &HeaderMap, what: String, body: &[u8]) -> Option<Response> {
    let mut seen = fake.seen();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(token) if seen.issued_tokens.iter().any(|t| t == token) => {
            seen.accepted_tokens.push(token.to_owned());
            seen.vault_requests.push(what);
            None
        }
        _ => {
            seen.challenged.push((what, body.to_vec()));
            let challenge = format!(
                r#"Bearer authorization="https://{LOGIN_HOST}/{TENANT}", resource="https://vault.test""#
            );
            let mut response = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}})),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).unwrap(),
            );
            Some(response)
        }
    }
}

/// The scripted answer for this request, if any.
async fn scripted(fake: &Fake) -> Option<Response> {
    let next = fake.seen().script.pop_front();
    match next? {
        Scripted::EchoBody => None,
        Scripted::Stall(duration) => {
            tokio::time::sleep(duration).await;
            None
        }
        Scripted::Fail(status, retry_after) => {
            let code = match status {
                403 => "Forbidden",
                429 => "Throttled",
                _ => "ServiceUnavailable",
            };
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({"error": {"code": code, "message": format!("scripted {status}")}})),
            )
                .into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
            }
            Some(response)
        }
    }
}

fn api_version_missing(query: &HashMap<String, String>) -> Option<Response> {
    (!query.contains_key("api-version")).then(|| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "BadParameter", "message": "api-version is required"}})),
        )
            .into_response()
    })
}

fn not_found(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"code": "SecretNotFound", "message": format!("A secret with (name/id) {name} was not found in this key vault.")}})),
    )
        .into_response()
}

fn secret_json(fake: &Fake, name: &str, version: &str, value: Option<&str>) -> Value {
    let mut secret = json!({
        "id": format!("{}/secrets/{name}/{version}", fake.vault_url),
        "contentType": "application/json",
        "attributes": {
            "enabled": true,
            "created": 1_767_225_600,
            "updated": 1_767_225_600,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90
        },
        "tags": {}
    });
    if let Some(value) = value {
        secret["value"] = json!(value);
    }
    secret
}

async fn set_secret(
    State(fake): State<Fake>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = authorize(&fake, &headers, format!("PUT /secrets/{name}"), &body) {
        return r;
    }
    let echo = matches!(fake.seen().script.front(), Some(Scripted::EchoBody));
    if echo {
        fake.seen().script.pop_front();
        let body = String::from_utf8_lossy(&body);
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"code": "BadParameter", "message": format!("cannot use {body}")}}),
            ),
        )
            .into_response();
    }
    if let Some(r) = api_version_missing(&query).or(scripted(&fake).await) {
        return r;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let Some(value) = request["value"].as_str() else {
        return (StatusCode::BAD_REQUEST, "value is required").into_response();
    };
    let version = Uuid::new_v4().simple().to_string();
    fake.seen()
        .secrets
        .entry(name.clone())
        .or_default()
        .push((version.clone(), value.to_owned()));
    Json(secret_json(&fake, &name, &version, Some(value))).into_response()
}

async fn get_version(
    State(fake): State<Fake>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    read_secret(fake, name, Some(version), query, headers).await
}

async fn get_latest(
    State(fake): State<Fake>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    read_secret(fake, name, None, query, headers).await
}

async fn read_secret(
    fake: Fake,
    name: String,
    version: Option<String>,
    query: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let what = format!("GET /secrets/{name}/{}", version.as_deref().unwrap_or(""));
    if let Some(r) = authorize(&fake, &headers, what, &[]) {
        return r;
    }
    if let Some(r) = api_version_missing(&query).or(scripted(&fake).await) {
        return r;
    }
    let found = {
        let seen = fake.seen();
        seen.secrets.get(&name).and_then(|versions| match &version {
            Some(v) => versions.iter().find(|(have, _)| have == v).cloned(),
            None => versions.last().cloned(),
        })
    };
    match found {
        Some((version, value)) => {
            Json(secret_json(&fake, &name, &version, Some(&value))).into_response()
        }
        None => not_found(&name),
    }
}

async fn delete_secret(
    State(fake): State<Fake>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = authorize(&fake, &headers, format!("DELETE /secrets/{name}"), &[]) {
        return r;
    }
    if let Some(r) = api_version_missing(&query).or(scripted(&fake).await) {
        return r;
    }
    let removed = fake.seen().secrets.remove(&name);
    match removed.and_then(|versions| versions.last().cloned()) {
        Some((version, _)) => {
            let mut deleted = secret_json(&fake, &name, &version, None);
            deleted["recoveryId"] = json!(format!("{}/deletedsecrets/{name}", fake.vault_url));
            deleted["deletedDate"] = json!(1_767_225_600);
            deleted["scheduledPurgeDate"] = json!(1_775_001_600);
            Json(deleted).into_response()
        }
        None => not_found(&name),
    }
}

// --------------------------------------------------------------- tests ----

/// Fails the test if an error's text or debug form carries a secret.
fn assert_no_secret_in(error: &SecretError) {
    let printed = format!("{error} {error:?}");
    for secret in [CLIENT_SECRET, CREDENTIALS, "sk-live-never-print-me"] {
        assert!(
            !printed.contains(secret),
            "an error message leaks a secret: {printed}"
        );
    }
}

#[tokio::test]
async fn set_get_and_delete_go_through_the_sdk_with_the_bearer_challenge() {
    let harness = Harness::start().await;
    let store = harness.store();
    let (company, integration) = (Uuid::new_v4(), Uuid::new_v4());
    let name = secret_name(company, integration);

    let id = store
        .put(company, integration, &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    let prefix = format!("{}/secrets/{name}/", harness.fake.vault_url);
    let version = id
        .strip_prefix(&prefix)
        .expect("the id is the secret's URL");
    assert_eq!(version.len(), 32, "the id names the new version: {id}");

    let value = store.get(company, &id).await.unwrap();
    assert_eq!(value.expose(), CREDENTIALS);

    // A rotation is a new version with a new id; the old id still reads the old value.
    let rotated = store
        .put(
            company,
            integration,
            &SecretValue::new(r#"{"api_key":"v2"}"#),
        )
        .await
        .unwrap();
    assert_ne!(rotated, id);
    assert_eq!(
        store.get(company, &rotated).await.unwrap().expose(),
        r#"{"api_key":"v2"}"#
    );
    assert_eq!(store.get(company, &id).await.unwrap().expose(), CREDENTIALS);

    store.delete(company, &id).await.unwrap();
    assert_eq!(store.get(company, &id).await, Err(SecretError::NotFound));
    store
        .delete(company, &id)
        .await
        .expect("deleting a deleted secret is a no-op");

    let seen = harness.fake.seen();
    // The SDK's first request went out without a token and without the
    // secret in its body; the challenge sent it to the fake token endpoint.
    assert_eq!(seen.challenged.len(), 1, "{:?}", seen.challenged);
    let (first, body) = &seen.challenged[0];
    assert_eq!(first, &format!("PUT /secrets/{name}"));
    assert!(
        body.is_empty(),
        "the unauthenticated request carried a body"
    );
    assert_eq!(seen.token_requests.len(), 1, "the token is cached");
    let (tenant, form, secret_ok) = &seen.token_requests[0];
    assert_eq!(tenant, TENANT);
    assert!(secret_ok);
    assert_eq!(form["scope"], "https://vault.test/.default");
    assert_eq!(form["grant_type"], "client_credentials");
    // Every authenticated vault request carried the token the fake issued.
    assert_eq!(seen.issued_tokens.len(), 1);
    assert!(!seen.accepted_tokens.is_empty());
    assert!(
        seen.accepted_tokens
            .iter()
            .all(|t| *t == seen.issued_tokens[0])
    );
    assert_eq!(
        seen.vault_requests,
        vec![
            format!("PUT /secrets/{name}"),
            format!("GET /secrets/{name}/{version}"),
            format!("PUT /secrets/{name}"),
            format!(
                "GET /secrets/{name}/{}",
                rotated.rsplit('/').next().unwrap()
            ),
            format!("GET /secrets/{name}/{version}"),
            format!("DELETE /secrets/{name}"),
            format!("GET /secrets/{name}/{version}"),
            format!("DELETE /secrets/{name}"),
        ]
    );
}

#[tokio::test]
async fn a_missing_secret_is_not_found() {
    let harness = Harness::start().await;
    let store = harness.store();
    let company = Uuid::new_v4();
    let id = format!(
        "{}/secrets/{}/0123456789abcdef0123456789abcdef",
        harness.fake.vault_url,
        secret_name(company, Uuid::new_v4())
    );
    assert_eq!(store.get(company, &id).await, Err(SecretError::NotFound));
}

#[tokio::test]
async fn another_companys_id_is_not_found_without_asking_the_vault() {
    let harness = Harness::start().await;
    let store = harness.store();
    let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
    let id = store
        .put(owner, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    let before = harness.fake.seen().vault_requests.len();
    assert_eq!(store.get(other, &id).await, Err(SecretError::NotFound));
    assert_eq!(store.delete(other, &id).await, Err(SecretError::NotFound));
    assert_eq!(
        store.get(other, "https://elsewhere.example/keys/x/1").await,
        Err(SecretError::NotFound)
    );
    assert_eq!(harness.fake.seen().vault_requests.len(), before);
    assert_eq!(store.get(owner, &id).await.unwrap().expose(), CREDENTIALS);
}

#[tokio::test]
async fn throttling_is_transient_with_the_retry_after_seconds_and_is_not_retried_by_the_sdk() {
    let harness = Harness::start().await;
    let store = harness.store();
    let company = Uuid::new_v4();
    let id = store
        .put(company, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    let before = harness.fake.seen().vault_requests.len();
    harness.fake.script([Scripted::Fail(429, Some("7"))]);

    let err = store.get(company, &id).await.unwrap_err();
    match &err {
        SecretError::Transient {
            message,
            retry_after_secs,
        } => {
            assert_eq!(*retry_after_secs, Some(7));
            assert!(message.contains("429"), "{message}");
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
    assert_no_secret_in(&err);
    assert_eq!(
        harness.fake.seen().vault_requests.len(),
        before + 1,
        "a 429 goes straight back to the caller's backoff"
    );
    assert_eq!(store.get(company, &id).await.unwrap().expose(), CREDENTIALS);
}

#[tokio::test]
async fn a_brief_server_error_is_retried_by_the_sdk_and_a_lasting_one_is_transient() {
    let harness = Harness::start().await;
    let store = harness.store();
    let company = Uuid::new_v4();
    let id = store
        .put(company, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();

    let before = harness.fake.seen().vault_requests.len();
    harness.fake.script([Scripted::Fail(500, None)]);
    assert_eq!(store.get(company, &id).await.unwrap().expose(), CREDENTIALS);
    assert_eq!(harness.fake.seen().vault_requests.len(), before + 2);

    let before = harness.fake.seen().vault_requests.len();
    harness.fake.script([
        Scripted::Fail(502, None),
        Scripted::Fail(502, None),
        Scripted::Fail(502, None),
    ]);
    let err = store.get(company, &id).await.unwrap_err();
    assert!(
        matches!(&err, SecretError::Transient { message, retry_after_secs: None } if message.contains("502")),
        "{err:?}"
    );
    assert_eq!(
        harness.fake.seen().vault_requests.len(),
        before + 3,
        "two quick retries, then the caller decides"
    );

    harness.fake.script([Scripted::Fail(503, Some("2"))]);
    let err = store.get(company, &id).await.unwrap_err();
    assert!(
        matches!(
            err,
            SecretError::Transient {
                retry_after_secs: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn forbidden_is_permanent() {
    let harness = Harness::start().await;
    let store = harness.store();
    let company = Uuid::new_v4();
    harness.fake.script([Scripted::Fail(403, None)]);
    let err = store
        .put(company, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SecretError::Permanent(message) if message.contains("403")),
        "{err:?}"
    );
    assert_no_secret_in(&err);
}

#[tokio::test]
async fn a_service_message_that_quotes_the_secret_is_redacted() {
    let harness = Harness::start().await;
    let store = harness.store();
    store.check().await.unwrap();
    harness.fake.script([Scripted::EchoBody]);
    let err = store
        .put(
            Uuid::new_v4(),
            Uuid::new_v4(),
            &SecretValue::new(CREDENTIALS),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SecretError::Permanent(message) if message.contains("400")),
        "{err:?}"
    );
    assert_no_secret_in(&err);
    assert!(!format!("{err}").contains("api_key"), "{err}");
}

#[tokio::test]
async fn a_rejected_client_secret_is_permanent_and_never_printed() {
    let harness = Harness::start().await;
    let wrong = "wrong-client-secret-never-print";
    let store =
        KeyVaultSecretStore::with_options(&harness.config(wrong), harness.options()).unwrap();
    let err = store.check().await.unwrap_err();
    assert!(
        matches!(&err, SecretError::Permanent(message) if message.contains("401")),
        "{err:?}"
    );
    let err = store
        .put(
            Uuid::new_v4(),
            Uuid::new_v4(),
            &SecretValue::new(CREDENTIALS),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SecretError::Permanent(_)), "{err:?}");
    assert_no_secret_in(&err);
    assert!(!format!("{err} {err:?}").contains(wrong));
    let seen = harness.fake.seen();
    assert!(seen.accepted_tokens.is_empty());
    assert!(seen.secrets.is_empty());
    assert!(
        seen.challenged.iter().all(|(_, body)| body.is_empty()),
        "the secret never left without a token"
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_is_transient() {
    let harness = Harness::start().await;
    harness.fake.seen().token_failure = Some(503);
    let store = harness.store();
    let err = store.check().await.unwrap_err();
    assert!(
        matches!(&err, SecretError::Transient { message, .. } if message.contains("503")),
        "{err:?}"
    );
    assert_no_secret_in(&err);
}

#[tokio::test]
async fn a_vault_that_does_not_answer_in_time_is_transient() {
    let harness = Harness::start().await;
    let store = KeyVaultSecretStore::with_options(
        &harness.config(CLIENT_SECRET),
        KeyVaultOptions {
            operation_timeout: Duration::from_millis(1500),
            ..harness.options()
        },
    )
    .unwrap();
    store.check().await.unwrap();
    harness
        .fake
        .script([Scripted::Stall(Duration::from_secs(5))]);
    let err = store.check().await.unwrap_err();
    assert!(
        matches!(&err, SecretError::Transient { message, .. } if message.contains("no answer")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_vault_is_transient() {
    let harness = Harness::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = reqwest_azure::Client::builder()
        .tls_certs_only([reqwest_azure::Certificate::from_pem(harness.ca_pem.as_bytes()).unwrap()])
        .resolve(VAULT_HOST, closed)
        .resolve(LOGIN_HOST, closed)
        .no_proxy()
        .build()
        .unwrap();
    let mut config = harness.config(CLIENT_SECRET);
    config.vault_url = format!("https://{VAULT_HOST}:{}/", closed.port());
    let store = KeyVaultSecretStore::with_options(
        &config,
        KeyVaultOptions {
            transport: Some(Transport::new(Arc::new(client))),
            ..harness.options()
        },
    )
    .unwrap();
    let err = store.check().await.unwrap_err();
    assert!(matches!(err, SecretError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn check_answers_with_the_probes_404_and_describe_names_vault_and_credential() {
    let harness = Harness::start().await;
    let store = harness.store();
    store.check().await.unwrap();
    assert_eq!(
        harness.fake.seen().vault_requests,
        vec!["GET /secrets/txdx-startup-probe/".to_owned()]
    );
    let description = store.describe();
    assert!(
        description.contains(&harness.fake.vault_url),
        "{description}"
    );
    assert!(description.contains("client secret"), "{description}");
    assert!(description.contains(CLIENT_ID), "{description}");
    assert!(!description.contains(CLIENT_SECRET));
}
