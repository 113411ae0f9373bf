//! The operators' queue board: only operators get in, on every board route.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::test_app::{TestApp, assert_problem};

const OPERATOR_PASSWORD: &str = "operator passphrase one";

async fn create_operator(app: &TestApp) {
    let hash = shared::auth::password::hash_password(OPERATOR_PASSWORD).unwrap();
    assert!(
        shared::db::operators::upsert_operator(&app.pool, "ops", &hash)
            .await
            .unwrap()
    );
}

async fn ticket_for(app: &TestApp, company: &str) -> String {
    let admin = app.register_company(company).await;
    let integration = app.create_integration(&admin, "PALO_ALTO", "fw").await;
    let ticket = app
        .create_ticket(
            &admin,
            &json!({"subject": "Block", "actions": [{"integration_id": integration, "action": "block_ip", "params": {"ip": "203.0.113.9"}}]}),
        )
        .await;
    let _ = ticket;
    admin.access_token
}

#[sqlx::test(migrations = false)]
async fn an_operator_sees_every_companys_jobs_on_the_board(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    create_operator(&app).await;
    ticket_for(&app, "Alpha").await;
    ticket_for(&app, "Bravo").await;

    let page = app
        .client
        .get(app.url("/board"))
        .basic_auth("ops", Some(OPERATOR_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "redirected to the board's page");
    assert!(page.text().await.unwrap().contains("Apalis Board"));

    let queues: Value = app
        .client
        .get(app.url("/api/v1/queues"))
        .basic_auth("ops", Some(OPERATOR_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let queue = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "txdx::ticket_action")
        .expect("the action queue");
    let pending = queue["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "PENDING_JOBS")
        .unwrap();
    assert_eq!(pending["value"], "2", "one job of each company: {queue}");
}

#[sqlx::test(migrations = false)]
async fn company_users_and_anonymous_callers_are_kept_out_of_every_board_route(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    create_operator(&app).await;
    let admin_token = ticket_for(&app, "Alpha").await;
    for path in [
        "/board",
        "/queues",
        "/tasks",
        "/workers",
        "/api/v1/queues",
        "/api/v1/tasks",
        "/api/v1/workers",
        "/api/v1/overview",
        "/api/v1/events",
        "/api/v1/queues/txdx::ticket_action/tasks",
    ] {
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            anonymous.headers()["www-authenticate"],
            "Basic realm=\"TxDx operators\", charset=\"UTF-8\""
        );
        assert_problem(anonymous, 401).await;
        assert_problem(app.get(path, &admin_token).await, 401).await;
        let wrong = app
            .client
            .get(app.url(path))
            .basic_auth("ops", Some("not the password"))
            .send()
            .await
            .unwrap();
        assert_problem(wrong, 401).await;
        // A company ADMIN's own username and password are not operator credentials.
        let admin_basic = app
            .client
            .get(app.url(path))
            .basic_auth("alpha-admin", Some(crate::test_app::PASSWORD))
            .send()
            .await
            .unwrap();
        assert_problem(admin_basic, 401).await;
    }
}

#[sqlx::test(migrations = false)]
async fn the_boards_push_a_job_route_is_refused_even_to_operators(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    create_operator(&app).await;
    let response = app
        .client
        .put(app.url("/api/v1/queues/txdx::ticket_action/tasks"))
        .basic_auth("ops", Some(OPERATOR_PASSWORD))
        .json(&json!({"company_id": uuid::Uuid::new_v4(), "ticket_id": uuid::Uuid::new_v4(), "action_id": uuid::Uuid::new_v4()}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 405).await;
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
}
