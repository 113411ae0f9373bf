//! Companies: a user sees its own company; an ADMIN renames it.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::test_app::{TestApp, assert_problem, assert_unchanged};

async fn company_name(app: &TestApp, id: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT name FROM companies WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_company_list_and_get_show_the_callers_own_company(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    app.register_company("Bravo").await;
    for session in [&admin, &user] {
        let list: Value = app
            .get("/api/companies", &session.access_token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list[0]["id"], json!(admin.company_id));
        assert_eq!(list[0]["name"], "Acme");
        let one: Value = app
            .get(
                &format!("/api/companies/{}", admin.company_id),
                &session.access_token,
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(one, list[0]);
    }
}

#[sqlx::test(migrations = false)]
async fn an_admin_renames_the_company_and_the_change_is_audited(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let response = app
        .put_json(
            &format!("/api/companies/{}", admin.company_id),
            &admin.access_token,
            &json!({"name": "  Acme Security  "}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "Acme Security");
    assert_eq!(company_name(&app, admin.company_id).await, "Acme Security");
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM audit_logs WHERE action = 'company.updated' AND entity_id = $1 AND actor_user_id = $2",
    )
    .bind(admin.company_id)
    .bind(admin.user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        payload,
        json!({"name": {"from": "Acme", "to": "Acme Security"}})
    );
    // A change of case only is allowed: the name is still its own.
    let response = app
        .put_json(
            &format!("/api/companies/{}", admin.company_id),
            &admin.access_token,
            &json!({"name": "ACME SECURITY"}),
        )
        .await;
    assert_eq!(response.status(), 200);
}

#[sqlx::test(migrations = false)]
async fn a_user_cannot_rename_the_company_nor_anyone_take_a_taken_name(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    app.register_company("Bravo").await;
    let path = format!("/api/companies/{}", admin.company_id);
    let before = app.snapshot().await;

    let problem = assert_problem(
        app.put_json(&path, &user.access_token, &json!({"name": "Bob's company"}))
            .await,
        403,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("ADMIN"));
    let problem = assert_problem(
        app.put_json(&path, &admin.access_token, &json!({"name": "bravo"}))
            .await,
        409,
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{problem}"
    );
    for name in ["", "   ", &"x".repeat(201)] {
        let problem = assert_problem(
            app.put_json(&path, &admin.access_token, &json!({"name": name}))
                .await,
            422,
        )
        .await;
        assert_eq!(problem["field"], "name");
    }
    assert_unchanged(&before, &app.snapshot().await, "after refused renames");
    assert_eq!(company_name(&app, admin.company_id).await, "Acme");
}
