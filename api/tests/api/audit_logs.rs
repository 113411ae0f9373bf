//! The audit trail: every state change leaves one row with the right action
//! name and no secret; an ADMIN reads the company's rows, filtered and paged.

use std::collections::HashSet;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::test_app::{PASSWORD, Session, TestApp, assert_problem};

const NEW_PASSWORD: &str = "a completely different passphrase";
const CANARY: &str = "canary-audit-5c0e-api-key";

/// Every page of `/api/audit-logs?{query}` at `limit` rows a page, checking
/// that no row repeats and that the order is newest first.
async fn walk_audit_logs(app: &TestApp, token: &str, query: &[(&str, String)]) -> Vec<Value> {
    let mut rows: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params: Vec<(&str, String)> = query.to_vec();
        params.push(("limit", "3".into()));
        if let Some(cursor) = &cursor {
            params.push(("cursor", cursor.clone()));
        }
        let response = app
            .client
            .get(app.url("/api/audit-logs"))
            .bearer_auth(token)
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        rows.extend(items.iter().cloned());
        pages += 1;
        assert!(pages < 100, "the cursor does not advance");
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 3, "a page before the last is full");
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), rows.len(), "a row appears on two pages");
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["created_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| {
        let a = chrono::DateTime::parse_from_rfc3339(a).unwrap();
        let b = chrono::DateTime::parse_from_rfc3339(b).unwrap();
        b.cmp(&a)
    });
    assert_eq!(times, sorted, "rows are not newest first");
    rows
}

fn actions(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["action"].as_str().unwrap()).collect()
}

async fn company_rows(app: &TestApp, company: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE company_id = $1")
        .bind(company)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Makes one of every state change in Acme; returns (admin, user, ids).
struct History {
    admin: Session,
    user: Session,
    deleted_user: Uuid,
    integration: Uuid,
    ticket: Uuid,
    derived_ticket: Uuid,
}

async fn make_history(app: &TestApp) -> History {
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    let gone = app.create_user(&admin, "gone", "USER").await;
    let ok = |status: reqwest::StatusCode| assert!(status.is_success(), "{status}");

    ok(app
        .put_json(
            &format!("/api/users/{}", user.user_id),
            &admin.access_token,
            &json!({"email": "bob@acme.example"}),
        )
        .await
        .status());
    ok(app
        .put_json(
            &format!("/api/users/{}", user.user_id),
            &user.access_token,
            &json!({"password": NEW_PASSWORD}),
        )
        .await
        .status());
    ok(app
        .delete(&format!("/api/users/{}", gone.user_id), &admin.access_token)
        .await
        .status());
    assert_eq!(app.login("bob", PASSWORD).await.status(), 401);
    let tokens: Value = app.login("bob", NEW_PASSWORD).await.json().await.unwrap();
    let user = Session {
        access_token: tokens["access_token"].as_str().unwrap().into(),
        refresh_token: tokens["refresh_token"].as_str().unwrap().into(),
        ..user
    };
    let refreshed: Value = app
        .post_json(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": user.refresh_token}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        app.post_json(
            "/api/auth/logout",
            None,
            &json!({"refresh_token": refreshed["refresh_token"]}),
        )
        .await
        .status(),
        204
    );
    ok(app
        .put_json(
            &format!("/api/companies/{}", admin.company_id),
            &admin.access_token,
            &json!({"name": "Acme Security"}),
        )
        .await
        .status());

    let response = app
        .post_json(
            "/api/integrations",
            Some(&admin.access_token),
            &json!({"provider": "PALO_ALTO", "name": "fw", "credentials": {"api_key": CANARY}}),
        )
        .await;
    let integration: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    ok(app
        .put_json(
            &format!("/api/integrations/{integration}"),
            &admin.access_token,
            &json!({"credentials": {"api_key": format!("{CANARY}-2")}}),
        )
        .await
        .status());
    ok(app
        .get(
            &format!("/api/integrations/{integration}/credentials"),
            &admin.access_token,
        )
        .await
        .status());

    let ticket = app
        .create_ticket(&user, &json!({"subject": "Investigate"}))
        .await;
    let ticket: Uuid = ticket["id"].as_str().unwrap().parse().unwrap();
    ok(app
        .put_json(
            &format!("/api/tickets/{ticket}"),
            &user.access_token,
            &json!({"description": "More detail"}),
        )
        .await
        .status());
    ok(app
        .put_json(
            &format!("/api/tickets/{ticket}"),
            &admin.access_token,
            &json!({"status": "DERIVED", "status_reason": "needs a human"}),
        )
        .await
        .status());
    ok(app
        .delete(&format!("/api/tickets/{ticket}"), &admin.access_token)
        .await
        .status());
    let derived = app
        .create_ticket(
            &admin,
            &json!({"subject": "Block", "actions": [{"integration_id": integration, "action": "block_ip", "params": {"ip": "203.0.113.9"}}]}),
        )
        .await;
    let derived_ticket: Uuid = derived["id"].as_str().unwrap().parse().unwrap();
    ok(app
        .put_json(
            &format!("/api/tickets/{derived_ticket}"),
            &admin.access_token,
            &json!({"status": "DERIVED", "status_reason": "handled by phone"}),
        )
        .await
        .status());
    ok(app
        .delete(
            &format!("/api/integrations/{integration}"),
            &admin.access_token,
        )
        .await
        .status());
    History {
        admin,
        user,
        deleted_user: gone.user_id,
        integration,
        ticket,
        derived_ticket,
    }
}

#[sqlx::test(migrations = false)]
async fn every_state_change_leaves_one_audit_row_with_the_right_action(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let h = make_history(&app).await;
    let token = &h.admin.access_token;
    let by_entity = |id: Uuid| vec![("entity_id", id.to_string())];

    let company = walk_audit_logs(&app, token, &by_entity(h.admin.company_id)).await;
    assert_eq!(actions(&company), ["company.updated", "company.registered"]);
    assert_eq!(company[1]["entity_type"], "company");
    assert_eq!(company[1]["actor_user_id"], json!(h.admin.user_id));

    let user = walk_audit_logs(&app, token, &by_entity(h.user.user_id)).await;
    assert_eq!(
        actions(&user),
        [
            "auth.logout",
            "auth.refreshed",
            "auth.login",
            "auth.login_failed",
            "user.updated",
            "user.updated",
            "auth.login",
            "user.created",
        ]
    );
    assert_eq!(user[4]["payload"], json!({"password": "changed"}));
    assert_eq!(
        user[5]["payload"],
        json!({"email": {"from": "bob@example.com", "to": "bob@acme.example"}})
    );

    let deleted = walk_audit_logs(&app, token, &by_entity(h.deleted_user)).await;
    assert_eq!(
        actions(&deleted),
        ["user.deleted", "auth.login", "user.created"]
    );
    // The deleted user's own rows keep their entity but lose the actor.
    assert_eq!(deleted[1]["actor_user_id"], Value::Null);

    let integration = walk_audit_logs(&app, token, &by_entity(h.integration)).await;
    assert_eq!(
        actions(&integration),
        [
            "integration.deleted",
            "integration.credentials_read",
            "integration.updated",
            "integration.created",
        ]
    );

    let ticket = walk_audit_logs(&app, token, &by_entity(h.ticket)).await;
    assert_eq!(
        actions(&ticket),
        [
            "ticket.deleted",
            "ticket.derived",
            "ticket.updated",
            "ticket.created"
        ]
    );
    assert_eq!(ticket[3]["actor_user_id"], json!(h.user.user_id));
    assert_eq!(ticket[1]["payload"]["reason"], "needs a human");
    let derived = walk_audit_logs(&app, token, &by_entity(h.derived_ticket)).await;
    assert_eq!(actions(&derived), ["ticket.derived", "ticket.created"]);

    // Every row of the company is accounted for above.
    let all = walk_audit_logs(&app, token, &[]).await;
    let accounted = company.len()
        + user.len()
        + deleted.len()
        + integration.len()
        + ticket.len()
        + derived.len();
    // (The ADMIN acted on others only; registering returned its tokens.)
    let admin_rows = walk_audit_logs(&app, token, &by_entity(h.admin.user_id)).await;
    assert!(admin_rows.is_empty(), "{:?}", actions(&admin_rows));
    assert_eq!(all.len(), accounted, "{:?}", actions(&all));
    assert_eq!(
        all.len() as i64,
        company_rows(&app, h.admin.company_id).await
    );
}

#[sqlx::test(migrations = false)]
async fn no_audit_payload_carries_a_password_token_or_credential(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let h = make_history(&app).await;
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM audit_logs")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    // Every row make_history leaves (see the test above for which).
    assert_eq!(payloads.len(), 23);
    for payload in &payloads {
        for secret in [
            PASSWORD,
            NEW_PASSWORD,
            CANARY,
            "eyJ",
            h.admin.access_token.as_str(),
            h.admin.refresh_token.as_str(),
            "$argon2",
        ] {
            assert!(!payload.contains(secret), "{payload} contains {secret}");
        }
    }
}

#[sqlx::test(migrations = false)]
async fn the_audit_log_is_admin_only_and_shows_only_the_callers_company(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let h = make_history(&app).await;
    let bravo = app.register_company("Bravo").await;
    assert_problem(app.get("/api/audit-logs", &h.user.access_token).await, 403).await;

    let acme = walk_audit_logs(&app, &h.admin.access_token, &[]).await;
    let acme_text = serde_json::to_string(&acme).unwrap();
    assert!(!acme_text.contains(&bravo.company_id.to_string()));
    assert!(!acme_text.contains(&bravo.user_id.to_string()));
    let bravo_rows = walk_audit_logs(&app, &bravo.access_token, &[]).await;
    assert_eq!(actions(&bravo_rows), ["company.registered"]);
    assert_eq!(bravo_rows[0]["entity_id"], json!(bravo.company_id));
    // Naming Acme's entity from Bravo finds nothing.
    let foreign = walk_audit_logs(
        &app,
        &bravo.access_token,
        &[("entity_id", h.admin.company_id.to_string())],
    )
    .await;
    assert!(foreign.is_empty(), "{foreign:?}");
}

#[sqlx::test(migrations = false)]
async fn audit_filters_by_entity_type_actor_and_time_combine(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let h = make_history(&app).await;
    let token = &h.admin.access_token;
    let all = walk_audit_logs(&app, token, &[]).await;

    let tickets = walk_audit_logs(&app, token, &[("entity_type", "ticket".into())]).await;
    assert_eq!(tickets.len(), 6);
    assert!(tickets.iter().all(|r| r["entity_type"] == "ticket"));

    let by_user = walk_audit_logs(
        &app,
        token,
        &[("actor_user_id", h.user.user_id.to_string())],
    )
    .await;
    assert!(
        by_user
            .iter()
            .all(|r| r["actor_user_id"] == json!(h.user.user_id))
    );
    assert_eq!(
        actions(&by_user),
        [
            "ticket.updated",
            "ticket.created",
            "auth.logout",
            "auth.refreshed",
            "auth.login",
            "auth.login_failed",
            "user.updated",
            "auth.login",
        ]
    );

    // `since` is inclusive, `until` exclusive: they split the trail at a row.
    let middle = all[all.len() / 2]["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = walk_audit_logs(&app, token, &[("since", middle.clone())]).await;
    let until = walk_audit_logs(&app, token, &[("until", middle.clone())]).await;
    assert!(!since.is_empty() && !until.is_empty());
    assert_eq!(since.len() + until.len(), all.len());
    assert_eq!(since[..], all[..since.len()]);
    assert_eq!(until[..], all[since.len()..]);
    assert_eq!(since.last().unwrap()["created_at"], json!(middle));

    let combined = walk_audit_logs(
        &app,
        token,
        &[
            ("entity_type", "ticket".into()),
            ("since", middle.clone()),
            ("actor_user_id", h.admin.user_id.to_string()),
        ],
    )
    .await;
    let expected: Vec<&Value> = since
        .iter()
        .filter(|r| r["entity_type"] == "ticket" && r["actor_user_id"] == json!(h.admin.user_id))
        .collect();
    assert_eq!(combined.iter().collect::<Vec<_>>(), expected);
}
