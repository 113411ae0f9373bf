//! The worker's periodic tasks seen from outside: queue gauges on its
//! `/metrics`, and the retention sweep deleting finished job rows (one
//! process at a time).

use std::time::{Duration, Instant};

use serde_json::json;
use shared::{db::apalis_queue::RETENTION_LOCK_KEY, jobs::ACTION_QUEUE};
use sqlx::PgPool;

use crate::harness::{System, block_ip_ticket, sample, simulated_firewall};

#[sqlx::test(migrations = false)]
async fn worker_metrics_show_queue_depth_oldest_wait_and_action_counters(pool: PgPool) {
    let system = System::start(
        pool,
        1,
        &[
            ("WORKER_CONCURRENCY", "1"),
            ("QUEUE_METRICS_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let token = system.register("Acme").await;
    let slow = system
        .create_integration(&token, simulated_firewall("slow", 700))
        .await;
    for i in 0..5 {
        system
            .create_ticket(
                &token,
                block_ip_ticket(&format!("t{i}"), &slow, "198.51.100.3"),
            )
            .await;
    }
    let started = Instant::now();
    let (mut max_ready, mut max_age, mut max_running) = (0f64, 0f64, 0f64);
    loop {
        let text = system.worker_metrics_text(0).await;
        if let Some(ready) = sample(&text, "txdx_worker_queue_jobs", "state=\"ready\"") {
            max_ready = max_ready.max(ready);
        }
        if let Some(running) = sample(&text, "txdx_worker_queue_jobs", "state=\"running\"") {
            max_running = max_running.max(running);
        }
        if let Some(age) = sample(&text, "txdx_worker_queue_oldest_ready_seconds", "") {
            max_age = max_age.max(age);
        }
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tickets WHERE status = 'PENDING'")
                .fetch_one(&system.pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "figure: 5 tickets x 700 ms on one worker of concurrency 1: gauges peaked at ready={max_ready}, running={max_running}, oldest ready {max_age:.1} s"
    );
    assert!(max_ready >= 2.0, "ready peaked at {max_ready}");
    assert!(max_running >= 1.0, "running peaked at {max_running}");
    assert!(max_age >= 1.0, "oldest ready age peaked at {max_age}");
    // Drained: the gauges come back to zero at the next refresh.
    let text = system
        .worker_metrics_when(
            0,
            Duration::from_secs(5),
            "the queue gauges back to zero",
            |text| {
                let gauge = |name, labels| sample(text, name, labels);
                (
                    gauge("txdx_worker_queue_jobs", "state=\"ready\""),
                    gauge("txdx_worker_queue_jobs", "state=\"running\""),
                    gauge("txdx_worker_queue_oldest_ready_seconds", ""),
                ) == (Some(0.0), Some(0.0), Some(0.0))
            },
        )
        .await;
    // The counters and the histogram kept by the handler are there too.
    for counter in [
        "txdx_worker_actions_started_total",
        "txdx_worker_actions_succeeded_total",
        "txdx_worker_action_duration_seconds_count",
    ] {
        assert_eq!(sample(&text, counter, ""), Some(5.0), "{counter}");
    }
    system.assert_invariants().await;
}

async fn done_jobs(system: &System) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'")
        .bind(ACTION_QUEUE)
        .fetch_one(&system.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_retention_sweep_deletes_finished_jobs_one_process_at_a_time_and_spares_live_ones(
    pool: PgPool,
) {
    // Another process (this test) holds the sweep lock at first: the two
    // workers must both stand back.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(RETENTION_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let system = System::start(
        pool,
        2,
        &[
            ("JOB_RETENTION_SECS", "1"),
            ("JOB_RETENTION_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let token = system.register("Acme").await;
    let fw = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "fw"}))
        .await;
    for i in 0..5 {
        system
            .create_ticket(
                &token,
                block_ip_ticket(&format!("t{i}"), &fw, "198.51.100.4"),
            )
            .await;
    }
    // A job still to run (far in the future) and another application's
    // finished job: neither may go.
    let scheduled = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO apalis.jobs (job, id, job_type, status, run_at) VALUES ('\\x00'::bytea, $1, $2, 'Pending', now() + interval '1 hour')")
        .bind(&scheduled)
        .bind(ACTION_QUEUE)
        .execute(&system.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO apalis.jobs (job, id, job_type, status, run_at, done_at) VALUES ('\\x00'::bytea, $1, 'someone::else', 'Done', now() - interval '1 day', now() - interval '1 day')")
        .bind(uuid::Uuid::new_v4().to_string())
        .execute(&system.pool)
        .await
        .unwrap();
    system.wait_all_terminal(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        done_jobs(&system).await,
        5,
        "swept while another process held the lock"
    );

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RETENTION_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let released = Instant::now();
    while done_jobs(&system).await > 0 {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "finished jobs still there 10 s after the lock was released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "figure: retention (1 s, swept every 1 s) deleted 5 finished jobs {:?} after the sweep lock was freed",
        released.elapsed()
    );
    let left: Vec<String> =
        sqlx::query_scalar("SELECT job_type || ':' || status FROM apalis.jobs ORDER BY 1")
            .fetch_all(&system.pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        [
            "someone::else:Done".to_owned(),
            format!("{ACTION_QUEUE}:Pending")
        ]
    );
    system.assert_invariants().await;
}
