//! Size and shape limits on hostile input: deeply nested JSON and huge
//! arrays in a body answer 4xx (never a stack overflow, a 500 or a dropped
//! connection), and the list endpoints filter and sort only by their
//! allowlisted parameters.

use reqwest::{Method, header::CONTENT_TYPE};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::test_app::{PASSWORD, TestApp, assert_problem, assert_unchanged};

/// `depth` nested arrays: `[[[ ... ]]]`.
fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// `depth` nested objects: `{"a":{"a": ... {}}}`.
fn nested_objects(depth: usize) -> String {
    format!("{}{{}}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// Every documented (method, path) with a request body, `{id}` filled in.
fn body_operations(ids: &[(&str, String)]) -> Vec<(Method, String)> {
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let mut operations = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("requestBody").is_none() {
                continue;
            }
            let resource = template.split('/').nth(2).unwrap_or_default();
            let id = ids
                .iter()
                .find(|(r, _)| *r == resource)
                .map(|(_, id)| id.clone())
                .unwrap_or_default();
            operations.push((
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                template.replace("{id}", &id),
            ));
        }
    }
    operations
}

#[sqlx::test(migrations = false)]
async fn deeply_nested_json_in_any_body_is_a_400_and_the_server_keeps_answering(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let integration = app.create_integration(&admin, "SPLUNK", "siem").await;
    let ticket = app
        .create_ticket(&admin, &json!({"subject": "Investigate"}))
        .await;
    let job = app
        .create_ticket(
            &admin,
            &json!({"subject": "Send", "actions": [{"integration_id": integration, "action": "send_event", "params": {"event": {}}}]}),
        )
        .await;
    let ids = [
        ("jobs", job["actions"][0]["id"].as_str().unwrap().to_owned()),
        ("companies", admin.company_id.to_string()),
        ("users", admin.user_id.to_string()),
        ("integrations", integration.to_string()),
        ("tickets", ticket["id"].as_str().unwrap().to_owned()),
    ];
    let operations = body_operations(&ids);
    assert!(operations.len() >= 11, "{operations:?}");

    let before = app.snapshot().await;
    // 10,000 levels at the top and inside a field the handler reads as free
    // JSON (`params`), as arrays and as objects; 100,000 levels just under
    // the body limit.
    let deep_params = format!(
        r#"{{"subject":"x","actions":[{{"integration_id":"{integration}","action":"send_event","params":{{"event":{}}}}}]}}"#,
        nested_arrays(10_000)
    );
    let bodies = [
        nested_arrays(10_000),
        nested_objects(10_000),
        nested_arrays(100_000),
        format!(r#"{{"subject":{}}}"#, nested_objects(10_000)),
        deep_params,
    ];
    for (method, path) in &operations {
        for body in &bodies {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(&admin.access_token)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: the connection failed: {e}"));
            let problem = assert_problem(response, 400).await;
            let detail = problem["detail"].as_str().unwrap();
            assert!(
                detail.starts_with("malformed JSON") && detail.contains("recursion limit"),
                "{method} {path}: {problem}"
            );
        }
    }
    assert_unchanged(&before, &app.snapshot().await, "after deep bodies");
    // The server is alive and well.
    let me = app.get("/api/auth/me", &admin.access_token).await;
    assert_eq!(me.status(), 200);
}

#[sqlx::test(migrations = false)]
async fn json_nested_as_deep_as_the_parser_allows_is_stored_and_read_back_not_a_500(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let integration = app.create_integration(&admin, "SPLUNK", "siem").await;
    // The body, actions, the action and params take 4 levels; serde_json
    // allows 128 in all.
    let deepest_event: Value = serde_json::from_str(&nested_arrays(123)).unwrap();
    let ticket = app
        .create_ticket(
            &admin,
            &json!({"subject": "Deep event", "actions": [
                {"integration_id": integration, "action": "send_event", "params": {"event": deepest_event}}
            ]}),
        )
        .await;
    let id = ticket["id"].as_str().unwrap();
    let response = app
        .get(&format!("/api/tickets/{id}"), &admin.access_token)
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains(&nested_arrays(123)), "{text}");

    // One level more is refused before anything is written.
    let tickets = app.count("SELECT count(*) FROM tickets").await;
    let body = format!(
        r#"{{"subject":"x","actions":[{{"integration_id":"{integration}","action":"send_event","params":{{"event":{}}}}}]}}"#,
        nested_arrays(125)
    );
    let response = app
        .client
        .post(app.url("/api/tickets"))
        .bearer_auth(&admin.access_token)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400).await;
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, tickets);
}

#[sqlx::test(migrations = false)]
async fn huge_arrays_and_objects_under_the_body_limit_are_refused_with_a_422(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let integration = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let action = json!({"integration_id": integration, "action": "block_ip", "params": {"ip": "203.0.113.7"}});
    let many_actions = json!({"subject": "x", "actions": vec![action; 2_000]});
    let wide_params: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let wide = json!({"subject": "x", "actions": [
        {"integration_id": integration, "action": "block_ip", "params": wide_params}
    ]});
    let top_level_array = format!("[{}0]", "0,".repeat(100_000));
    let cases: [(&str, String, &str); 4] = [
        ("2,000 valid actions", many_actions.to_string(), "actions"),
        (
            "params with 10,000 keys",
            wide.to_string(),
            "actions[0].params",
        ),
        ("an array of 100,001 numbers", top_level_array, "body"),
        (
            "60,001 empty actions",
            format!(
                r#"{{"subject":"x","actions":[{}{{}}]}}"#,
                "{},".repeat(60_000)
            ),
            "actions[0].integration_id",
        ),
    ];
    let before = app.snapshot().await;
    for (what, body, field) in cases {
        assert!(body.len() < txdx_api::BODY_LIMIT_BYTES, "{what} is too big");
        let response = app
            .client
            .post(app.url("/api/tickets"))
            .bearer_auth(&admin.access_token)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], field, "{what}: {problem}");
    }
    assert_unchanged(&before, &app.snapshot().await, "after huge bodies");
}

#[sqlx::test(migrations = false)]
async fn the_nul_character_in_any_string_of_a_body_is_a_422_naming_it_not_a_500(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let integration = app.create_integration(&admin, "SPLUNK", "siem").await;
    let cases = [
        ("/api/tickets", json!({"subject": "a\u{0}b"}), "subject"),
        (
            "/api/tickets",
            json!({"subject": "x", "actions": [{"integration_id": integration, "action": "send_event", "params": {"event": {"k": ["ok", "\u{0}"]}}}]}),
            "actions[0].params.event.k[1]",
        ),
        (
            "/api/tickets",
            json!({"subject": "x", "actions": [{"integration_id": integration, "action": "send_event", "params": {"event": {"\u{0}": 1}}}]}),
            "actions[0].params.event",
        ),
        (
            "/api/auth/register",
            json!({"company_name": "Nul\u{0} Corp", "username": "nul", "email": "n@example.com", "password": PASSWORD}),
            "company_name",
        ),
        (
            "/api/auth/register",
            json!({"company_name": "Nul Corp", "username": "nul", "email": "n\u{0}@example.com", "password": PASSWORD}),
            "email",
        ),
        (
            "/api/auth/login",
            json!({"username": "acme-admin\u{0}", "password": PASSWORD}),
            "username",
        ),
        (
            "/api/integrations",
            json!({"provider": "MERAKI", "name": "m\u{0}"}),
            "name",
        ),
    ];
    let before = app.snapshot().await;
    for (path, body, field) in cases {
        let response = app.post_json(path, Some(&admin.access_token), &body).await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], field, "{path} {body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("U+0000"),
            "{problem}"
        );
    }
    assert_unchanged(&before, &app.snapshot().await, "after NUL characters");
    let response = app
        .get("/api/audit-logs?entity_type=%00", &admin.access_token)
        .await;
    assert_problem(response, 400).await;
}

/// GET operations of the collection paths under `/api/` (no `{id}`, not
/// `/api/auth/`): the list endpoints.
fn list_paths() -> Vec<String> {
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, item)| {
            path.starts_with("/api/")
                && !path.starts_with("/api/auth/")
                && !path.contains('{')
                && item.get("get").is_some()
        })
        .map(|(path, _)| path.clone())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn every_list_endpoint_refuses_unknown_sort_and_filter_parameters(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let lists = list_paths();
    assert_eq!(
        lists,
        [
            "/api/audit-logs",
            "/api/companies",
            "/api/integrations",
            "/api/jobs",
            "/api/queue/stats",
            "/api/tickets",
            "/api/users"
        ]
    );
    // Sorting is fixed per list; filters are the documented parameters,
    // each with its own type or allowlist.
    let company_id = Uuid::new_v4().to_string();
    let smuggled = [
        ("sort", "created_at"),
        ("order_by", "id; DROP TABLE tickets"),
        ("orderBy", "name"),
        ("direction", "asc"),
        ("company_id", company_id.as_str()),
        ("filter[status]", "PENDING"),
        ("bogus", "1"),
    ];
    for path in &lists {
        for (name, value) in smuggled {
            let response = app
                .client
                .get(app.url(path))
                .bearer_auth(&admin.access_token)
                .query(&[(name, value)])
                .send()
                .await
                .unwrap();
            let problem = assert_problem(response, 400).await;
            let detail = problem["detail"].as_str().unwrap();
            assert!(
                detail.contains(&format!("unknown field `{name}`")),
                "GET {path}?{name}={value}: {problem}"
            );
        }
        // Control: the list answers without them.
        let response = app.get(path, &admin.access_token).await;
        assert_eq!(response.status(), 200, "GET {path}");
    }
    // Filter values come from allowlists too.
    for (path, param, value) in [
        ("/api/tickets", "status", "pending; DELETE"),
        ("/api/integrations", "provider", "splunk"),
        ("/api/audit-logs", "entity_type", "audit_logs"),
        ("/api/audit-logs", "entity_type", "TICKET"),
        ("/api/tickets", "limit", "201"),
        ("/api/tickets", "limit", "0"),
        ("/api/users", "offset", "2147483648"),
        ("/api/audit-logs", "limit", "99999999999999999999"),
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(&admin.access_token)
            .query(&[(param, value)])
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains(param),
            "GET {path}?{param}={value}: {problem}"
        );
    }
}
