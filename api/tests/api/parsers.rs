//! Property tests of the request parsers, in-process (no database): every
//! request DTO read through our `Json` extractor, and every list's query
//! string through our `Query` extractor (with the cursor decoder), on
//! arbitrary bytes, arbitrary JSON and near-valid documents. Whatever comes
//! in: no panic, a 204 from the stand-in handler or a 400/422 problem
//! document, and nothing the OpenAPI document forbids accepted.

use std::collections::{BTreeMap, BTreeSet};

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Request, StatusCode, header::CONTENT_TYPE},
    routing::{get, post},
};
use proptest::{collection, prelude::*, sample::select};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower::ServiceExt;
use txdx_api::{
    error::ApiError,
    extract::{Json, Query},
    routes::{
        audit_logs::AuditQuery,
        auth::{LoginRequest, RefreshRequest, RegisterRequest},
        companies::{CompanyQuery, UpdateCompanyRequest},
        integrations::{CreateIntegrationRequest, IntegrationQuery, UpdateIntegrationRequest},
        tickets::{CreateTicketRequest, TicketQuery, UpdateTicketRequest, decode_cursor},
        users::{CreateUserRequest, OffsetPage, UpdateUserRequest},
    },
};

/// Cases per property: enough to find the shallow bugs on every run, few
/// enough to keep the default test run fast.
const CASES: u32 = 256;

async fn accept<T: DeserializeOwned>(Json(_): Json<T>) -> StatusCode {
    StatusCode::NO_CONTENT
}

/// One route per request DTO, named after its OpenAPI schema, and a valid
/// body for each (the control that 204 is reachable).
fn dto_routes() -> (Router, BTreeMap<&'static str, Value>) {
    let uuid = "0190a0a0-0000-7000-8000-000000000001";
    let router = Router::new()
        .route("/RegisterRequest", post(accept::<RegisterRequest>))
        .route("/LoginRequest", post(accept::<LoginRequest>))
        .route("/RefreshRequest", post(accept::<RefreshRequest>))
        .route("/CreateUserRequest", post(accept::<CreateUserRequest>))
        .route("/UpdateUserRequest", post(accept::<UpdateUserRequest>))
        .route(
            "/UpdateCompanyRequest",
            post(accept::<UpdateCompanyRequest>),
        )
        .route(
            "/CreateIntegrationRequest",
            post(accept::<CreateIntegrationRequest>),
        )
        .route(
            "/UpdateIntegrationRequest",
            post(accept::<UpdateIntegrationRequest>),
        )
        .route("/CreateTicketRequest", post(accept::<CreateTicketRequest>))
        .route("/UpdateTicketRequest", post(accept::<UpdateTicketRequest>));
    let valid = BTreeMap::from([
        (
            "RegisterRequest",
            json!({"company_name": "Acme", "username": "alice", "email": "a@example.com", "password": "correct horse battery"}),
        ),
        (
            "LoginRequest",
            json!({"username": "alice", "password": "pw"}),
        ),
        ("RefreshRequest", json!({"refresh_token": "t"})),
        (
            "CreateUserRequest",
            json!({"username": "bob", "email": "b@example.com", "password": "pw", "role": "USER"}),
        ),
        ("UpdateUserRequest", json!({"role": "ADMIN"})),
        ("UpdateCompanyRequest", json!({"name": "Acme"})),
        (
            "CreateIntegrationRequest",
            json!({"provider": "SPLUNK", "name": "siem", "mode": "live", "settings": {}, "credentials": {"token": "t"}}),
        ),
        ("UpdateIntegrationRequest", json!({"mode": "simulated"})),
        (
            "CreateTicketRequest",
            json!({"subject": "s", "actions": [{"integration_id": uuid, "provider": "WAZUH", "action": "list_agents", "params": {}, "max_attempts": 3}]}),
        ),
        (
            "UpdateTicketRequest",
            json!({"status": "DERIVED", "status_reason": "r"}),
        ),
    ]);
    (router, valid)
}

/// Every field name of the request DTOs, so generated objects hit real
/// fields (with wrong values) as well as unknown ones.
const FIELDS: &[&str] = &[
    "company_name",
    "username",
    "email",
    "password",
    "refresh_token",
    "role",
    "name",
    "provider",
    "mode",
    "settings",
    "credentials",
    "subject",
    "description",
    "actions",
    "integration_id",
    "action",
    "params",
    "max_attempts",
    "status",
    "status_reason",
];

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        select(vec![
            "ADMIN",
            "USER",
            "SPLUNK",
            "PALO_ALTO",
            "WAZUH",
            "MERAKI",
            "live",
            "simulated",
            "DERIVED",
            "PENDING",
            "block_ip",
            "send_event",
            "0190a0a0-0000-7000-8000-000000000001",
            "",
            "\u{0}",
            "\u{feff}",
            "\\ud800",
        ])
        .prop_map(str::to_owned),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            collection::btree_map(
                prop_oneof![select(FIELDS).prop_map(str::to_owned), "[a-z_]{1,10}"],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies: arbitrary bytes, arbitrary JSON, objects of real field names
/// with arbitrary values, and truncated or spliced JSON text.
fn any_object() -> impl Strategy<Value = Value> {
    collection::btree_map(select(FIELDS), any_json(), 0..8).prop_map(|fields| {
        Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        collection::vec(any::<u8>(), 0..200),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        any_object().prop_map(|v| v.to_string().into_bytes()),
        (any_object(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut text = v.to_string().into_bytes();
            let at = at.index(text.len() + 1);
            if byte % 2 == 0 {
                text.truncate(at);
            } else {
                text.insert(at, byte);
            }
            text
        }),
    ]
}

/// Whether a string or key anywhere in `value` holds U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Status, content type and body of one in-process request.
fn send(
    runtime: &tokio::runtime::Runtime,
    router: &Router,
    request: Request<Body>,
) -> (StatusCode, Option<HeaderValue>, Vec<u8>) {
    runtime.block_on(async {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, content_type, body.to_vec())
    })
}

/// A 4xx answer is a problem document that names its status (and, for a
/// 422, the field).
fn check_problem(
    status: StatusCode,
    content_type: Option<&HeaderValue>,
    body: &[u8],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        content_type.and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let problem: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("the problem is not JSON: {e}")))?;
    prop_assert_eq!(&problem["status"], &json!(status.as_u16()));
    prop_assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{}",
        problem
    );
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        prop_assert!(
            problem["field"].as_str().is_some_and(|f| !f.is_empty()),
            "{}",
            problem
        );
    }
    Ok(())
}

#[test]
fn the_fuzzed_dtos_are_every_request_body_of_the_document() {
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let mut documented = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            if let Some(schema) =
                operation.pointer("/requestBody/content/application~1json/schema/$ref")
            {
                let name = schema.as_str().unwrap().rsplit('/').next().unwrap();
                documented.insert(name.to_owned());
            }
        }
    }
    let (_, valid) = dto_routes();
    let fuzzed: BTreeSet<String> = valid.keys().map(|k| (*k).to_owned()).collect();
    assert_eq!(fuzzed, documented);

    // Control: a valid body of each gets through, so the properties below
    // can see an acceptance.
    let (router, valid) = dto_routes();
    let runtime = runtime();
    for (name, body) in valid {
        let request = Request::post(format!("/{name}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, _, text) = send(&runtime, &router, request);
        assert_eq!(
            status,
            StatusCode::NO_CONTENT,
            "{name}: {}",
            String::from_utf8_lossy(&text)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_body_for_any_request_dto_is_accepted_as_an_object_or_refused_with_a_problem(
        body in any_body(),
    ) {
        let (router, valid) = dto_routes();
        let runtime = runtime();
        let well_formed = serde_json::from_slice::<Value>(&body).ok();
        for name in valid.keys() {
            let request = Request::post(format!("/{name}"))
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(body.clone()))
                .unwrap();
            let (status, content_type, answer) = send(&runtime, &router, request);
            match status {
                StatusCode::NO_CONTENT => {
                    let document = well_formed.as_ref();
                    prop_assert!(
                        document.is_some_and(Value::is_object),
                        "{} accepted a body that is not a JSON object: {:?}",
                        name,
                        String::from_utf8_lossy(&body)
                    );
                    prop_assert!(
                        !document.is_some_and(holds_nul),
                        "{} accepted a NUL character", name
                    );
                }
                StatusCode::BAD_REQUEST => {
                    prop_assert!(well_formed.is_none(), "{}: well-formed JSON answered 400", name);
                    check_problem(status, content_type.as_ref(), &answer)?;
                }
                StatusCode::UNPROCESSABLE_ENTITY => {
                    prop_assert!(well_formed.is_some(), "{}: malformed JSON answered 422", name);
                    check_problem(status, content_type.as_ref(), &answer)?;
                }
                other => prop_assert!(false, "{} answered {} to {:?}", name, other, String::from_utf8_lossy(&body)),
            }
        }
    }
}

// ------------------------------------------------------------ query strings

fn cursor_checked(cursor: Option<&str>) -> Result<StatusCode, ApiError> {
    cursor.map(decode_cursor).transpose()?;
    Ok(StatusCode::NO_CONTENT)
}

/// Each list's query type (with the cursor decoded where it has one), and
/// the parameters it allows.
fn query_routes() -> (Router, BTreeMap<&'static str, Vec<&'static str>>) {
    let router = Router::new()
        .route(
            "/api/tickets",
            get(|Query(q): Query<TicketQuery>| async move { cursor_checked(q.cursor.as_deref()) }),
        )
        .route(
            "/api/audit-logs",
            get(|Query(q): Query<AuditQuery>| async move { cursor_checked(q.cursor.as_deref()) }),
        )
        .route(
            "/api/users",
            get(|Query(_): Query<OffsetPage>| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/api/integrations",
            get(|Query(_): Query<IntegrationQuery>| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/api/companies",
            get(|Query(_): Query<CompanyQuery>| async { StatusCode::NO_CONTENT }),
        );
    let allowed = BTreeMap::from([
        (
            "/api/tickets",
            vec![
                "status",
                "created_after",
                "created_before",
                "limit",
                "cursor",
            ],
        ),
        (
            "/api/audit-logs",
            vec![
                "entity_type",
                "entity_id",
                "actor_user_id",
                "since",
                "until",
                "limit",
                "cursor",
            ],
        ),
        ("/api/users", vec!["limit", "offset"]),
        ("/api/integrations", vec!["provider", "limit", "offset"]),
        ("/api/companies", vec![]),
    ]);
    (router, allowed)
}

#[test]
fn the_fuzzed_query_types_allow_exactly_the_documented_parameters() {
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let (_, allowed) = query_routes();
    for (path, names) in allowed {
        let documented: BTreeSet<&str> = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .map(|params| {
                params
                    .iter()
                    .filter(|p| p["in"] == "query")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(documented, names.into_iter().collect(), "{path}");
    }
}

fn any_query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,16}",
        "[0-9]{1,12}",
        "-?[0-9]{1,25}",
        select(vec![
            "0",
            "1",
            "200",
            "201",
            "2147483647",
            "2147483648",
            "4294967296",
            "PENDING",
            "DERIVED",
            "SPLUNK",
            "ticket",
            "ticket_action",
            "2026-11-23T10:00:00Z",
            "2026-13-01T00:00:00Z",
            "0190a0a0-0000-7000-8000-000000000001",
            "MjAyNi0xMS0yM1QxMDowMDowMC4wMDAwMDBafDAxOTBhMGEwLTAwMDAtNzAwMC04MDAwLTAwMDAwMDAwMDAwMQ",
            "",
            "\u{0}",
        ])
        .prop_map(str::to_owned),
        collection::vec(any::<u8>(), 0..40).prop_map(|bytes| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        }),
    ]
}

fn any_query_key() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "status",
            "created_after",
            "created_before",
            "limit",
            "offset",
            "cursor",
            "entity_type",
            "entity_id",
            "actor_user_id",
            "since",
            "until",
            "provider",
            "sort",
            "order_by",
            "company_id",
            "limit[]",
            "",
        ])
        .prop_map(str::to_owned),
        ".{0,8}",
    ]
}

/// Query strings: encoded pairs, or raw text of the characters that make
/// query parsing interesting (`&`, `=`, `+`, broken percent escapes).
fn any_query() -> impl Strategy<Value = String> {
    let pairs = collection::vec((any_query_key(), any_query_value()), 0..5).prop_map(|pairs| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    });
    let raw = collection::vec(
        prop_oneof![
            select(vec![
                "&", "=", "+", "%", "%2", "%zz", "%00", "%FF", "%C3%28", "limit", "offset",
                "cursor", "status", "1",
            ])
            .prop_map(str::to_owned),
            "[a-z0-9_]{1,6}",
        ],
        0..12,
    )
    .prop_map(|tokens| tokens.concat());
    prop_oneof![pairs, raw]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_query_string_on_any_list_is_allowlisted_or_refused_with_a_problem(query in any_query()) {
        let (router, allowed) = query_routes();
        let runtime = runtime();
        for (path, names) in &allowed {
            let Ok(request) = Request::get(format!("{path}?{query}")).body(Body::empty()) else {
                // Not a URI a client could send at all.
                continue;
            };
            let (status, content_type, answer) = send(&runtime, &router, request);
            match status {
                StatusCode::NO_CONTENT => {
                    let pairs: Vec<(String, String)> =
                        form_urlencoded::parse(query.as_bytes()).into_owned().collect();
                    let mut seen = BTreeSet::new();
                    for (key, value) in &pairs {
                        prop_assert!(names.contains(&key.as_str()), "{} accepted `{}` in {:?}", path, key, query);
                        prop_assert!(seen.insert(key.clone()), "{} accepted `{}` twice", path, key);
                        if key == "limit" {
                            prop_assert!(matches!(value.parse::<u32>(), Ok(1..=200)), "{}: limit={}", path, value);
                        }
                        if key == "offset" {
                            prop_assert!(value.parse::<i32>().is_ok_and(|o| o >= 0), "{}: offset={}", path, value);
                        }
                    }
                }
                StatusCode::BAD_REQUEST => check_problem(status, content_type.as_ref(), &answer)?,
                other => prop_assert!(false, "{}?{} answered {}", path, query, other),
            }
        }
    }
}
