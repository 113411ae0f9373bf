//! Integrations: CRUD, and credentials that live only in the secret store.

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::test_app::{Session, TestApp, assert_problem, assert_unchanged};

const CANARY: &str = "canary-3b1f-credential-do-not-leak";
const ROTATED_CANARY: &str = "canary-9e77-rotated-credential";

/// Every table's rows as text, joined: what a leak would show up in.
async fn every_row_as_text(app: &TestApp) -> String {
    app.snapshot()
        .await
        .into_iter()
        .map(|(table, rows)| format!("{table}: {}\n", rows.join("\n")))
        .collect()
}

async fn secret_rows(app: &TestApp, company: Uuid, integration: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM local_secrets WHERE name = $1")
        .bind(format!(
            "txdx-{}-{}",
            company.simple(),
            integration.simple()
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn create_with_canary(app: &TestApp, admin: &Session) -> (Uuid, String) {
    let response = app
        .post_json(
            "/api/integrations",
            Some(&admin.access_token),
            &json!({"provider": "MERAKI", "name": "branch firewall", "mode": "live",
                    "settings": {"base_url": "https://api.meraki.example/api/v1", "timeout_secs": 5},
                    "credentials": {"api_key": CANARY}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    (body["id"].as_str().unwrap().parse().unwrap(), text)
}

#[sqlx::test(migrations = false)]
async fn an_admin_creates_reads_updates_and_deletes_an_integration_and_a_user_may_only_read(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    let (id, created) = create_with_canary(&app, &admin).await;
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["provider"], "MERAKI");
    assert_eq!(created["name"], "branch firewall");
    assert_eq!(created["mode"], "live");
    assert_eq!(created["has_credentials"], true);
    assert_eq!(
        created["settings"],
        json!({"base_url": "https://api.meraki.example/api/v1", "timeout_secs": 5})
    );

    // Any member reads; the list filters by provider.
    let one: Value = app
        .get(&format!("/api/integrations/{id}"), &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one, created);
    app.create_integration(&admin, "SPLUNK", "siem").await;
    let page: Value = app
        .get("/api/integrations?provider=MERAKI", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"], json!([created]));
    assert_eq!(page["next_offset"], Value::Null);
    let page: Value = app
        .get("/api/integrations?limit=1", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0]["name"], "branch firewall");
    assert_eq!(page["next_offset"], 1);

    // A USER changes nothing.
    let before = app.snapshot().await;
    assert_problem(
        app.post_json(
            "/api/integrations",
            Some(&user.access_token),
            &json!({"provider": "WAZUH", "name": "w"}),
        )
        .await,
        403,
    )
    .await;
    assert_problem(
        app.put_json(
            &format!("/api/integrations/{id}"),
            &user.access_token,
            &json!({"name": "mine"}),
        )
        .await,
        403,
    )
    .await;
    assert_problem(
        app.delete(&format!("/api/integrations/{id}"), &user.access_token)
            .await,
        403,
    )
    .await;
    assert_unchanged(&before, &app.snapshot().await, "after a USER's attempts");

    // The ADMIN renames and switches to simulated; settings are replaced whole.
    let response = app
        .put_json(
            &format!("/api/integrations/{id}"),
            &admin.access_token,
            &json!({"name": "HQ firewall", "mode": "simulated", "settings": {"timeout_secs": 9}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "HQ firewall");
    assert_eq!(updated["mode"], "simulated");
    assert_eq!(updated["settings"], json!({"timeout_secs": 9}));
    assert_eq!(updated["has_credentials"], true);
    let row: (String, String, Value) =
        sqlx::query_as("SELECT name, mode, extra_json FROM integrations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        row,
        (
            "HQ firewall".into(),
            "simulated".into(),
            json!({"timeout_secs": 9})
        )
    );

    // A duplicate name is a conflict.
    assert_problem(
        app.put_json(
            &format!("/api/integrations/{id}"),
            &admin.access_token,
            &json!({"name": "siem"}),
        )
        .await,
        409,
    )
    .await;

    let response = app
        .delete(&format!("/api/integrations/{id}"), &admin.access_token)
        .await;
    assert_eq!(response.status(), 204);
    assert_problem(
        app.get(&format!("/api/integrations/{id}"), &admin.access_token)
            .await,
        404,
    )
    .await;
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_logs WHERE entity_type = 'integration' AND entity_id = $1 ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            "integration.created",
            "integration.updated",
            "integration.deleted"
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn credentials_live_only_in_the_secret_store_and_no_response_but_the_credentials_endpoint_shows_them(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    let (id, created) = create_with_canary(&app, &admin).await;
    assert!(!created.contains(CANARY), "{created}");

    // The integration row holds the secret's identifier only.
    let secret_id: Option<String> =
        sqlx::query_scalar("SELECT keyvault_secret_id FROM integrations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let secret_id = secret_id.unwrap();
    assert!(
        secret_id.starts_with(&format!("local:txdx-{}-", admin.company_id.simple())),
        "{secret_id}"
    );
    assert_eq!(secret_rows(&app, admin.company_id, id).await, 1);

    // No read but the credentials endpoint carries the credential.
    for path in [
        format!("/api/integrations/{id}"),
        "/api/integrations".to_owned(),
        "/api/audit-logs".to_owned(),
    ] {
        let text = app
            .get(&path, &admin.access_token)
            .await
            .text()
            .await
            .unwrap();
        assert!(text.contains(&id.to_string()), "{path}: {text}");
        assert!(!text.contains(CANARY), "{path}: {text}");
    }
    let updated = app
        .put_json(
            &format!("/api/integrations/{id}"),
            &admin.access_token,
            &json!({"name": "renamed"}),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(updated.contains("renamed") && !updated.contains(CANARY));

    // A USER may not read them, and that read is not recorded as one.
    assert_problem(
        app.get(
            &format!("/api/integrations/{id}/credentials"),
            &user.access_token,
        )
        .await,
        403,
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'integration.credentials_read'")
            .await,
        0
    );
    // The ADMIN may, and the read is audited.
    let response = app
        .get(
            &format!("/api/integrations/{id}/credentials"),
            &admin.access_token,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"integration_id": id, "credentials": {"api_key": CANARY}})
    );
    let audited: (Uuid, Uuid) = sqlx::query_as(
        "SELECT actor_user_id, entity_id FROM audit_logs WHERE action = 'integration.credentials_read'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, (admin.user_id, id));

    // The plaintext is in no column of any table, the audit rows included.
    let everything = every_row_as_text(&app).await;
    assert!(everything.contains(&secret_id), "the dump reads the tables");
    assert!(
        !everything.contains(CANARY),
        "the credential is stored in plain text somewhere"
    );
}

#[sqlx::test(migrations = false)]
async fn rotating_credentials_stores_a_new_secret_and_deleting_the_integration_removes_every_version(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let (id, _) = create_with_canary(&app, &admin).await;
    let first: String =
        sqlx::query_scalar("SELECT keyvault_secret_id FROM integrations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();

    let response = app
        .put_json(
            &format!("/api/integrations/{id}"),
            &admin.access_token,
            &json!({"credentials": {"api_key": ROTATED_CANARY}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(ROTATED_CANARY), "{text}");
    let second: String =
        sqlx::query_scalar("SELECT keyvault_secret_id FROM integrations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_ne!(first, second);
    let credentials: Value = app
        .get(
            &format!("/api/integrations/{id}/credentials"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        credentials["credentials"],
        json!({"api_key": ROTATED_CANARY})
    );
    let rotated: Value = sqlx::query_scalar(
        "SELECT payload FROM audit_logs WHERE action = 'integration.updated' AND entity_id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rotated["credentials_rotated"], true);
    let everything = every_row_as_text(&app).await;
    assert!(!everything.contains(CANARY) && !everything.contains(ROTATED_CANARY));
    assert_eq!(secret_rows(&app, admin.company_id, id).await, 2);

    let response = app
        .delete(&format!("/api/integrations/{id}"), &admin.access_token)
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(secret_rows(&app, admin.company_id, id).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM integrations").await, 0);
}

#[sqlx::test(migrations = false)]
async fn invalid_modes_credentials_and_settings_are_422_naming_the_field_and_store_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let simulated = app
        .post_json(
            "/api/integrations",
            Some(&admin.access_token),
            &json!({"provider": "WAZUH", "name": "wazuh"}),
        )
        .await;
    assert_eq!(simulated.status(), 201);
    let simulated: Value = simulated.json().await.unwrap();
    assert_eq!(simulated["mode"], "simulated");
    assert_eq!(simulated["has_credentials"], false);
    let simulated_id = simulated["id"].as_str().unwrap().to_owned();
    // No credentials stored: the credentials endpoint has nothing to show.
    assert_problem(
        app.get(
            &format!("/api/integrations/{simulated_id}/credentials"),
            &admin.access_token,
        )
        .await,
        404,
    )
    .await;

    let before = app.snapshot().await;
    let creates = [
        (
            json!({"provider": "MERAKI", "name": "m", "mode": "live"}),
            "credentials",
            "live mode needs credentials",
        ),
        (
            json!({"provider": "WAZUH", "name": "w", "credentials": {"username": "wazuh"}}),
            "credentials",
            "username + password",
        ),
        (
            json!({"provider": "MERAKI", "name": "m", "credentials": {"api_key": 5}}),
            "credentials.api_key",
            "non-empty string",
        ),
        (
            json!({"provider": "MERAKI", "name": "m", "credentials": "api-key"}),
            "credentials",
            "object",
        ),
        (
            json!({"provider": "MERAKI", "name": "m", "settings": {"colour": "red"}}),
            "settings",
            "unknown field `colour`",
        ),
        (
            json!({"provider": "MERAKI", "name": "m", "settings": {"base_url": "ftp://files.example"}}),
            "settings.base_url",
            "http(s) URL",
        ),
        (
            json!({"provider": "MERAKI", "name": "m", "settings": {"timeout_secs": 0}}),
            "settings.timeout_secs",
            "between 1 and 120",
        ),
        (
            json!({"provider": "MERAKI", "name": "  "}),
            "name",
            "1 to 200",
        ),
    ];
    for (body, field, says) in creates {
        let problem = assert_problem(
            app.post_json("/api/integrations", Some(&admin.access_token), &body)
                .await,
            422,
        )
        .await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{body}: {problem}"
        );
    }
    let updates = [
        (
            json!({"mode": "live"}),
            "credentials",
            "live mode needs credentials",
        ),
        (
            json!({"credentials": {"password": "only-half"}}),
            "credentials",
            "username + password",
        ),
        (
            json!({"settings": {"hec_url": "splunk.example:8088"}}),
            "settings.hec_url",
            "http(s) URL",
        ),
    ];
    for (body, field, says) in updates {
        let problem = assert_problem(
            app.put_json(
                &format!("/api/integrations/{simulated_id}"),
                &admin.access_token,
                &body,
            )
            .await,
            422,
        )
        .await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{body}: {problem}"
        );
    }
    assert_unchanged(&before, &app.snapshot().await, "after invalid integrations");
}
