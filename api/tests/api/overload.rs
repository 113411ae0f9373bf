//! Overload: beyond `API_MAX_IN_FLIGHT` requests in flight the api refuses
//! the next `/api/` request at once (503 problem with `Retry-After`), keeps
//! answering its health checks, and takes requests again once a slot frees.

use std::time::Duration;

use sqlx::PgPool;

use crate::test_app::{TestApp, assert_problem};

#[sqlx::test(migrations = false)]
async fn beyond_its_limit_of_requests_in_flight_the_api_refuses_at_once_and_recovers(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), &[("API_MAX_IN_FLIGHT", "1")]).await;
    let admin = app.register_company("Acme").await;

    let lock = app.hold_company_row(admin.company_id).await;
    let held = app.post_ticket_in_background(&admin, "held");
    app.wait_for_stalled_ticket_inserts(1).await;

    let started = std::time::Instant::now();
    let refused = app.get("/api/tickets", &admin.access_token).await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let problem = assert_problem(refused, 503).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("limit of 1 requests"),
        "{problem}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting for the slot"
    );
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health checks are not limited");

    lock.commit().await.unwrap();
    let created = held.await.unwrap();
    assert_eq!(created.status(), 201);
    let listed = app.get("/api/tickets", &admin.access_token).await;
    assert_eq!(
        listed.status(),
        200,
        "the freed slot takes the next request"
    );
    let body: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
}
