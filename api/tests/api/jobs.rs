use serde_json::{Value, json};
use sqlx::PgPool;

use crate::test_app::{TestApp, assert_problem};

async fn ticket_with_two_actions(app: &TestApp, token: &str, integration: uuid::Uuid) -> Value {
    let response = app
        .post_json(
            "/api/tickets",
            Some(token),
            &json!({"subject": "Block", "actions": [
                {"integration_id": integration, "action": "block_ip", "params": {"ip": "203.0.113.7"}},
                {"integration_id": integration, "action": "unblock_ip", "params": {"ip": "203.0.113.7"}},
            ]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn admins_list_and_filter_their_jobs_and_users_may_not(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let wazuh = app.create_integration(&admin, "WAZUH", "edr").await;
    let ticket = ticket_with_two_actions(&app, &admin.access_token, pan).await;
    app.post_json(
        "/api/tickets",
        Some(&admin.access_token),
        &json!({"subject": "Agents", "actions": [{"integration_id": wazuh, "action": "list_agents", "params": {}}]}),
    )
    .await;

    let page: Value = app
        .get("/api/jobs", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let page: Value = app
        .get("/api/jobs?provider=WAZUH", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["action"], "list_agents");
    let page: Value = app
        .get(
            &format!(
                "/api/jobs?ticket_id={}&limit=1",
                ticket["id"].as_str().unwrap()
            ),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["ticket_subject"], "Block");
    let cursor = page["next_cursor"].as_str().unwrap();
    let next: Value = app
        .get(
            &format!(
                "/api/jobs?ticket_id={}&limit=1&cursor={cursor}",
                ticket["id"].as_str().unwrap()
            ),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["items"].as_array().unwrap().len(), 1);
    assert_ne!(next["items"][0]["id"], page["items"][0]["id"]);
    assert!(next["next_cursor"].is_null());

    assert_problem(app.get("/api/jobs", &user.access_token).await, 403).await;
    assert_problem(app.get("/api/queue/stats", &user.access_token).await, 403).await;
}

#[sqlx::test(migrations = false)]
async fn cancelling_a_pending_job_derives_its_ticket_and_cancels_the_rest(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let ticket = ticket_with_two_actions(&app, &admin.access_token, pan).await;
    let first = ticket["actions"][0]["id"].as_str().unwrap();
    let response = app
        .post_json(
            &format!("/api/jobs/{first}/cancel"),
            Some(&admin.access_token),
            &json!({"reason": "false positive"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let detail: Value = response.json().await.unwrap();
    assert_eq!(detail["job"]["status"], "CANCELLED");
    assert_eq!(detail["ticket"]["status"], "DERIVED");
    assert_eq!(
        detail["ticket"]["status_reason"],
        "cancelled by an ADMIN: false positive"
    );
    assert_eq!(detail["ticket"]["actions"][1]["status"], "CANCELLED");
    assert!(
        detail["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "job.cancelled")
    );
    // Not pending any more: a second cancel is a conflict.
    assert_problem(
        app.post_json(
            &format!("/api/jobs/{first}/cancel"),
            Some(&admin.access_token),
            &json!({}),
        )
        .await,
        409,
    )
    .await;
    // A job that did not fail cannot be retried.
    let second = ticket["actions"][1]["id"].as_str().unwrap();
    let fresh = ticket_with_two_actions(&app, &admin.access_token, pan).await;
    assert_problem(
        app.post_json(
            &format!(
                "/api/jobs/{}/retry",
                fresh["actions"][0]["id"].as_str().unwrap()
            ),
            Some(&admin.access_token),
            &json!({}),
        )
        .await,
        409,
    )
    .await;
    let _ = second;
}

#[sqlx::test(migrations = false)]
async fn retrying_a_failed_job_reopens_its_ticket_and_enqueues_it_again(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let ticket = ticket_with_two_actions(&app, &admin.access_token, pan).await;
    let first = ticket["actions"][0]["id"].as_str().unwrap();
    // Fail it as a worker would have: no worker runs in this test.
    sqlx::query("UPDATE ticket_actions SET status = 'FAILED', attempts = 5, last_error = 'connection refused', finished_at = now() WHERE id = $1::uuid")
        .bind(first)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE ticket_actions SET status = 'CANCELLED', finished_at = now() WHERE position = 1",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE tickets SET status = 'FAILED', status_reason = 'connection refused', executed_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    let jobs_before = app.count("SELECT count(*) FROM apalis.jobs").await;
    let response = app
        .post_json(
            &format!("/api/jobs/{first}/retry"),
            Some(&admin.access_token),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let detail: Value = response.json().await.unwrap();
    assert_eq!(detail["job"]["status"], "PENDING");
    assert_eq!(detail["job"]["attempts"], 0);
    assert_eq!(detail["ticket"]["status"], "PENDING");
    assert!(detail["ticket"]["executed_at"].is_null());
    assert_eq!(detail["ticket"]["actions"][1]["status"], "PENDING");
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs").await,
        jobs_before + 1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'job.retried'")
            .await,
        1
    );
}

#[sqlx::test(migrations = false)]
async fn queue_stats_count_by_status_and_provider(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let pan = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    ticket_with_two_actions(&app, &admin.access_token, pan).await;
    sqlx::query(
        "UPDATE ticket_actions SET status = 'SUCCEEDED', finished_at = now() WHERE position = 0",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let stats: Value = app
        .get("/api/queue/stats", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["by_status"]["SUCCEEDED"], 1);
    assert_eq!(stats["by_status"]["PENDING"], 1);
    assert_eq!(stats["by_status"]["FAILED"], 0);
    assert_eq!(stats["by_provider"]["PALO_ALTO"]["SUCCEEDED"], 1);
    assert_eq!(stats["last_5m"]["succeeded"], 1);
    assert_eq!(stats["last_5m"]["failure_rate"], 0.0);
    assert!(stats["last_60m"]["throughput_per_min"].as_f64().unwrap() > 0.0);
}
