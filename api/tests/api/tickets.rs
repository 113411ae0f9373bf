use serde_json::{Value, json};
use sqlx::PgPool;

use crate::test_app::{TestApp, assert_problem};

#[sqlx::test(migrations = false)]
async fn creating_a_ticket_with_actions_commits_ticket_actions_first_job_and_audit_together(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let splunk = app.create_integration(&admin, "SPLUNK", "siem").await;
    let response = app
        .post_json(
            "/api/tickets",
            Some(&admin.access_token),
            &json!({"subject": "Block scanner", "actions": [
                {"integration_id": pan, "action": "block_ip", "params": {"ip": "203.0.113.7"}},
                {"integration_id": splunk, "action": "send_event", "params": {"event": {"blocked": "203.0.113.7"}}},
            ]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let ticket: Value = response.json().await.unwrap();
    assert_eq!(ticket["status"], "PENDING");
    assert_eq!(ticket["actions"].as_array().unwrap().len(), 2);
    assert_eq!(ticket["actions"][0]["position"], 0);
    assert_eq!(ticket["actions"][0]["provider"], "PALO_ALTO");
    assert_eq!(ticket["actions"][1]["status"], "PENDING");

    let jobs: i64 = app
        .count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'txdx::ticket_action'")
        .await;
    assert_eq!(
        jobs, 1,
        "only the first action is queued; the next is chained on success"
    );
    let linked: i64 = app
        .count("SELECT count(*) FROM ticket_actions a JOIN apalis.jobs j ON j.id = a.job_id WHERE a.position = 0")
        .await;
    assert_eq!(linked, 1);
    let audits: i64 = app
        .count("SELECT count(*) FROM audit_logs WHERE action = 'ticket.created'")
        .await;
    assert_eq!(audits, 1);
}

#[sqlx::test(migrations = false)]
async fn an_invalid_action_is_a_422_naming_the_field_and_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let cases = [
        (
            json!({"integration_id": pan, "action": "reboot", "params": {}}),
            "actions[0].action",
        ),
        (
            json!({"integration_id": pan, "action": "block_ip", "params": {"ip": "999.1.1.1"}}),
            "actions[0].params",
        ),
        (
            json!({"integration_id": pan, "action": "block_ip", "params": {}}),
            "actions[0].params",
        ),
        (
            json!({"integration_id": uuid::Uuid::new_v4(), "action": "block_ip", "params": {"ip": "1.2.3.4"}}),
            "actions[0].integration_id",
        ),
        (
            json!({"integration_id": pan, "provider": "MERAKI", "action": "block_ip", "params": {"ip": "1.2.3.4"}}),
            "actions[0].provider",
        ),
        (
            json!({"integration_id": pan, "action": "block_ip", "params": {"ip": "1.2.3.4"}, "max_attempts": 0}),
            "actions[0].max_attempts",
        ),
    ];
    for (action, field) in cases {
        let response = app
            .post_json(
                "/api/tickets",
                Some(&admin.access_token),
                &json!({"subject": "x", "actions": [action]}),
            )
            .await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], field, "{problem}");
    }
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM ticket_actions").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
}

#[sqlx::test(migrations = false)]
async fn another_companys_integration_cannot_be_named_in_a_ticket(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let a = app.register_company("Alpha").await;
    let b = app.register_company("Bravo").await;
    let b_integration = app.create_integration(&b, "PALO_ALTO", "fw").await;
    let response = app
        .post_json(
            "/api/tickets",
            Some(&a.access_token),
            &json!({"subject": "x", "actions": [{"integration_id": b_integration, "action": "block_ip", "params": {"ip": "1.2.3.4"}}]}),
        )
        .await;
    let problem = assert_problem(response, 422).await;
    assert_eq!(problem["field"], "actions[0].integration_id");
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_repeated_idempotency_key_returns_the_first_ticket_and_creates_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let body = json!({"subject": "Block", "actions": [{"integration_id": pan, "action": "block_ip", "params": {"ip": "203.0.113.7"}}]});
    let send = |body: Value| {
        let app = &app;
        let token = admin.access_token.clone();
        async move {
            app.client
                .post(app.url("/api/tickets"))
                .bearer_auth(token)
                .header("Idempotency-Key", "order-42")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = send(body.clone()).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = send(body.clone()).await;
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);

    let mut other = body.clone();
    other["subject"] = json!("Something else");
    let problem = assert_problem(send(other).await, 422).await;
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, 1);
}

#[sqlx::test(migrations = false)]
async fn concurrent_requests_with_one_idempotency_key_create_one_ticket(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let body = json!({"subject": "Block", "actions": [{"integration_id": pan, "action": "block_ip", "params": {"ip": "203.0.113.7"}}]});
    let requests = (0..8).map(|_| {
        app.client
            .post(app.url("/api/tickets"))
            .bearer_auth(&admin.access_token)
            .header("Idempotency-Key", "same")
            .json(&body)
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        ids.insert(v["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
}

#[sqlx::test(migrations = false)]
async fn a_ticket_without_actions_is_a_manual_pending_ticket_with_no_job(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let user = app.register_company("Acme").await;
    let response = app
        .post_json(
            "/api/tickets",
            Some(&user.access_token),
            &json!({"subject": "Investigate"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let ticket: Value = response.json().await.unwrap();
    assert_eq!(ticket["status"], "PENDING");
    assert_eq!(ticket["actions"], json!([]));
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
}
