//! Bad input answers a precise 4xx problem document and writes nothing:
//! malformed JSON 400, wrong content type 415, unknown / mistyped / missing
//! fields 422 naming the field, bodies over the limit 413, bad ids and
//! query strings 400, unknown routes 404, wrong methods 405. Never a 500.

use reqwest::{Method, header::CONTENT_TYPE};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::test_app::{PASSWORD, Session, TestApp, assert_problem, assert_unchanged};

/// A company with one of everything, for requests that need ids.
struct Fixture {
    admin: Session,
    integration_id: String,
    ticket_id: String,
    job_id: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let admin = app.register_company("Acme").await;
    let integration_id = app
        .create_integration(&admin, "PALO_ALTO", "fw")
        .await
        .to_string();
    let ticket = app
        .create_ticket(&admin, &json!({"subject": "Investigate"}))
        .await;
    let with_job = app
        .create_ticket(
            &admin,
            &json!({"subject": "Block", "actions": [{"integration_id": integration_id, "action": "block_ip", "params": {"ip": "203.0.113.7"}}]}),
        )
        .await;
    Fixture {
        admin,
        integration_id,
        ticket_id: ticket["id"].as_str().unwrap().to_owned(),
        job_id: with_job["actions"][0]["id"].as_str().unwrap().to_owned(),
    }
}

/// One endpoint that takes a JSON body.
struct BodyEndpoint {
    method: Method,
    template: &'static str,
    path: String,
    authenticated: bool,
    valid: Value,
    /// A field that must be present, if any.
    required: Option<&'static str>,
    /// A field and a value of the wrong type for it.
    wrong_type: (&'static str, Value),
}

fn body_endpoints(f: &Fixture) -> Vec<BodyEndpoint> {
    let e = |method: Method,
             template: &'static str,
             id: &str,
             authenticated: bool,
             valid: Value,
             required: Option<&'static str>,
             wrong_type: (&'static str, Value)| BodyEndpoint {
        path: template.replace("{id}", id),
        method,
        template,
        authenticated,
        valid,
        required,
        wrong_type,
    };
    vec![
        e(
            Method::POST,
            "/api/auth/register",
            "",
            false,
            json!({"company_name": "Bravo", "username": "bravo", "email": "b@example.com", "password": PASSWORD}),
            Some("company_name"),
            ("username", json!(5)),
        ),
        e(
            Method::POST,
            "/api/auth/login",
            "",
            false,
            json!({"username": "acme-admin", "password": PASSWORD}),
            Some("password"),
            ("username", json!(true)),
        ),
        e(
            Method::POST,
            "/api/auth/refresh",
            "",
            false,
            json!({"refresh_token": f.admin.refresh_token}),
            Some("refresh_token"),
            ("refresh_token", json!(1)),
        ),
        e(
            Method::POST,
            "/api/auth/logout",
            "",
            false,
            json!({"refresh_token": f.admin.refresh_token}),
            Some("refresh_token"),
            ("refresh_token", json!(["a"])),
        ),
        e(
            Method::POST,
            "/api/users",
            "",
            true,
            json!({"username": "newbie", "email": "n@example.com", "password": PASSWORD, "role": "USER"}),
            Some("role"),
            ("email", json!(42)),
        ),
        e(
            Method::POST,
            "/api/integrations",
            "",
            true,
            json!({"provider": "MERAKI", "name": "meraki"}),
            Some("provider"),
            ("name", json!([1])),
        ),
        e(
            Method::POST,
            "/api/tickets",
            "",
            true,
            json!({"subject": "New"}),
            Some("subject"),
            ("actions", json!("not a list")),
        ),
        e(
            Method::PUT,
            "/api/companies/{id}",
            &f.admin.company_id.to_string(),
            true,
            json!({"name": "Renamed"}),
            Some("name"),
            ("name", json!(7)),
        ),
        e(
            Method::PUT,
            "/api/users/{id}",
            &f.admin.user_id.to_string(),
            true,
            json!({"email": "new@example.com"}),
            None,
            ("email", json!(false)),
        ),
        e(
            Method::PUT,
            "/api/integrations/{id}",
            &f.integration_id,
            true,
            json!({"name": "renamed"}),
            None,
            ("mode", json!(3)),
        ),
        e(
            Method::PUT,
            "/api/tickets/{id}",
            &f.ticket_id,
            true,
            json!({"subject": "Renamed"}),
            None,
            ("subject", json!({"a": 1})),
        ),
        e(
            Method::POST,
            "/api/jobs/{id}/cancel",
            &f.job_id,
            true,
            json!({"reason": "false positive"}),
            None,
            ("reason", json!(42)),
        ),
    ]
}

impl BodyEndpoint {
    fn request(&self, app: &TestApp, token: &str) -> reqwest::RequestBuilder {
        let request = app.client.request(self.method.clone(), app.url(&self.path));
        if self.authenticated {
            request.bearer_auth(token)
        } else {
            request
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

#[sqlx::test(migrations = false)]
async fn every_body_endpoint_answers_bad_bodies_with_precise_problems_and_writes_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let f = fixture(&app).await;
    let endpoints = body_endpoints(&f);

    // Every documented operation with a request body is in the table.
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_some() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let mut covered: Vec<String> = endpoints.iter().map(BodyEndpoint::name).collect();
    documented.sort();
    covered.sort();
    assert_eq!(
        documented, covered,
        "add the new body endpoint to body_endpoints"
    );

    let token = f.admin.access_token.clone();
    let before = app.snapshot().await;
    for e in &endpoints {
        let name = e.name();
        let json_request = |bytes: Vec<u8>| {
            e.request(&app, &token)
                .header(CONTENT_TYPE, "application/json")
                .body(bytes)
        };

        // Malformed JSON and an empty body: 400.
        // Malformed wins over an unknown key before the error, and a trailing
        // brace is malformed too.
        for bytes in [
            &b"{,}"[..],
            b"not json",
            b"{\"unterminated",
            b"[",
            b"{\"bogus_field\": }",
            b"{\"bogus_field\": 1}}",
            b"",
        ] {
            let response = json_request(bytes.to_vec()).send().await.unwrap();
            let problem = assert_problem(response, 400).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with("malformed JSON"),
                "{name}: {problem}"
            );
        }

        // Valid JSON under another content type: 415.
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut request = e.request(&app, &token).body(e.valid.to_string());
            if let Some(content_type) = content_type {
                request = request.header(CONTENT_TYPE, content_type);
            }
            let problem = assert_problem(request.send().await.unwrap(), 415).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("application/json"),
                "{name}: {problem}"
            );
        }

        // An unknown field: 422 naming it.
        let mut body = e.valid.clone();
        body["bogus_field"] = json!(1);
        let response = json_request(body.to_string().into_bytes())
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], "bogus_field", "{name}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("unknown field `bogus_field`"),
            "{name}: {problem}"
        );

        // A field of the wrong type: 422 naming it.
        let (field, value) = &e.wrong_type;
        let mut body = e.valid.clone();
        body[*field] = value.clone();
        let response = json_request(body.to_string().into_bytes())
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], *field, "{name}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{field}: ")) && detail.contains("invalid"),
            "{name}: {problem}"
        );
        assert!(!detail.contains("at line"), "{name}: {problem}");

        // A missing required field: 422 naming it.
        if let Some(required) = e.required {
            let mut body = e.valid.clone();
            body.as_object_mut().unwrap().remove(required);
            let response = json_request(body.to_string().into_bytes())
                .send()
                .await
                .unwrap();
            let problem = assert_problem(response, 422).await;
            assert_eq!(problem["field"], required, "{name}: {problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("missing field `{required}`")),
                "{name}: {problem}"
            );
        }

        // Not an object at all: 422 naming the body.
        let response = json_request(b"\"just a string\"".to_vec())
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], "body", "{name}: {problem}");

        // Over the limit, with and without a Content-Length: 413.
        let mut body = e.valid.clone();
        body["padding"] = json!("x".repeat(txdx_api::BODY_LIMIT_BYTES));
        let bytes = body.to_string().into_bytes();
        let response = json_request(bytes.clone()).send().await.unwrap();
        let problem = assert_problem(response, 413).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("262144"),
            "{name}: {problem}"
        );
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let response = e
            .request(&app, &token)
            .header(CONTENT_TYPE, "application/json")
            .body(streamed)
            .send()
            .await
            .unwrap();
        assert_problem(response, 413).await;
    }
    assert_unchanged(&before, &app.snapshot().await, "after bad bodies");
}

#[sqlx::test(migrations = false)]
async fn a_nested_field_error_names_its_full_path(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let f = fixture(&app).await;
    let cases = [
        (
            json!({"subject": "x", "actions": [{"integration_id": "nope", "action": "block_ip"}]}),
            "actions[0].integration_id",
            "UUID",
        ),
        (
            json!({"subject": "x", "actions": [{"integration_id": f.integration_id}]}),
            "actions[0].action",
            "missing field `action`",
        ),
        (
            json!({"subject": "x", "actions": [{"integration_id": f.integration_id, "action": "block_ip", "zz": 1}]}),
            "actions[0].zz",
            "unknown field `zz`",
        ),
        (
            json!({"subject": "x", "actions": [{"integration_id": f.integration_id, "action": "block_ip", "provider": "NOPE"}]}),
            "actions[0].provider",
            "unknown variant `NOPE`",
        ),
    ];
    let tickets = app.count("SELECT count(*) FROM tickets").await;
    for (body, field, says) in cases {
        let response = app
            .post_json("/api/tickets", Some(&f.admin.access_token), &body)
            .await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], field, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{field}: ")) && detail.contains(says),
            "{problem}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, tickets);
}

#[sqlx::test(migrations = false)]
async fn a_malformed_id_in_any_path_is_a_400(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let f = fixture(&app).await;
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let before = app.snapshot().await;
    let mut tried = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        if !template.contains("{id}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for bad in ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g"] {
                let path = template.replace("{id}", bad);
                let body = (method == Method::PUT).then(|| json!({}));
                let response = app
                    .send(
                        method.clone(),
                        &path,
                        Some(&f.admin.access_token),
                        body.as_ref(),
                    )
                    .await;
                let problem = assert_problem(response, 400).await;
                assert!(
                    problem["detail"]
                        .as_str()
                        .unwrap()
                        .starts_with("invalid path parameter"),
                    "{method} {path}: {problem}"
                );
                tried += 1;
            }
        }
    }
    assert!(tried >= 36, "{tried}");
    assert_unchanged(&before, &app.snapshot().await, "after malformed ids");
}

#[sqlx::test(migrations = false)]
async fn unknown_routes_answer_404_for_every_method(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let f = fixture(&app).await;
    let ticket = format!("/api/tickets/{}/nope", f.ticket_id);
    for path in [
        "/api/nope",
        "/api/v2/tickets",
        ticket.as_str(),
        "/app/nope.js",
    ] {
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let response = app
                .send(
                    method.clone(),
                    path,
                    Some(&f.admin.access_token),
                    Some(&json!({})),
                )
                .await;
            let problem = assert_problem(response, 404).await;
            assert_eq!(problem["title"], "Not Found", "{method} {path}");
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_wrong_method_is_a_405_naming_the_allowed_ones(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let f = fixture(&app).await;
    let ticket = format!("/api/tickets/{}", f.ticket_id);
    let credentials = format!("/api/integrations/{}/credentials", f.integration_id);
    let cases = [
        (Method::DELETE, "/api/tickets", "GET,POST"),
        (Method::PATCH, ticket.as_str(), "GET,PUT,DELETE"),
        (Method::GET, "/api/auth/login", "POST"),
        (Method::PUT, "/api/companies", "GET"),
        (Method::POST, credentials.as_str(), "GET"),
        (Method::DELETE, "/api/audit-logs", "GET"),
    ];
    let before = app.snapshot().await;
    for (method, path, allowed) in cases {
        let response = app
            .send(
                method.clone(),
                path,
                Some(&f.admin.access_token),
                Some(&json!({})),
            )
            .await;
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().replace(' ', ""));
        let problem = assert_problem(response, 405).await;
        assert_eq!(problem["title"], "Method Not Allowed");
        let allow = allow.unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        let mut allow: Vec<&str> = allow.split(',').filter(|m| *m != "HEAD").collect();
        let mut expected: Vec<&str> = allowed.split(',').collect();
        allow.sort_unstable();
        expected.sort_unstable();
        assert_eq!(allow, expected, "{method} {path}");
    }
    assert_unchanged(&before, &app.snapshot().await, "after wrong methods");
}

#[sqlx::test(migrations = false)]
async fn query_parameters_of_the_wrong_type_and_bad_cursors_are_400(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let f = fixture(&app).await;
    let cases = [
        ("/api/tickets", "limit", "many", "limit"),
        ("/api/tickets", "limit", "-1", "limit"),
        ("/api/tickets", "status", "OPEN", "status"),
        (
            "/api/tickets",
            "created_after",
            "yesterday",
            "created_after",
        ),
        (
            "/api/tickets",
            "created_before",
            "2026-13-01T00:00:00Z",
            "created_before",
        ),
        ("/api/users", "offset", "-5", "offset"),
        ("/api/users", "limit", "1.5", "limit"),
        ("/api/integrations", "provider", "CISCO", "provider"),
        ("/api/audit-logs", "since", "last week", "since"),
        ("/api/audit-logs", "entity_id", "not-a-uuid", "entity_id"),
        ("/api/audit-logs", "actor_user_id", "42", "actor_user_id"),
        ("/api/tickets", "cursor", "!!!", "cursor"),
        ("/api/tickets", "cursor", "bm9wZQ", "cursor"),
        (
            "/api/audit-logs",
            "cursor",
            "MjAyNi0wMS0wMXxub3QtYS11dWlk",
            "cursor",
        ),
        ("/api/audit-logs", "cursor", "", "cursor"),
    ];
    for (path, param, value, mentions) in cases {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(&f.admin.access_token)
            .query(&[(param, value)])
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 400).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(mentions),
            "{path}?{param}={value}: {problem}"
        );
    }
    // Control: the same lists answer with well-formed parameters.
    for path in [
        "/api/tickets?limit=1&status=PENDING",
        "/api/users?offset=0&limit=1",
        "/api/integrations?provider=PALO_ALTO",
        "/api/audit-logs?limit=1",
    ] {
        let response = app.get(path, &f.admin.access_token).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["items"].as_array().unwrap().len(), 1, "{path}: {body}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_json_array_in_place_of_a_request_object_is_a_422_at_any_depth(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let f = fixture(&app).await;
    let ticket = format!("/api/tickets/{}", f.ticket_id);
    // serde's derived structs also read an array of their fields in order:
    // each of these was accepted (200/201) before structs were read from
    // objects only.
    let cases = [
        (Method::PUT, ticket.as_str(), json!([null, null]), "body"),
        (
            Method::PUT,
            ticket.as_str(),
            json!(["Renamed", "new description"]),
            "body",
        ),
        (
            Method::POST,
            "/api/tickets",
            json!({"subject": "x", "actions": [[f.integration_id, null, "block_ip", {"ip": "203.0.113.7"}]]}),
            "actions[0]",
        ),
        (
            Method::POST,
            "/api/auth/login",
            json!(["acme-admin", PASSWORD]),
            "body",
        ),
    ];
    let before = app.snapshot().await;
    for (method, path, body, field) in cases {
        let response = app
            .send(
                method.clone(),
                path,
                Some(&f.admin.access_token),
                Some(&body),
            )
            .await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], field, "{method} {path} {body}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("invalid type: sequence"),
            "{problem}"
        );
    }
    assert_unchanged(&before, &app.snapshot().await, "after arrays for objects");
}
