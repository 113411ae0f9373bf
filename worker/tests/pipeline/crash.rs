//! Crash safety and scale: workers killed with -9 lose nothing, and a pool
//! of processes drains many companies' tickets fairly.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use crate::harness::System;

#[sqlx::test(migrations = false)]
async fn a_worker_killed_mid_action_loses_nothing_and_the_action_has_one_outcome(pool: PgPool) {
    let mut system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let slow = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "slow-fw", "settings": {"simulated_latency_ms": 1500}}))
        .await;
    let ticket = system
        .create_ticket(&token, json!({"subject": "Block", "actions": [{"integration_id": slow, "action": "block_ip", "params": {"ip": "198.51.100.9"}}]}))
        .await;
    let id = ticket["id"].as_str().unwrap().to_owned();
    // Wait until the action is running, then kill -9 the worker.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = system.get_ticket(&token, &id).await;
        if t["actions"][0]["status"] == "RUNNING" {
            break;
        }
        assert!(Instant::now() < deadline, "the action never started: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    system.kill_worker(0);
    let killed_at = Instant::now();
    system.start_worker();
    let done = system
        .wait_terminal(&token, &id, Duration::from_secs(30))
        .await;
    let recovered_in = killed_at.elapsed();
    println!("figure: action recovered {recovered_in:?} after kill -9 (orphan window 3 s)");
    assert_eq!(done["status"], "EXECUTED", "{done}");
    assert_eq!(done["actions"][0]["status"], "SUCCEEDED");
    assert_eq!(
        done["actions"][0]["attempts"], 2,
        "the killed attempt counts"
    );
    let outcomes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE entity_id = $1::uuid AND action LIKE 'action.%'",
    )
    .bind(done["actions"][0]["id"].as_str().unwrap())
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert_eq!(outcomes, 1, "exactly one outcome recorded");
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn four_workers_drain_2000_tickets_of_20_companies_fairly_with_no_action_done_twice(
    pool: PgPool,
) {
    // The backlog is queued first, with no worker running, so the queue order
    // (not the creation order) decides who is served first.
    let mut system = System::start(pool, 0, &[("WORKER_CONCURRENCY", "8")]).await;
    let mut tokens = Vec::new();
    let mut integrations = Vec::new();
    for c in 0..20 {
        let token = system.register(&format!("Company{c:02}")).await;
        integrations.push(
            system
                .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "fw"}))
                .await,
        );
        tokens.push(token);
    }
    let started = Instant::now();
    // Company 0 floods first with 1,050 tickets; then the 19 others add 50 each.
    let mut plan: Vec<usize> = vec![0; 1050];
    for c in 1..20 {
        plan.extend(std::iter::repeat_n(c, 50));
    }
    assert_eq!(plan.len(), 2000);
    let system_ref = &system;
    let requests = futures::stream::iter(plan.into_iter().enumerate().map(|(i, c)| {
        let system = system_ref;
        let token = tokens[c].clone();
        let integration = integrations[c].clone();
        async move {
            system
                .create_ticket(&token, json!({"subject": format!("t{i}"), "actions": [{"integration_id": integration, "action": "block_ip", "params": {"ip": "198.51.100.1"}}]}))
                .await;
        }
    }));
    use futures::StreamExt;
    requests.buffer_unordered(16).collect::<Vec<()>>().await;
    let created = started.elapsed();
    for _ in 0..4 {
        system.start_worker();
    }
    let drained = system.wait_all_terminal(Duration::from_secs(300)).await;
    println!("figure: 2000 tickets created in {created:?}; 4 workers drained them in {drained:?}");
    let executed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets WHERE status = 'EXECUTED'")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    assert_eq!(executed, 2000);
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_actions WHERE attempts <> 1")
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(twice, 0, "no action ran twice");
    // Fairness: every small company finished before the flooding company did.
    let flood_company: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM companies WHERE name = 'Company00'")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    let (flood_last, others_last): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT max(executed_at) FILTER (WHERE company_id = $1), max(executed_at) FILTER (WHERE company_id <> $1) FROM tickets",
    )
    .bind(flood_company)
    .fetch_one(&system.pool)
    .await
    .unwrap();
    println!(
        "figure: last small-company ticket done {:?} before the flood's last",
        (flood_last - others_last).to_std().unwrap_or_default()
    );
    assert!(
        others_last < flood_last,
        "a small company's ticket waited behind the whole flood"
    );
    system.assert_invariants().await;
}
