//! Per-integration limits across worker processes: `max_concurrency` and
//! `rate_limit_per_sec` hold for the whole pool, and an action held back by
//! a limit is snoozed, never failed and never charged an attempt.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::System;

/// Creates `n` one-action tickets on `integration`; returns their ids.
async fn tickets(system: &System, token: &str, integration: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let t = system
            .create_ticket(token, json!({"subject": format!("t{i}"), "actions": [{"integration_id": integration, "action": "block_ip", "params": {"ip": format!("198.51.100.{}", i + 1)}}]}))
            .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn attempts_and_statuses(system: &System, integration: &str) -> Vec<(String, i32)> {
    sqlx::query_as("SELECT status, attempts FROM ticket_actions WHERE integration_id = $1::uuid")
        .bind(integration)
        .fetch_all(&system.pool)
        .await
        .unwrap()
}

/// Jobs pushed for the integration's actions beyond one per action: the snoozes.
async fn snoozes(system: &System, integration: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) - (SELECT count(*) FROM ticket_actions WHERE integration_id = $1::uuid) FROM apalis.jobs j WHERE convert_from(j.job, 'UTF8')::jsonb ->> 'action_id' IN (SELECT id::text FROM ticket_actions WHERE integration_id = $1::uuid)",
    )
    .bind(integration)
    .fetch_one(&system.pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn max_concurrency_1_holds_across_three_workers_and_snoozes_cost_no_attempt(pool: PgPool) {
    let system = System::start(pool, 3, &[]).await;
    let token = system.register("Acme").await;
    let integration = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "one-at-a-time", "settings": {"max_concurrency": 1, "simulated_latency_ms": 300}}))
        .await;
    let started = Instant::now();
    tickets(&system, &token, &integration, 6).await;
    // Sample the RUNNING count until everything is done.
    let mut max_running = 0i64;
    let mut samples = 0u32;
    let mut saw_running = false;
    loop {
        let (running, pending): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'RUNNING'), count(*) FILTER (WHERE status IN ('PENDING', 'RUNNING')) FROM ticket_actions WHERE integration_id = $1::uuid",
        )
        .bind(&integration)
        .fetch_one(&system.pool)
        .await
        .unwrap();
        samples += 1;
        max_running = max_running.max(running);
        saw_running |= running > 0;
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not done after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let took = started.elapsed();
    system.wait_all_terminal(Duration::from_secs(10)).await;
    let snoozed = snoozes(&system, &integration).await;
    println!(
        "figure: max_concurrency=1, 6 actions x 300 ms over 3 workers: done in {took:?}, {samples} samples, max RUNNING {max_running}, {snoozed} snoozes"
    );
    assert!(saw_running, "the sampler saw an action running");
    assert_eq!(max_running, 1, "two actions of the integration ran at once");
    // Exact check beside the sampling: the attempts' intervals do not overlap.
    let intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT attempt_started_at, finished_at FROM ticket_actions WHERE integration_id = $1::uuid ORDER BY attempt_started_at",
    )
    .bind(&integration)
    .fetch_all(&system.pool)
    .await
    .unwrap();
    for pair in intervals.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "attempt started at {} before the previous finished at {}",
            pair[1].0,
            pair[0].1
        );
    }
    for (status, attempts) in attempts_and_statuses(&system, &integration).await {
        assert_eq!((status.as_str(), attempts), ("SUCCEEDED", 1));
    }
    assert!(snoozed > 0, "some actions were snoozed");
    let executed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets WHERE status = 'EXECUTED'")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    assert_eq!(executed, 6);
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn rate_limit_2_per_second_spreads_10_tickets_over_at_least_4_seconds(pool: PgPool) {
    let system = System::start(pool, 2, &[]).await;
    let token = system.register("Acme").await;
    let integration = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "slow-api", "settings": {"rate_limit_per_sec": 2}}))
        .await;
    let started = Instant::now();
    tickets(&system, &token, &integration, 10).await;
    system.wait_all_terminal(Duration::from_secs(60)).await;
    let took = started.elapsed();
    let starts: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT attempt_started_at FROM ticket_actions WHERE integration_id = $1::uuid ORDER BY attempt_started_at",
    )
    .bind(&integration)
    .fetch_all(&system.pool)
    .await
    .unwrap();
    assert_eq!(starts.len(), 10);
    // No one-second window (aligned or sliding) holds three starts.
    let tightest = starts.windows(3).map(|w| w[2] - w[0]).min().unwrap();
    let spread = (starts[9] - starts[0]).to_std().unwrap();
    let snoozed = snoozes(&system, &integration).await;
    println!(
        "figure: rate_limit_per_sec=2, 10 tickets over 2 workers: done in {took:?}, starts spread over {spread:?}, tightest 3 starts within {} ms, {snoozed} snoozes",
        tightest.num_milliseconds()
    );
    assert!(
        tightest >= chrono::Duration::seconds(1),
        "3 starts within {} ms",
        tightest.num_milliseconds()
    );
    assert!(
        spread >= Duration::from_secs(4),
        "starts spread over {spread:?}"
    );
    assert!(took >= Duration::from_secs(4), "took {took:?}");
    for (status, attempts) in attempts_and_statuses(&system, &integration).await {
        assert_eq!((status.as_str(), attempts), ("SUCCEEDED", 1));
    }
    system.assert_invariants().await;
}
