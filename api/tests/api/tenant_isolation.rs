//! Tenant isolation over HTTP: another company's resources answer 404 for
//! every verb and every role, change nothing, and never show up in lists.
//!
//! The routes are read from the OpenAPI document, so a new route with an id
//! fails here until it gets a case.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::test_app::{PASSWORD, Session, TestApp, assert_problem, assert_unchanged};

/// One company with an ADMIN, a USER, another user, an integration and a
/// ticket with an action.
struct Tenant {
    admin: Session,
    user: Session,
    other_user_id: Uuid,
    integration_id: Uuid,
    ticket_id: Uuid,
    action_id: Uuid,
}

impl Tenant {
    async fn set_up(app: &TestApp, name: &'static str) -> Self {
        let admin = app.register_company(name).await;
        let prefix = name.to_lowercase();
        let user = app
            .create_user(&admin, &format!("{prefix}-user"), "USER")
            .await;
        let other = app
            .create_user(&admin, &format!("{prefix}-other"), "USER")
            .await;
        let integration_id = app
            .create_integration(&admin, "PALO_ALTO", &format!("{prefix}-fw"))
            .await;
        let ticket = app
            .create_ticket(
                &user,
                &json!({"subject": format!("{name} ticket"), "actions": [
                    {"integration_id": integration_id, "action": "block_ip", "params": {"ip": "203.0.113.7"}}
                ]}),
            )
            .await;
        Self {
            admin,
            user,
            other_user_id: other.user_id,
            integration_id,
            ticket_id: ticket["id"].as_str().unwrap().parse().unwrap(),
            action_id: ticket["actions"][0]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        }
    }

    /// The id a path's resource takes for this tenant.
    fn id_for(&self, path: &str) -> Uuid {
        match path.split('/').nth(2) {
            Some("companies") => self.admin.company_id,
            Some("users") => self.other_user_id,
            Some("integrations") => self.integration_id,
            Some("tickets") => self.ticket_id,
            Some("jobs") => self.action_id,
            other => panic!("no id of resource {other:?} for {path}: add it to Tenant::id_for"),
        }
    }

    /// Every id of this tenant, as text, to search responses for.
    fn ids(&self) -> Vec<String> {
        [
            self.admin.company_id,
            self.admin.user_id,
            self.user.user_id,
            self.other_user_id,
            self.integration_id,
            self.ticket_id,
            self.action_id,
        ]
        .iter()
        .map(Uuid::to_string)
        .collect()
    }
}

/// The requests each (method, path with an id) is tried with: `None` for no
/// body. Every documented route with an id must have an entry.
fn cases_for(method: &str, path: &str) -> Vec<Option<Value>> {
    match (method, path) {
        ("get" | "delete", _) => vec![None],
        ("post", "/api/jobs/{id}/retry") => vec![None],
        ("post", "/api/integrations/{id}/test") => vec![None],
        ("post", "/api/jobs/{id}/cancel") => vec![None, Some(json!({"reason": "mine now"}))],
        ("put", "/api/companies/{id}") => vec![Some(json!({"name": "Hijacked"}))],
        ("put", "/api/users/{id}") => vec![
            Some(json!({"email": "hijacked@evil.example"})),
            Some(json!({"role": "ADMIN"})),
            Some(json!({"password": "a brand new long passphrase"})),
        ],
        ("put", "/api/integrations/{id}") => vec![
            Some(json!({"name": "hijacked"})),
            Some(json!({"mode": "live", "credentials": {"api_key": "attacker-key"}})),
        ],
        ("put", "/api/tickets/{id}") => vec![
            Some(json!({"subject": "hijacked"})),
            Some(json!({"status": "DERIVED", "status_reason": "mine now"})),
        ],
        _ => panic!("no tenant isolation case for {method} {path}: add one to cases_for"),
    }
}

/// (method, path) of every documented operation on a path with `{id}`.
fn routes_with_an_id() -> Vec<(String, String)> {
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.contains("{id}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                routes.push((method.clone(), path.clone()));
            }
        }
    }
    routes
}

#[sqlx::test(migrations = false)]
async fn every_route_with_an_id_answers_404_to_another_companys_admin_and_user_and_changes_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let alpha = Tenant::set_up(&app, "Alpha").await;
    let bravo = Tenant::set_up(&app, "Bravo").await;
    let routes = routes_with_an_id();
    // Guard against an empty or shrunken route list passing vacuously.
    assert!(routes.len() >= 12, "{routes:?}");

    let before = app.snapshot().await;
    let mut tried = 0;
    for (method, template) in &routes {
        let path = template.replace("{id}", &alpha.id_for(template).to_string());
        for body in cases_for(method, template) {
            for (role, token) in [
                ("ADMIN", &bravo.admin.access_token),
                ("USER", &bravo.user.access_token),
            ] {
                let response = app
                    .send(
                        Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                        &path,
                        Some(token),
                        body.as_ref(),
                    )
                    .await;
                let text = format!("{} {path} as Bravo's {role} with {body:?}", method);
                let status = response.status().as_u16();
                assert_eq!(status, 404, "{text}");
                let problem = assert_problem(response, 404).await;
                assert!(
                    problem["detail"].as_str().unwrap().contains("not found"),
                    "{text}: {problem}"
                );
                tried += 1;
            }
        }
    }
    assert_unchanged(&before, &app.snapshot().await, "after Bravo's requests");
    assert!(tried >= 30, "only {tried} requests tried");

    // The same requests by Alpha's ADMIN reach the resources (control: the
    // ids and bodies above are right, so the 404s are about the tenant).
    for (method, template) in &routes {
        if method != "get" || template.ends_with("/events") {
            continue;
        }
        let path = template.replace("{id}", &alpha.id_for(template).to_string());
        let response = app.get(&path, &alpha.admin.access_token).await;
        assert_eq!(response.status(), 200, "GET {path} as Alpha's ADMIN");
    }
}

#[sqlx::test(migrations = false)]
async fn list_endpoints_never_return_another_companys_rows(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alpha = Tenant::set_up(&app, "Alpha").await;
    let bravo = Tenant::set_up(&app, "Bravo").await;
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let lists: Vec<&String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, item)| {
            path.starts_with("/api/")
                && !path.starts_with("/api/auth/")
                && !path.contains('{')
                && item.get("get").is_some()
        })
        .map(|(path, _)| path)
        .collect();
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
    let alpha_ids = alpha.ids();
    let bravo_ids = bravo.ids();
    for path in lists {
        for (role, session) in [("ADMIN", &bravo.admin), ("USER", &bravo.user)] {
            let response = app.get(path, &session.access_token).await;
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            if ["/api/audit-logs", "/api/jobs", "/api/queue/stats"].contains(&path.as_str())
                && role == "USER"
            {
                assert_eq!(status, 403, "{text}");
                continue;
            }
            assert_eq!(status, 200, "GET {path} as Bravo's {role}: {text}");
            for id in &alpha_ids {
                assert!(
                    !text.contains(id.as_str()),
                    "GET {path} as Bravo's {role} shows Alpha's {id}: {text}"
                );
            }
            assert!(
                !text.contains("Alpha") && !text.contains("alpha-"),
                "{text}"
            );
            if path == "/api/queue/stats" {
                // Counts only: exactly Bravo's one pending action, none of Alpha's.
                let stats: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(stats["by_status"]["PENDING"], 1, "{text}");
                continue;
            }
            assert!(
                bravo_ids.iter().any(|id| text.contains(id.as_str())),
                "GET {path} as Bravo's {role} shows none of Bravo's rows: {text}"
            );
            let body: Value = serde_json::from_str(&text).unwrap();
            let items = body
                .get("items")
                .unwrap_or(&body)
                .as_array()
                .unwrap()
                .clone();
            assert!(!items.is_empty(), "{path}");
            for item in items {
                if let Some(company) = item.get("company_id") {
                    assert_eq!(company, &json!(bravo.admin.company_id), "{path}: {item}");
                }
            }
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_company_id_or_role_smuggled_into_a_body_or_query_is_rejected_and_changes_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let alpha = Tenant::set_up(&app, "Alpha").await;
    let bravo = Tenant::set_up(&app, "Bravo").await;
    let alpha_company = alpha.admin.company_id;
    let admin = &bravo.admin.access_token;
    let user = &bravo.user.access_token;
    let before = app.snapshot().await;

    // Bodies: every request type denies unknown fields, so the smuggled
    // field is named in a 422 and nothing is written.
    let bodies: Vec<(Method, String, Option<&str>, Value, &str)> = vec![
        (
            Method::POST,
            "/api/tickets".into(),
            Some(user),
            json!({"subject": "x", "company_id": alpha_company}),
            "company_id",
        ),
        (
            Method::POST,
            "/api/tickets".into(),
            Some(user),
            json!({"subject": "x", "role": "ADMIN"}),
            "role",
        ),
        (
            Method::PUT,
            format!("/api/tickets/{}", bravo.ticket_id),
            Some(user),
            json!({"subject": "x", "company_id": alpha_company}),
            "company_id",
        ),
        (
            Method::POST,
            "/api/integrations".into(),
            Some(admin),
            json!({"provider": "MERAKI", "name": "m", "company_id": alpha_company}),
            "company_id",
        ),
        (
            Method::PUT,
            format!("/api/integrations/{}", bravo.integration_id),
            Some(admin),
            json!({"name": "m", "company_id": alpha_company}),
            "company_id",
        ),
        (
            Method::POST,
            "/api/users".into(),
            Some(admin),
            json!({"username": "smuggler", "email": "s@example.com", "password": PASSWORD, "role": "USER", "company_id": alpha_company}),
            "company_id",
        ),
        (
            Method::PUT,
            format!("/api/users/{}", bravo.user.user_id),
            Some(user),
            json!({"email": "u@example.com", "company_id": alpha_company}),
            "company_id",
        ),
        (
            Method::PUT,
            format!("/api/companies/{}", bravo.admin.company_id),
            Some(admin),
            json!({"name": "Renamed", "id": alpha_company}),
            "id",
        ),
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            json!({"company_name": "Charlie", "username": "charlie", "email": "c@example.com", "password": PASSWORD, "role": "USER"}),
            "role",
        ),
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            json!({"company_name": "Charlie", "username": "charlie", "email": "c@example.com", "password": PASSWORD, "company_id": alpha_company}),
            "company_id",
        ),
    ];
    for (method, path, token, body, field) in bodies {
        let response = app.send(method.clone(), &path, token, Some(&body)).await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], field, "{method} {path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }

    // A USER naming a role for itself: 403, the role stays.
    let response = app
        .put_json(
            &format!("/api/users/{}", bravo.user.user_id),
            user,
            &json!({"role": "ADMIN"}),
        )
        .await;
    assert_problem(response, 403).await;

    // Query strings: lists deny unknown parameters with 400.
    for path in [
        "/api/companies",
        "/api/tickets",
        "/api/users",
        "/api/integrations",
        "/api/audit-logs",
    ] {
        for param in ["company_id", "role"] {
            let value = if param == "role" {
                "ADMIN".to_owned()
            } else {
                alpha_company.to_string()
            };
            let response = app
                .client
                .get(app.url(path))
                .bearer_auth(admin)
                .query(&[(param, value)])
                .send()
                .await
                .unwrap();
            let problem = assert_problem(response, 400).await;
            assert!(
                problem["detail"].as_str().unwrap().contains(param),
                "{path}?{param}: {problem}"
            );
        }
    }
    assert_unchanged(&before, &app.snapshot().await, "after smuggling attempts");
}
