use serde_json::{Value, json};
use sqlx::PgPool;

use uuid::Uuid;

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

/// Every page of `/api/tickets?{query}` at `limit` a page: no ticket twice,
/// newest first, every page but the last full.
async fn walk_tickets(
    app: &TestApp,
    token: &str,
    query: &[(&str, String)],
    limit: usize,
) -> Vec<Value> {
    let mut tickets: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut params = query.to_vec();
        params.push(("limit", limit.to_string()));
        if let Some(cursor) = &cursor {
            params.push(("cursor", cursor.clone()));
        }
        let response = app
            .client
            .get(app.url("/api/tickets"))
            .bearer_auth(token)
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(
            items.iter().all(|t| t.get("actions").is_none()),
            "lists omit actions"
        );
        tickets.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), limit);
                cursor = Some(next.to_owned());
            }
            None => {
                let ids: std::collections::HashSet<&str> =
                    tickets.iter().map(|t| t["id"].as_str().unwrap()).collect();
                assert_eq!(ids.len(), tickets.len(), "a ticket appears on two pages");
                let times: Vec<chrono::DateTime<chrono::Utc>> = tickets
                    .iter()
                    .map(|t| t["created_at"].as_str().unwrap().parse().unwrap())
                    .collect();
                assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first");
                return tickets;
            }
        }
    }
    panic!("the cursor does not advance");
}

fn subjects(tickets: &[Value]) -> Vec<&str> {
    tickets
        .iter()
        .map(|t| t["subject"].as_str().unwrap())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn the_ticket_list_filters_by_status_and_creation_time_and_cursor_pages_cover_every_ticket_once(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            app.create_ticket(&admin, &json!({"subject": format!("T{i}")}))
                .await,
        );
    }
    for i in [2, 5] {
        let response = app
            .put_json(
                &format!("/api/tickets/{}", created[i]["id"].as_str().unwrap()),
                &admin.access_token,
                &json!({"status": "DERIVED", "status_reason": "by hand"}),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let token = &admin.access_token;

    for limit in [1, 3, 7, 50] {
        let all = walk_tickets(&app, token, &[], limit).await;
        assert_eq!(
            subjects(&all),
            ["T6", "T5", "T4", "T3", "T2", "T1", "T0"],
            "limit {limit}"
        );
    }
    let derived = walk_tickets(&app, token, &[("status", "DERIVED".into())], 1).await;
    assert_eq!(subjects(&derived), ["T5", "T2"]);
    assert!(derived.iter().all(|t| t["status"] == "DERIVED"));
    let pending = walk_tickets(&app, token, &[("status", "PENDING".into())], 2).await;
    assert_eq!(subjects(&pending), ["T6", "T4", "T3", "T1", "T0"]);

    let t3 = created[3]["created_at"].as_str().unwrap().to_owned();
    let after = walk_tickets(&app, token, &[("created_after", t3.clone())], 2).await;
    assert_eq!(
        subjects(&after),
        ["T6", "T5", "T4", "T3"],
        "created_after is inclusive"
    );
    let before = walk_tickets(&app, token, &[("created_before", t3.clone())], 2).await;
    assert_eq!(
        subjects(&before),
        ["T2", "T1", "T0"],
        "created_before is exclusive"
    );
    let t5 = created[5]["created_at"].as_str().unwrap().to_owned();
    let window = walk_tickets(
        &app,
        token,
        &[
            ("status", "PENDING".into()),
            ("created_after", t3),
            ("created_before", t5),
        ],
        1,
    )
    .await;
    assert_eq!(subjects(&window), ["T4", "T3"]);

    // Another company's list is empty, not ours.
    let bravo = app.register_company("Bravo").await;
    assert!(
        walk_tickets(&app, &bravo.access_token, &[], 3)
            .await
            .is_empty()
    );
}

#[sqlx::test(migrations = false)]
async fn subject_and_description_change_while_pending_and_a_settled_ticket_answers_409(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    let ticket = app
        .create_ticket(&admin, &json!({"subject": "Old", "description": "d"}))
        .await;
    let path = format!("/api/tickets/{}", ticket["id"].as_str().unwrap());

    // Any member of the company may edit a PENDING ticket.
    let response = app
        .put_json(
            &path,
            &user.access_token,
            &json!({"subject": "  New subject ", "description": "More"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["subject"], "New subject");
    assert_eq!(updated["description"], "More");
    assert_eq!(updated["status"], "PENDING");
    assert_eq!(updated["actions"], json!([]));
    let row: (String, String) = sqlx::query_as("SELECT subject, description FROM tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(row, ("New subject".into(), "More".into()));
    let payload: Value =
        sqlx::query_scalar("SELECT payload FROM audit_logs WHERE action = 'ticket.updated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(payload["subject_changed"], true);
    assert_eq!(payload["description_changed"], true);

    for (body, field) in [
        (json!({"subject": ""}), "subject"),
        (json!({"subject": "x".repeat(301)}), "subject"),
        (json!({"description": "x".repeat(20_001)}), "description"),
        (json!({"status_reason": "no status"}), "status_reason"),
        (json!({"status": "EXECUTED"}), "status"),
        (json!({"status": "PENDING"}), "status"),
    ] {
        let problem =
            assert_problem(app.put_json(&path, &admin.access_token, &body).await, 422).await;
        assert_eq!(problem["field"], field, "{problem}");
    }

    let response = app
        .put_json(
            &path,
            &admin.access_token,
            &json!({"status": "DERIVED", "status_reason": "phone call"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let before = app.snapshot().await;
    for body in [
        json!({"subject": "Too late"}),
        json!({"description": "Too late"}),
        json!({"status": "DERIVED", "status_reason": "again"}),
    ] {
        let problem =
            assert_problem(app.put_json(&path, &admin.access_token, &body).await, 409).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("DERIVED"),
            "{problem}"
        );
    }
    crate::test_app::assert_unchanged(
        &before,
        &app.snapshot().await,
        "after edits of a settled ticket",
    );
}

#[sqlx::test(migrations = false)]
async fn an_admin_derives_a_ticket_with_a_reason_cancelling_its_pending_actions_and_a_user_may_not(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let ticket = app
        .create_ticket(
            &user,
            &json!({"subject": "Block", "actions": [
                {"integration_id": pan, "action": "block_ip", "params": {"ip": "203.0.113.7"}},
                {"integration_id": pan, "action": "unblock_ip", "params": {"ip": "203.0.113.8"}},
            ]}),
        )
        .await;
    let path = format!("/api/tickets/{}", ticket["id"].as_str().unwrap());
    assert_eq!(ticket["executed_at"], Value::Null);

    let before = app.snapshot().await;
    let problem = assert_problem(
        app.put_json(
            &path,
            &user.access_token,
            &json!({"status": "DERIVED", "status_reason": "mine"}),
        )
        .await,
        403,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("ADMIN"));
    for body in [
        json!({"status": "DERIVED"}),
        json!({"status": "DERIVED", "status_reason": "   "}),
        json!({"status": "DERIVED", "status_reason": "x".repeat(2001)}),
    ] {
        let problem =
            assert_problem(app.put_json(&path, &admin.access_token, &body).await, 422).await;
        assert_eq!(problem["field"], "status_reason");
    }
    crate::test_app::assert_unchanged(&before, &app.snapshot().await, "after refused derivations");

    let response = app
        .put_json(
            &path,
            &admin.access_token,
            &json!({"status": "DERIVED", "status_reason": "  Firewall team handles it "}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let derived: Value = response.json().await.unwrap();
    assert_eq!(derived["status"], "DERIVED");
    assert_eq!(derived["status_reason"], "Firewall team handles it");
    assert!(derived["executed_at"].is_string(), "{derived}");
    let statuses: Vec<&str> = derived["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["CANCELLED", "CANCELLED"]);
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT status, finished_at IS NOT NULL FROM ticket_actions ORDER BY position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [("CANCELLED".into(), true), ("CANCELLED".into(), true)]
    );
    let row: (String, Option<String>, bool) =
        sqlx::query_as("SELECT status, status_reason, executed_at IS NOT NULL FROM tickets")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        row,
        (
            "DERIVED".into(),
            Some("Firewall team handles it".into()),
            true
        )
    );
    let audit: (Uuid, Value) = sqlx::query_as(
        "SELECT actor_user_id, payload FROM audit_logs WHERE action = 'ticket.derived'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audit.0, admin.user_id);
    assert_eq!(audit.1["reason"], "Firewall team handles it");
}

#[sqlx::test(migrations = false)]
async fn a_ticket_is_deleted_by_its_creator_while_pending_or_by_an_admin_and_by_no_one_else(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let bob = app.create_user(&admin, "bob", "USER").await;
    let eve = app.create_user(&admin, "eve", "USER").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let create = |subject: &'static str| {
        let app = &app;
        let bob = bob.clone();
        async move {
            let ticket = app
                .create_ticket(
                    &bob,
                    &json!({"subject": subject, "actions": [{"integration_id": pan, "action": "block_ip", "params": {"ip": "203.0.113.7"}}]}),
                )
                .await;
            format!("/api/tickets/{}", ticket["id"].as_str().unwrap())
        }
    };
    let tickets_left = |app: &TestApp| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT subject FROM tickets ORDER BY subject")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };

    // Another USER: 403, nothing deleted.
    let own = create("own").await;
    let before = app.snapshot().await;
    assert_problem(app.delete(&own, &eve.access_token).await, 403).await;
    crate::test_app::assert_unchanged(
        &before,
        &app.snapshot().await,
        "after another USER's delete",
    );
    // The creator, while PENDING: deleted with its actions, audited.
    assert_eq!(app.delete(&own, &bob.access_token).await.status(), 204);
    assert_problem(app.get(&own, &bob.access_token).await, 404).await;
    assert!(tickets_left(&app).await.is_empty());
    assert_eq!(app.count("SELECT count(*) FROM ticket_actions").await, 0);
    let actor: Uuid =
        sqlx::query_scalar("SELECT actor_user_id FROM audit_logs WHERE action = 'ticket.deleted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(actor, bob.user_id);

    // The creator once it is no longer PENDING: 403.
    let settled = create("settled").await;
    let response = app
        .put_json(
            &settled,
            &admin.access_token,
            &json!({"status": "DERIVED", "status_reason": "r"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_problem(app.delete(&settled, &bob.access_token).await, 403).await;
    assert_eq!(tickets_left(&app).await, ["settled"]);
    // An ADMIN: any ticket, PENDING or not.
    let pending = create("pending").await;
    assert_eq!(
        app.delete(&settled, &admin.access_token).await.status(),
        204
    );
    assert_eq!(
        app.delete(&pending, &admin.access_token).await.status(),
        204
    );
    assert!(tickets_left(&app).await.is_empty());
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'ticket.deleted'")
            .await,
        3
    );
}
