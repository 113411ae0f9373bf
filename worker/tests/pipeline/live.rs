//! The whole pipeline with live integrations pointed at the provider fakes:
//! the real api and worker processes call the fakes over HTTP, so error
//! classification, retries and their backoff, `Retry-After`, the attempt cap,
//! the action timeout and the Meraki serialisation run as in production.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    fakes::{Canned, MERAKI_KEY, MerakiFake, PAN_API_KEY, PanFake},
    harness::{System, block_ip_ticket},
};

/// A live PAN-OS integration on `pan` with `api_key`.
async fn live_pan(system: &System, token: &str, pan: &PanFake, api_key: &str) -> String {
    system
        .create_integration(
            token,
            json!({"provider": "PALO_ALTO", "name": format!("fw-{}", uuid::Uuid::new_v4().simple()), "mode": "live",
                   "settings": {"base_url": pan.url}, "credentials": {"api_key": api_key}}),
        )
        .await
}

/// One `block_ip` ticket on `integration`; waits for it to end.
async fn block_and_wait(system: &System, token: &str, integration: &str, ip: &str) -> Value {
    system
        .run_ticket(
            token,
            block_ip_ticket(&format!("Block {ip}"), integration, ip),
            Duration::from_secs(45),
        )
        .await
}

/// The `action.retry_scheduled` audit rows of an action: (recorded at,
/// retry_at, error).
async fn retries(system: &System, action_id: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>, String)> {
    let rows: Vec<(DateTime<Utc>, Value)> = sqlx::query_as(
        "SELECT created_at, payload FROM audit_logs WHERE entity_id = $1::uuid AND action = 'action.retry_scheduled' ORDER BY created_at",
    )
    .bind(action_id)
    .fetch_all(&system.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(at, payload)| {
            (
                at,
                payload["retry_at"].as_str().unwrap().parse().unwrap(),
                payload["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ms(d: chrono::Duration) -> i64 {
    d.num_milliseconds()
}

#[sqlx::test(migrations = false)]
async fn a_permanent_provider_error_fails_the_ticket_with_the_reason_on_ticket_and_action(
    pool: PgPool,
) {
    let system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let pan = PanFake::start().await;
    let integration = live_pan(&system, &token, &pan, "not-the-key-0001").await;
    let done = block_and_wait(&system, &token, &integration, "203.0.113.7").await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let reason = done["status_reason"].as_str().unwrap();
    let action = &done["actions"][0];
    let last_error = action["last_error"].as_str().unwrap();
    assert!(last_error.contains("Invalid credentials"), "{last_error}");
    assert!(reason.contains(last_error), "{reason} carries {last_error}");
    assert_eq!(action["status"], "FAILED");
    assert_eq!(action["attempts"], 1, "a permanent error is not retried");
    assert_eq!(pan.seen_at("/api/").len(), 1);
    assert!(!reason.contains("not-the-key-0001"));
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn two_500s_then_success_execute_on_the_third_attempt_after_backoff_delays(pool: PgPool) {
    // A 1 s base makes the backoff larger than the queue's 1 s resolution.
    let system = System::start(pool, 1, &[("RETRY_BACKOFF_BASE_MS", "1000")]).await;
    let token = system.register("Acme").await;
    let pan = PanFake::start().await;
    for _ in 0..2 {
        pan.respond(Canned::new(
            "/api/",
            500,
            "<response status=\"error\"><msg>internal error</msg></response>",
        ));
    }
    let integration = live_pan(&system, &token, &pan, PAN_API_KEY).await;
    let done = block_and_wait(&system, &token, &integration, "203.0.113.8").await;
    assert_eq!(done["status"], "EXECUTED", "{done}");
    let action = &done["actions"][0];
    assert_eq!(action["attempts"], 3);
    let requests: Vec<DateTime<Utc>> = pan.seen_at("/api/").iter().map(|s| s.at).collect();
    assert_eq!(requests.len(), 3);
    let scheduled = retries(&system, action["id"].as_str().unwrap()).await;
    assert_eq!(scheduled.len(), 2);
    let mut figure = Vec::new();
    for (k, (recorded, retry_at, error)) in scheduled.iter().enumerate() {
        assert!(error.contains("HTTP 500"), "{error}");
        // Backoff after attempt k+1: base × 2^k with jitter in its upper half.
        let ceiling = 1000i64 << k;
        let delay = ms(*retry_at - *recorded);
        assert!(
            delay >= ceiling / 2 - 500 && delay <= ceiling,
            "retry {}: delay {delay} ms outside [{}, {ceiling}]",
            k + 1,
            ceiling / 2
        );
        let gap = ms(requests[k + 1] - requests[k]);
        assert!(
            requests[k + 1] >= *retry_at,
            "attempt {} started before its retry time",
            k + 2
        );
        // Whole-second run times and the 1 s poll add about 2 s at most
        // (more slack for a loaded machine).
        assert!(gap <= delay + 3500, "gap {gap} ms for a {delay} ms backoff");
        figure.push(format!("backoff {delay} ms -> gap {gap} ms"));
    }
    println!(
        "figure: 500, 500, 200 with base 1000 ms: {}",
        figure.join("; ")
    );
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn a_429_with_retry_after_2_holds_the_next_attempt_back_at_least_2_seconds(pool: PgPool) {
    let system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let pan = PanFake::start().await;
    pan.respond(Canned::new("/api/", 429, "Too Many Requests").header("Retry-After", "2"));
    let integration = live_pan(&system, &token, &pan, PAN_API_KEY).await;
    let done = block_and_wait(&system, &token, &integration, "203.0.113.9").await;
    assert_eq!(done["status"], "EXECUTED", "{done}");
    assert_eq!(done["actions"][0]["attempts"], 2);
    let requests = pan.seen_at("/api/");
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    println!(
        "figure: 429 Retry-After: 2 -> next attempt {} ms later (backoff base 200 ms)",
        ms(gap)
    );
    assert!(gap >= chrono::Duration::seconds(2), "{} ms", ms(gap));
    let scheduled = retries(&system, done["actions"][0]["id"].as_str().unwrap()).await;
    assert!(scheduled[0].2.contains("HTTP 429"), "{}", scheduled[0].2);
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn attempts_stop_at_max_attempts_and_the_final_error_is_recorded(pool: PgPool) {
    let system = System::start(pool, 1, &[("ACTION_MAX_ATTEMPTS", "3")]).await;
    let token = system.register("Acme").await;
    let pan = PanFake::start().await;
    for _ in 0..10 {
        pan.respond(Canned::new("/api/", 503, "maintenance"));
    }
    let integration = live_pan(&system, &token, &pan, PAN_API_KEY).await;
    let done = block_and_wait(&system, &token, &integration, "203.0.113.10").await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let action = &done["actions"][0];
    assert_eq!(action["attempts"], 3);
    assert_eq!(action["max_attempts"], 3);
    let last_error = action["last_error"].as_str().unwrap();
    assert!(last_error.contains("HTTP 503"), "{last_error}");
    assert!(
        last_error.contains("gave up after 3 attempts"),
        "{last_error}"
    );
    assert!(
        done["status_reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts")
    );
    // No fourth call, even after the queue has had time for one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pan.seen_at("/api/").len(), 3);
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn two_workers_blocking_two_ips_on_one_meraki_network_keep_both_rules(pool: PgPool) {
    // One action per worker process, so the two run in different processes.
    let system = System::start(pool, 2, &[("WORKER_CONCURRENCY", "1")]).await;
    let token = system.register("Acme").await;
    let meraki = MerakiFake::start().await;
    // Widens the read-modify-write window: without the lock, the second PUT
    // would replace the first one's rule list.
    meraki.delay_rule_reads(Duration::from_millis(600));
    const NETWORK: &str = "L_646829496481105433";
    let integration = system
        .create_integration(&token, json!({"provider": "MERAKI", "name": "mx", "mode": "live", "settings": {"base_url": meraki.base_url()}, "credentials": {"api_key": MERAKI_KEY}}))
        .await;
    let mut ids = Vec::new();
    for ip in ["203.0.113.21", "203.0.113.22"] {
        let t = system
            .create_ticket(&token, json!({"subject": format!("Block {ip}"), "actions": [{"integration_id": integration, "action": "block_ip", "params": {"network_id": NETWORK, "ip": ip}}]}))
            .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let done = system
            .wait_terminal(&token, id, Duration::from_secs(30))
            .await;
        assert_eq!(done["status"], "EXECUTED", "{done}");
    }
    let rules: Vec<String> = meraki
        .rules(NETWORK)
        .iter()
        .map(|r| r["destCidr"].as_str().unwrap().to_owned())
        .collect();
    assert!(rules.contains(&"203.0.113.21/32".to_owned()), "{rules:?}");
    assert!(rules.contains(&"203.0.113.22/32".to_owned()), "{rules:?}");
    // Serialised: each read-modify-write finished before the next read.
    let methods: Vec<String> = meraki
        .seen_at(&MerakiFake::rules_path(NETWORK))
        .iter()
        .map(|s| s.method.to_string())
        .collect();
    assert_eq!(methods, ["GET", "PUT", "GET", "PUT"]);
    let workers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT j.lock_by FROM apalis.jobs j JOIN ticket_actions a ON a.job_id = j.id",
    )
    .fetch_all(&system.pool)
    .await
    .unwrap();
    let claims: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT attempt_started_at FROM ticket_actions ORDER BY 1")
            .fetch_all(&system.pool)
            .await
            .unwrap();
    println!(
        "figure: meraki same-network blocks ran by {} worker process(es), claimed {} ms apart, both rules kept",
        workers.len(),
        ms(claims[1] - claims[0])
    );
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn a_provider_hanging_past_the_action_timeout_is_retried_and_the_worker_stays_healthy(
    pool: PgPool,
) {
    // ACTION_TIMEOUT_SECS is 2 in the harness; the fake hangs 6 s once.
    let mut system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let pan = PanFake::start().await;
    pan.respond(Canned::new("/api/", 200, "late").delay(Duration::from_secs(6)));
    let integration = live_pan(&system, &token, &pan, PAN_API_KEY).await;
    let simulated = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "sim"}))
        .await;
    let started = Instant::now();
    let hung = system
        .create_ticket(
            &token,
            block_ip_ticket("hangs", &integration, "203.0.113.30"),
        )
        .await;
    // While the provider hangs, the same worker keeps serving other tickets.
    while pan.seen_at("/api/").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the live call never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = system
        .run_ticket(
            &token,
            block_ip_ticket("meanwhile", &simulated, "203.0.113.31"),
            Duration::from_secs(10),
        )
        .await;
    let other_done = started.elapsed();
    assert_eq!(other["status"], "EXECUTED");
    let done = system
        .wait_terminal(
            &token,
            hung["id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    println!(
        "figure: provider hung 6 s against a 2 s action timeout: another ticket done after {other_done:?}, the hung one EXECUTED after {:?}",
        started.elapsed()
    );
    assert_eq!(done["status"], "EXECUTED", "{done}");
    assert_eq!(done["actions"][0]["attempts"], 2);
    let scheduled = retries(&system, done["actions"][0]["id"].as_str().unwrap()).await;
    assert_eq!(scheduled.len(), 1);
    assert!(
        scheduled[0].2.contains("timed out after 2 s"),
        "{}",
        scheduled[0].2
    );
    assert!(system.worker_alive(0), "the worker survived the hang");
    let health = system
        .client
        .get(format!("http://{}/health", system.worker_metrics[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    system.assert_invariants().await;
}
