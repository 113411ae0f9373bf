//! Password guessing: failures are throttled per username (10 in 15
//! minutes) and per client address (50), with 429 and `Retry-After`; a
//! throttled attempt is answered before any password is checked, and the
//! throttle treats unknown and real usernames alike. (That both answer in
//! the same time is measured by `scripts/login-timing.sh`, in release mode.)
//! A burst of logins, or of password changes, waits for its turns, not for
//! the pool's connections.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::test_app::{PASSWORD, TestApp, assert_problem};

/// Seconds of the `Retry-After` header, which must be within the window.
fn retry_after(response: &reqwest::Response) -> u64 {
    let seconds: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&seconds), "Retry-After: {seconds}");
    seconds
}

async fn failures_of(app: &TestApp, username: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM login_failures WHERE username = $1")
        .bind(username)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_hundred_wrong_passwords_get_ten_401s_then_only_429s_even_for_the_right_one(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.register_company("Acme").await;
    let mut statuses = Vec::new();
    for i in 0..100 {
        let response = app
            .login("acme-admin", &format!("wrong password {i:03}"))
            .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after(&response);
        }
        statuses.push(response.status().as_u16());
    }
    let expected: Vec<u16> = [401; 10].into_iter().chain([429; 90]).collect();
    assert_eq!(statuses, expected);
    // Throttled attempts were answered before any check: only the first ten
    // were counted (and hashed).
    assert_eq!(failures_of(&app, "acme-admin").await, 10);

    // The right password does not get through the throttle either, nor does
    // another spelling of the same username.
    for username in ["acme-admin", "ACME-Admin", "  acme-admin "] {
        let response = app.login(username, PASSWORD).await;
        retry_after(&response);
        let problem = assert_problem(response, 429).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("too many failed logins"),
            "{problem}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'auth.login_failed'")
            .await,
        10
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'auth.login'")
            .await,
        0
    );

    // Once the window has passed (aged here by hand), the right password works.
    sqlx::query("UPDATE login_failures SET created_at = created_at - interval '16 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app.login("acme-admin", PASSWORD).await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    assert!(tokens["access_token"].as_str().is_some());
}

#[sqlx::test(migrations = false)]
async fn an_unknown_username_is_throttled_exactly_like_a_real_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register_company("Acme").await;
    let mut real = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..11 {
        real.push(app.login("acme-admin", "wrong password!!").await);
        unknown.push(app.login("nobody-at-all", "wrong password!!").await);
    }
    for (i, (real, unknown)) in real.into_iter().zip(unknown).enumerate() {
        let status = if i < 10 { 401 } else { 429 };
        let real = assert_problem(real, status).await;
        let unknown = assert_problem(unknown, status).await;
        assert_eq!(real, unknown, "attempt {i}");
    }
}

#[sqlx::test(migrations = false)]
async fn fifty_failures_from_one_address_across_many_usernames_throttle_that_address(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.register_company("Acme").await;
    app.create_user(&admin, "operator", "USER").await;
    // Spraying one password over many usernames: no username reaches its
    // own limit of 10, the address reaches its 50.
    for i in 0..50 {
        let username = if i % 2 == 0 {
            format!("sprayed-{i:02}")
        } else {
            "operator".to_owned()
        };
        let response = app.login(&username, "Spring2026!Spring").await;
        if username == "operator" && i >= 20 {
            // The real user's own limit (10) is hit half-way through.
            assert_eq!(response.status(), 429, "attempt {i} on {username}");
        } else {
            assert_eq!(response.status(), 401, "attempt {i} on {username}");
        }
    }
    assert_eq!(
        app.count("SELECT count(*) FROM login_failures WHERE client_ip = '127.0.0.1'")
            .await,
        35
    );
    for i in 50..65 {
        let response = app
            .login(&format!("sprayed-{i:02}"), "Spring2026!Spring")
            .await;
        assert_eq!(response.status(), 401, "attempt {i}");
    }
    // The address has failed 50 times: every username is throttled for it,
    // a fresh one, and a real one with its right password.
    for username in ["never-tried-before", "acme-admin"] {
        let response = app.login(username, PASSWORD).await;
        retry_after(&response);
        assert_problem(response, 429).await;
    }
    assert_eq!(
        app.count("SELECT count(*) FROM login_failures WHERE client_ip = '127.0.0.1'")
            .await,
        50
    );
    assert_eq!(failures_of(&app, "acme-admin").await, 0);
    // No login got through: the one success is create_user's, before the spray.
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'auth.login'")
            .await,
        1
    );
}

/// Logins and password changes allowed at once: twice the password hashes,
/// one per two CPUs (`txdx_api::hashing::Hashing::half_the_cpus`).
fn password_turns() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    u32::try_from(2 * (cpus / 2).max(1)).unwrap()
}

/// An api on a pool with room for every request of a 20-request burst
/// beyond the turns, so only the turns can keep a burst from taking it all.
async fn app_with_a_wide_pool(pool: &PgPool, turns: u32) -> TestApp {
    let wide = PgPoolOptions::new()
        .max_connections(turns + 20)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    TestApp::spawn(wide).await
}

/// Samples the connections `pool` has in use beyond those in use when it
/// started (the api's listener for user changes holds one for good), while
/// `measuring` is set, until `done` is; the task answers the most seen at
/// once.
struct ConnectionWatch {
    measuring: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    most: tokio::task::JoinHandle<u32>,
}

impl ConnectionWatch {
    fn start(pool: &PgPool, measuring_from_start: bool) -> Self {
        let measuring = Arc::new(AtomicBool::new(measuring_from_start));
        let done = Arc::new(AtomicBool::new(false));
        let in_use = |pool: &PgPool| {
            let idle = u32::try_from(pool.num_idle()).unwrap();
            pool.size().saturating_sub(idle)
        };
        let held = in_use(pool);
        let most = tokio::spawn({
            let (pool, measuring, done) = (pool.clone(), measuring.clone(), done.clone());
            async move {
                let mut most = 0;
                while !done.load(Ordering::Relaxed) {
                    if measuring.load(Ordering::Relaxed) {
                        most = most.max(in_use(&pool).saturating_sub(held));
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                most
            }
        });
        Self {
            measuring,
            done,
            most,
        }
    }

    /// The most connections in use at once while measuring.
    async fn stop(self) -> u32 {
        self.done.store(true, Ordering::Relaxed);
        self.most.await.unwrap()
    }
}

#[sqlx::test(migrations = false)]
async fn a_burst_of_logins_holds_no_more_connections_than_its_turns(pool: PgPool) {
    // A pool with room for every login of the burst, so only the turns
    // can keep them from taking it all.
    let turns = password_turns();
    let app = app_with_a_wide_pool(&pool, turns).await;
    app.register_company("Acme").await;

    let watch = ConnectionWatch::start(&app.pool, true);
    let logins =
        futures::future::join_all((0..20).map(|_| app.login("acme-admin", PASSWORD))).await;
    let most = watch.stop().await;
    for response in logins {
        assert_eq!(response.status(), StatusCode::OK);
    }
    // A connection goes back to the pool on a task of its own after its
    // login's turn ends, so the next login may briefly overlap it.
    assert!(
        (1..=turns + 2).contains(&most),
        "{most} connections in use at once during 20 logins, with {turns} turns"
    );
}

#[sqlx::test(migrations = false)]
async fn a_burst_of_password_changes_waits_for_its_hashes_holding_no_connection(pool: PgPool) {
    let turns = password_turns();
    let app = app_with_a_wide_pool(&pool, turns).await;
    let admin = app.register_company("Acme").await;
    let user = app.create_user(&admin, "alice", "USER").await;
    let path = format!("/api/users/{}", user.user_id);

    // Every request of the burst checks its token at once, which takes a
    // connection each for a moment (opened first, if the pool has none
    // idle); what counts is what they hold while their hashes run, so the
    // pool is filled beforehand (all but the listener's connection) and the
    // count starts with the third answer.
    let warm: Vec<_> = futures::future::join_all((0..turns + 19).map(|_| app.pool.acquire())).await;
    drop(warm);
    while app.pool.num_idle() + 1 < app.pool.size() as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let watch = ConnectionWatch::start(&app.pool, false);
    let mut changes: futures::stream::FuturesUnordered<_> = (0..20)
        .map(|i| {
            let body = serde_json::json!({"password": format!("{PASSWORD} {i}")});
            let (app, path, token) = (&app, &path, &admin.access_token);
            async move { app.put_json(path, token, &body).await.status() }
        })
        .collect();
    let mut statuses = Vec::new();
    while let Some(status) = futures::StreamExt::next(&mut changes).await {
        statuses.push(status);
        if statuses.len() == 3 {
            watch.measuring.store(true, Ordering::Relaxed);
        }
    }
    let most = watch.stop().await;
    assert_eq!(statuses, vec![StatusCode::OK; 20]);
    assert!(
        (1..=turns + 2).contains(&most),
        "{most} connections in use at once while 17 password changes waited, with {turns} turns"
    );
    // Each change was applied and audited.
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'user.updated'")
            .await,
        20
    );
}
