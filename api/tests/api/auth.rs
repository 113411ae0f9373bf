use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::test_app::{
    PASSWORD, TestApp, assert_problem, terminate_user_change_listeners, test_config,
    wait_for_user_change_listeners,
};

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
    assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"));
    let response = app
        .post_json("/api/auth/register", None, &json!({"company_name": "Weak", "username": "weak", "email": "w@example.com", "password": "short"}))
        .await;
    let problem = assert_problem(response, 422).await;
    assert_eq!(problem["field"], "password");
}

/// `PASSWORD` hashed as the first releases did (argon2id, 19 MiB, 2 passes).
fn hash_with_older_parameters() -> String {
    use argon2::{
        Algorithm, Argon2, Params, PasswordHasher, Version,
        password_hash::{SaltString, rand_core::OsRng},
    };
    let params = Params::new(19 * 1024, 2, 1, None).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string()
}

#[sqlx::test(migrations = false)]
async fn a_login_replaces_a_hash_with_older_parameters_and_keeps_the_users_tokens(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let old = hash_with_older_parameters();
    let stored = || async {
        sqlx::query_scalar::<_, String>("SELECT password_hash FROM users")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    sqlx::query("UPDATE users SET password_hash = $1")
        .bind(&old)
        .execute(&app.pool)
        .await
        .unwrap();

    // A wrong password leaves the old hash as it is.
    assert_problem(app.login("acme-admin", "not the password!").await, 401).await;
    assert_eq!(stored().await, old);

    // The right one logs in and replaces it with a hash of today's parameters.
    assert_eq!(app.login("acme-admin", PASSWORD).await.status(), 200);
    let fresh = stored().await;
    assert!(
        fresh.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"),
        "{fresh}"
    );
    let rehashed = "SELECT count(*) FROM audit_logs WHERE action = 'auth.login' AND payload->>'password_rehashed' = 'true'";
    assert_eq!(app.count(rehashed).await, 1);
    // Same password: the tokens issued before stay valid.
    assert_eq!(
        app.get("/api/auth/me", &admin.access_token).await.status(),
        200
    );

    // The new hash verifies, and is not replaced again.
    assert_eq!(app.login("acme-admin", PASSWORD).await.status(), 200);
    assert_eq!(stored().await, fresh);
    assert_eq!(app.count(rehashed).await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'auth.login'")
            .await,
        2
    );
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

    // Password change: refused again, and refresh tokens revoked. A
    // password the policy refuses (the target's username) changes nothing.
    let user = app.create_user(&admin, "carol-the-user", "USER").await;
    let refused = app
        .put_json(
            &format!("/api/users/{}", user.user_id),
            &admin.access_token,
            &json!({"password": "CAROL-THE-USER"}),
        )
        .await;
    let problem = assert_problem(refused, 422).await;
    assert_eq!(problem["field"], "password");
    assert!(
        problem["detail"].as_str().unwrap().contains("username"),
        "{problem}"
    );
    assert_eq!(
        app.get("/api/auth/me", &user.access_token).await.status(),
        200
    );
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

    // Deletion, of a user whose token was just checked.
    let dave = app.create_user(&admin, "dave", "USER").await;
    assert_eq!(
        app.get("/api/auth/me", &dave.access_token).await.status(),
        200
    );
    assert_eq!(
        app.delete(&format!("/api/users/{}", dave.user_id), &admin.access_token)
            .await
            .status(),
        204
    );
    assert_problem(app.get("/api/auth/me", &dave.access_token).await, 401).await;
}

/// Runs `sql` (bound to `user`) with the trigger `trigger` on `users`
/// disabled for that transaction only: a change PostgreSQL does not
/// announce, which shows whether an api process still uses what it read.
async fn unannounced(pool: &PgPool, trigger: &str, sql: &'static str, user: uuid::Uuid) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE users DISABLE TRIGGER {trigger}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(sql).bind(user).execute(&mut *tx).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE users ENABLE TRIGGER {trigger}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Sends `GET /api/tickets` with `token` until it is refused (401), failing
/// if that takes `within` or an answer is neither 200 nor 401.
async fn refused_within(app: &TestApp, token: &str, within: std::time::Duration) {
    let since = std::time::Instant::now();
    loop {
        let response = app.get("/api/tickets", token).await;
        if response.status() == 401 {
            assert_problem(response, 401).await;
            return;
        }
        assert_eq!(response.status(), 200);
        assert!(
            since.elapsed() < within,
            "the token was still accepted {:?} later",
            since.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn another_api_process_forgets_a_changed_user_when_postgres_announces_the_change(
    pool: PgPool,
) {
    let changing = TestApp::spawn(pool.clone()).await;
    // Remembers what it reads for a minute, the default.
    let cached = TestApp::spawn(pool.clone()).await;
    let uncached = TestApp::spawn_with(pool.clone(), &[("TOKEN_CHECK_CACHE_MS", "0")]).await;
    let admin = changing.register_company("Acme").await;
    let bob = changing.create_user(&admin, "bob", "USER").await;
    let carol = changing.create_user(&admin, "carol", "USER").await;
    for app in [&cached, &uncached] {
        for user in [&bob, &carol] {
            assert_eq!(
                app.get("/api/tickets", &user.access_token).await.status(),
                200
            );
        }
    }

    // A token version bumped without an announcement: the process without
    // a cache reads it, the other still uses what it read.
    unannounced(
        &pool,
        "users_announce_token_change",
        "UPDATE users SET token_version = token_version + 1 WHERE id = $1",
        bob.user_id,
    )
    .await;
    assert_problem(uncached.get("/api/tickets", &bob.access_token).await, 401).await;
    assert_eq!(
        cached.get("/api/tickets", &bob.access_token).await.status(),
        200
    );
    // Deleted through another process, announced: refused at once, not a
    // minute later.
    assert_eq!(
        changing
            .delete(&format!("/api/users/{}", bob.user_id), &admin.access_token)
            .await
            .status(),
        204
    );
    refused_within(
        &cached,
        &bob.access_token,
        std::time::Duration::from_secs(5),
    )
    .await;

    // Deleted without an announcement, its check still remembered: a write
    // for it is refused by the database's foreign key, as a 401, and
    // leaves nothing behind.
    unannounced(
        &pool,
        "users_announce_deletion",
        "DELETE FROM users WHERE id = $1",
        carol.user_id,
    )
    .await;
    assert_eq!(
        cached
            .get("/api/tickets", &carol.access_token)
            .await
            .status(),
        200
    );
    let posted = cached
        .post_json(
            "/api/tickets",
            Some(&carol.access_token),
            &json!({"subject": "from a deleted user", "actions": []}),
        )
        .await;
    assert_problem(posted, 401).await;
    assert_eq!(changing.count("SELECT count(*) FROM tickets").await, 0);
}

#[sqlx::test(migrations = false)]
async fn an_api_process_that_lost_its_listener_reads_every_user_until_it_listens_again(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.register_company("Acme").await;
    let bob = app.create_user(&admin, "bob", "USER").await;
    assert_eq!(
        app.get("/api/tickets", &bob.access_token).await.status(),
        200
    );
    let bump = "UPDATE users SET token_version = token_version + 1 WHERE id = $1";
    unannounced(&pool, "users_announce_token_change", bump, bob.user_id).await;
    assert_eq!(
        app.get("/api/tickets", &bob.access_token).await.status(),
        200
    );
    // Its listening connection ends: changes made meanwhile would go
    // unannounced, so nothing it read is used any more.
    let terminated = terminate_user_change_listeners(&pool).await;
    assert_eq!(terminated, [true]);
    refused_within(&app, &bob.access_token, std::time::Duration::from_secs(5)).await;

    // It listens again, and reuses what it reads from then on (a user read
    // in the instant between its LISTEN and its first use is not kept: a
    // new user then tries again).
    wait_for_user_change_listeners(&pool, 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for attempt in 0.. {
        let dave = app
            .create_user(&admin, &format!("dave{attempt}"), "USER")
            .await;
        assert_eq!(
            app.get("/api/tickets", &dave.access_token).await.status(),
            200
        );
        unannounced(&pool, "users_announce_token_change", bump, dave.user_id).await;
        if app.get("/api/tickets", &dave.access_token).await.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a token check is never reused after the listener came back"
        );
    }
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

/// Claims for `session`'s user as the api issues them, valid for 10 minutes.
fn claims_for(session: &crate::test_app::Session) -> Value {
    let config = test_config(&[]);
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": session.user_id, "company_id": session.company_id, "role": "ADMIN", "typ": "access",
        "jti": uuid::Uuid::new_v4(), "iat": now, "nbf": now, "exp": now + 600,
        "iss": config.jwt_issuer, "aud": config.jwt_audience, "ver": 0,
    })
}

fn secret() -> String {
    test_config(&[]).jwt_secret.expose().to_owned()
}

fn forge(alg: Algorithm, claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token whose header names `alg` but whose signature is HMAC-SHA256 with
/// the api's secret (the classic algorithm-confusion forgery).
fn forge_with_header(header: &str, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(secret().as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{signature}")
}

#[sqlx::test(migrations = false)]
async fn forged_tampered_expired_and_misaddressed_tokens_are_401_problems(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    let other = app.register_company("Bravo").await;
    let claims = claims_for(&admin);
    let now = chrono::Utc::now().timestamp();

    // Control: a token forged exactly as the api issues them is accepted, so
    // each refusal below is about the one thing changed.
    let good = forge(Algorithm::HS256, &claims, &secret());
    let me = app.get("/api/auth/me", &good).await;
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<Value>().await.unwrap()["id"],
        json!(admin.user_id)
    );
    // Expired 20 s ago is within the 30 s leeway.
    let mut recent = claims.clone();
    recent["exp"] = json!(now - 20);
    let recent = forge(Algorithm::HS256, &recent, &secret());
    assert_eq!(app.get("/api/auth/me", &recent).await.status(), 200);

    let with = |key: &str, value: Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let mut flipped: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut payload = URL_SAFE_NO_PAD.decode(&flipped[1]).unwrap();
    let at = payload.len() / 2;
    payload[at] ^= 0x01;
    flipped[1] = URL_SAFE_NO_PAD.encode(payload);
    let mut expired = with("exp", json!(now - 61));
    expired["iat"] = json!(now - 700);
    expired["nbf"] = json!(now - 700);

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            ),
        ),
        (
            "alg HS512 with the right key",
            forge(Algorithm::HS512, &claims, &secret()),
        ),
        (
            "alg RS256 header over an HMAC signature",
            forge_with_header(r#"{"alg":"RS256","typ":"JWT"}"#, &claims),
        ),
        (
            "another key",
            forge(
                Algorithm::HS256,
                &claims,
                "another-secret-key-that-is-long-enough-00",
            ),
        ),
        (
            "expired 61 s ago",
            forge(Algorithm::HS256, &expired, &secret()),
        ),
        (
            "not valid for 120 s",
            forge(Algorithm::HS256, &with("nbf", json!(now + 120)), &secret()),
        ),
        (
            "wrong issuer",
            forge(
                Algorithm::HS256,
                &with("iss", json!("someone-else")),
                &secret(),
            ),
        ),
        (
            "wrong audience",
            forge(
                Algorithm::HS256,
                &with("aud", json!("another-api")),
                &secret(),
            ),
        ),
        (
            "no expiry",
            forge(Algorithm::HS256, &without("exp"), &secret()),
        ),
        (
            "a refresh token",
            forge(Algorithm::HS256, &with("typ", json!("refresh")), &secret()),
        ),
        (
            "an older token version",
            forge(Algorithm::HS256, &with("ver", json!(-1)), &secret()),
        ),
        (
            "a role the user does not have",
            forge(Algorithm::HS256, &with("role", json!("USER")), &secret()),
        ),
        (
            "the user in another company",
            forge(
                Algorithm::HS256,
                &with("company_id", json!(other.company_id)),
                &secret(),
            ),
        ),
        ("a flipped payload byte", flipped.join(".")),
        (
            "no signature",
            good.rsplit_once('.').unwrap().0.to_owned() + ".",
        ),
        ("not a JWT", "a.b.c".to_owned()),
    ];
    let before = app.snapshot().await;
    for (name, token) in cases {
        let problem = assert_problem(app.get("/api/auth/me", &token).await, 401).await;
        assert_eq!(problem["title"], "Unauthorized", "{name}");
        // The same tokens cannot act either.
        let response = app
            .post_json("/api/tickets", Some(&token), &json!({"subject": "forged"}))
            .await;
        assert_problem(response, 401).await;
    }
    crate::test_app::assert_unchanged(&before, &app.snapshot().await, "after forged tokens");
}

#[sqlx::test(migrations = false)]
async fn after_logout_the_access_token_works_until_it_expires_but_the_refresh_token_is_dead(
    pool: PgPool,
) {
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
    // Access tokens are stateless (checked by signature, expiry, and the
    // user's current role and token version): logout cannot recall one, so
    // it lives out its hour. Changing the password or role does recall it.
    let me = app.get("/api/auth/me", &admin.access_token).await;
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<Value>().await.unwrap()["id"],
        json!(admin.user_id)
    );
    let problem = assert_problem(
        app.post_json(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": admin.refresh_token}),
        )
        .await,
        401,
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("revoked"),
        "{problem}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")
            .await,
        0
    );
}
