//! Crash safety and scale: workers killed with -9 lose nothing, and a pool
//! of processes drains many companies' tickets fairly.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use crate::harness::{System, block_ip_ticket, simulated_firewall};

#[sqlx::test(migrations = false)]
async fn a_worker_killed_mid_action_loses_nothing_and_the_action_has_one_outcome(pool: PgPool) {
    let mut system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let slow = system
        .create_integration(&token, simulated_firewall("slow-fw", 1500))
        .await;
    let ticket = system
        .create_ticket(&token, block_ip_ticket("Block", &slow, "198.51.100.9"))
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
                .create_ticket(
                    &token,
                    block_ip_ticket(&format!("t{i}"), &integration, "198.51.100.1"),
                )
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

#[sqlx::test(migrations = false)]
async fn the_api_killed_twenty_times_under_load_leaves_every_acknowledged_ticket_whole_and_no_orphans(
    pool: PgPool,
) {
    use std::sync::{Arc, Mutex};
    let mut system = System::start(pool, 0, &[]).await;
    let token = system.register("Acme").await;
    let fw = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "fw"}))
        .await;
    let siem = system
        .create_integration(&token, json!({"provider": "SPLUNK", "name": "siem"}))
        .await;
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (client, url, token, fw, siem) = (
            system.client.clone(),
            system.url("/api/tickets"),
            token.clone(),
            fw.clone(),
            siem.clone(),
        );
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = json!({"subject": format!("c{c}-{i}"), "actions": [
                    {"integration_id": fw, "action": "block_ip", "params": {"ip": "198.51.100.7"}},
                    {"integration_id": siem, "action": "send_event", "params": {"event": {"n": i}}},
                ]});
                // Connection errors while the api is down are expected; only 201s count.
                if let Ok(r) = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    && r.status() == 201
                    && let Ok(v) = r.json::<serde_json::Value>().await
                {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(v["id"].as_str().unwrap().to_owned());
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        system.kill_api();
        system.start_api().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let q = |sql: &'static str| {
        let pool = system.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let tickets = q("SELECT count(*) FROM tickets").await;
    println!(
        "figure: 20 api kills under load: {} tickets acknowledged, {tickets} in the database",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 20, "the load kept going between kills");
    for id in &acknowledged {
        let (actions, first_job): (i64, Option<String>) = sqlx::query_as(
            "SELECT count(*), max(a.job_id) FILTER (WHERE a.position = 0) FROM ticket_actions a WHERE a.ticket_id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&system.pool)
        .await
        .unwrap();
        assert_eq!(actions, 2, "acknowledged ticket {id} has both actions");
        let job_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM apalis.jobs WHERE id = $1)")
                .bind(first_job.clone().unwrap_or_default())
                .fetch_one(&system.pool)
                .await
                .unwrap();
        assert!(job_exists, "acknowledged ticket {id} has its queue job");
    }
    // Nothing half-written: every ticket (acknowledged or cut off before the answer) is whole.
    assert_eq!(q("SELECT count(*) FROM tickets t WHERE (SELECT count(*) FROM ticket_actions a WHERE a.ticket_id = t.id) <> 2").await, 0);
    assert_eq!(q("SELECT count(*) FROM ticket_actions a WHERE a.position = 0 AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.id = a.job_id)").await, 0);
    assert_eq!(q("SELECT count(*) FROM apalis.jobs j WHERE NOT EXISTS (SELECT 1 FROM ticket_actions a WHERE a.job_id = j.id)").await, 0, "no job without its action");
    assert_eq!(q("SELECT count(*) FROM tickets t WHERE NOT EXISTS (SELECT 1 FROM audit_logs l WHERE l.entity_id = t.id AND l.action = 'ticket.created')").await, 0);
}

/// The long variant of the kill test (not in the default run):
/// `scripts/reliability-long.sh`. Sizes come from TXDX_LONG_TICKETS (10,000)
/// and TXDX_LONG_COMPANIES (50).
#[sqlx::test(migrations = false)]
#[ignore = "long: run with scripts/reliability-long.sh"]
async fn long_random_worker_kills_over_a_large_backlog_lose_nothing(pool: PgPool) {
    let tickets: usize = std::env::var("TXDX_LONG_TICKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let companies: usize = std::env::var("TXDX_LONG_COMPANIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // Queued first, then drained by 4 workers while they are being killed.
    let mut system = System::start(pool, 0, &[("WORKER_CONCURRENCY", "8")]).await;
    let mut tokens = Vec::new();
    let mut integrations = Vec::new();
    for c in 0..companies {
        let token = system.register(&format!("Long{c:03}")).await;
        integrations.push(
            system
                .create_integration(&token, simulated_firewall("fw", 200))
                .await,
        );
        tokens.push(token);
    }
    let started = Instant::now();
    let system_ref = &system;
    use futures::StreamExt;
    futures::stream::iter((0..tickets).map(|i| {
        let c = i % companies;
        let (token, integration) = (tokens[c].clone(), integrations[c].clone());
        async move {
            system_ref
                .create_ticket(
                    &token,
                    block_ip_ticket(&format!("t{i}"), &integration, "198.51.100.1"),
                )
                .await;
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
    let created = started.elapsed();
    for _ in 0..4 {
        system.start_worker();
    }
    // Kill a random worker every 3 s until the backlog is gone, restarting it at once.
    let mut kills = 0;
    let drain_started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tickets WHERE status = 'PENDING'")
                .fetch_one(&system.pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            drain_started.elapsed() < Duration::from_secs(1800),
            "{pending} still pending"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = (drain_started.elapsed().as_millis() as usize) % system.workers.len();
        system.kill_worker(victim);
        let _ = system.start_worker();
        kills += 1;
    }
    let drained = drain_started.elapsed();
    let executed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets WHERE status = 'EXECUTED'")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    let reruns: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(attempts - 1), 0)::bigint FROM ticket_actions")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    println!(
        "figure: {tickets} tickets of {companies} companies created in {created:?}; drained in {drained:?} with {kills} worker kills; executed {executed}; re-run attempts {reruns}"
    );
    assert_eq!(executed as usize, tickets, "lost = 0");
    system.assert_invariants().await;
}
