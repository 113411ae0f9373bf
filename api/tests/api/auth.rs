use serde_json::{Value, json};
use sqlx::PgPool;

use crate::test_app::{PASSWORD, TestApp, assert_problem};

#[sqlx::test(migrations = false)]
async fn register_creates_company_and_admin_in_one_transaction_and_refuses_duplicates(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let me: Value = app
        .get("/api/auth/me", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "ADMIN");
    assert_eq!(me["username"], "acme-admin");
    assert!(me.get("password_hash").is_none());

    // Same company name, any case: 409, and no second company or user.
    let response = app
        .post_json(
            "/api/auth/register",
            None,
            &json!({"company_name": "ACME", "username": "other-admin", "email": "o@example.com", "password": PASSWORD}),
        )
        .await;
    assert_problem(response, 409).await;
    // Username taken by another company: 409, and the new company is rolled back.
    let response = app
        .post_json(
            "/api/auth/register",
            None,
            &json!({"company_name": "Bravo", "username": "ACME-admin", "email": "b@example.com", "password": PASSWORD}),
        )
        .await;
    assert_problem(response, 409).await;
    assert_eq!(app.count("SELECT count(*) FROM companies").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[sqlx::test(migrations = false)]
async fn passwords_are_stored_as_argon2id_and_a_weak_one_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register_company("Acme").await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    let response = app
        .post_json("/api/auth/register", None, &json!({"company_name": "Weak", "username": "weak", "email": "w@example.com", "password": "short"}))
        .await;
    let problem = assert_problem(response, 422).await;
    assert_eq!(problem["field"], "password");
}

#[sqlx::test(migrations = false)]
async fn unknown_user_and_wrong_password_get_the_same_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register_company("Acme").await;
    let unknown: Value = assert_problem(app.login("nobody-here", PASSWORD).await, 401).await;
    let wrong: Value =
        assert_problem(app.login("acme-admin", "not the password!").await, 401).await;
    assert_eq!(unknown, wrong);
    let ok = app.login("ACME-Admin", PASSWORD).await;
    assert_eq!(ok.status(), 200);
    let tokens: Value = ok.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'auth.login_failed'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'auth.login'")
            .await,
        1
    );
}

#[sqlx::test(migrations = false)]
async fn repeated_failed_logins_are_throttled_with_retry_after(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register_company("Acme").await;
    for _ in 0..10 {
        assert_eq!(
            app.login("acme-admin", "wrong password!!").await.status(),
            401
        );
    }
    let response = app.login("acme-admin", PASSWORD).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 900);
}

#[sqlx::test(migrations = false)]
async fn refresh_rotates_and_replaying_a_rotated_token_revokes_the_family(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let first = app
        .post_json(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": admin.refresh_token}),
        )
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let rotated = first["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, admin.refresh_token);

    // The old token again: refused, and the whole family (the new one too) is revoked.
    assert_problem(
        app.post_json(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": admin.refresh_token}),
        )
        .await,
        401,
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": rotated}),
        )
        .await,
        401,
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")
            .await,
        0
    );
    assert!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'auth.refresh_reuse_detected'")
            .await
            >= 1
    );
}

#[sqlx::test(migrations = false)]
async fn logout_revokes_the_refresh_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let response = app
        .post_json(
            "/api/auth/logout",
            None,
            &json!({"refresh_token": admin.refresh_token}),
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_problem(
        app.post_json(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": admin.refresh_token}),
        )
        .await,
        401,
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_refresh_token_is_not_accepted_as_an_access_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    assert_problem(app.get("/api/auth/me", &admin.refresh_token).await, 401).await;
    assert_problem(
        app.client
            .get(app.url("/api/auth/me"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_problem(app.get("/api/auth/me", "not-a-jwt").await, 401).await;
}

#[sqlx::test(migrations = false)]
async fn tokens_die_with_their_user_and_with_a_role_or_password_change(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    assert_eq!(
        app.get("/api/auth/me", &user.access_token).await.status(),
        200
    );

    // Promotion changes the role: the old token is refused.
    let response = app
        .put_json(
            &format!("/api/users/{}", user.user_id),
            &admin.access_token,
            &json!({"role": "ADMIN"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_problem(app.get("/api/auth/me", &user.access_token).await, 401).await;

    // Password change: refused again, and refresh tokens revoked.
    let user = app.create_user(&admin, "carol", "USER").await;
    let response = app
        .put_json(
            &format!("/api/users/{}", user.user_id),
            &user.access_token,
            &json!({"password": "another long passphrase"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_problem(app.get("/api/auth/me", &user.access_token).await, 401).await;
    assert_problem(
        app.post_json(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": user.refresh_token}),
        )
        .await,
        401,
    )
    .await;

    // Deletion.
    let dave = app.create_user(&admin, "dave", "USER").await;
    assert_eq!(
        app.delete(&format!("/api/users/{}", dave.user_id), &admin.access_token)
            .await
            .status(),
        204
    );
    assert_problem(app.get("/api/auth/me", &dave.access_token).await, 401).await;
}

#[sqlx::test(migrations = false)]
async fn users_follow_the_role_rules_and_the_last_admin_stays(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "bob", "USER").await;
    let other = app.create_user(&admin, "eve", "USER").await;

    // A USER cannot create users, change others, or its own role.
    let response = app
        .post_json("/api/users", Some(&user.access_token), &json!({"username": "x-user", "email": "x@example.com", "password": PASSWORD, "role": "USER"}))
        .await;
    assert_problem(response, 403).await;
    assert_problem(
        app.put_json(
            &format!("/api/users/{}", other.user_id),
            &user.access_token,
            &json!({"email": "e@example.com"}),
        )
        .await,
        403,
    )
    .await;
    assert_problem(
        app.put_json(
            &format!("/api/users/{}", user.user_id),
            &user.access_token,
            &json!({"role": "ADMIN"}),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(
        app.put_json(
            &format!("/api/users/{}", user.user_id),
            &user.access_token,
            &json!({"email": "bob2@example.com"})
        )
        .await
        .status(),
        200
    );
    assert_problem(
        app.delete(&format!("/api/users/{}", other.user_id), &user.access_token)
            .await,
        403,
    )
    .await;

    // The last ADMIN can be neither demoted nor deleted.
    assert_problem(
        app.put_json(
            &format!("/api/users/{}", admin.user_id),
            &admin.access_token,
            &json!({"role": "USER"}),
        )
        .await,
        409,
    )
    .await;
    assert_problem(
        app.delete(
            &format!("/api/users/{}", admin.user_id),
            &admin.access_token,
        )
        .await,
        409,
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE role = 'ADMIN'")
            .await,
        1
    );

    let page: Value = app
        .get("/api/users?limit=2", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_offset"], 2);
}
