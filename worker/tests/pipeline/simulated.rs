//! The whole path with simulated integrations: queue, secret store, status.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use crate::harness::{System, block_ip_ticket, sample, simulated_firewall};

#[sqlx::test(migrations = false)]
async fn a_ticket_with_two_actions_goes_pending_to_executed_in_order_with_both_results(
    pool: PgPool,
) {
    let system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let pan = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "fw", "mode": "simulated", "credentials": {"api_key": "k-123456"}}))
        .await;
    let splunk = system
        .create_integration(&token, json!({"provider": "SPLUNK", "name": "siem", "mode": "simulated", "credentials": {"hec_token": "h-123456"}}))
        .await;
    let ticket = system
        .create_ticket(
            &token,
            json!({"subject": "Block scanner", "actions": [
                {"integration_id": pan, "action": "block_ip", "params": {"ip": "203.0.113.7"}},
                {"integration_id": splunk, "action": "send_event", "params": {"event": {"blocked": "203.0.113.7"}}},
            ]}),
        )
        .await;
    let id = ticket["id"].as_str().unwrap();
    let done = system
        .wait_terminal(&token, id, Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "EXECUTED", "{done}");
    assert!(done["executed_at"].is_string());
    let actions = done["actions"].as_array().unwrap();
    assert_eq!(actions[0]["status"], "SUCCEEDED");
    assert_eq!(actions[1]["status"], "SUCCEEDED");
    assert_eq!(actions[0]["result"]["simulated"], true);
    assert_eq!(actions[0]["result"]["registered"][0]["ip"], "203.0.113.7");
    assert_eq!(actions[1]["result"]["code"], 0);
    assert_eq!(actions[0]["attempts"], 1);
    // In order: the second started after the first finished.
    let first_done: chrono::DateTime<chrono::Utc> =
        actions[0]["finished_at"].as_str().unwrap().parse().unwrap();
    let second_started: chrono::DateTime<chrono::Utc> =
        actions[1]["started_at"].as_str().unwrap().parse().unwrap();
    assert!(second_started >= first_done);
    // One transition audited, by the system.
    let audits: Vec<(String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT action, actor_user_id FROM audit_logs WHERE entity_id = $1::uuid AND action = 'ticket.status_changed'")
            .bind(id)
            .fetch_all(&system.pool)
            .await
            .unwrap();
    assert_eq!(audits, vec![("ticket.status_changed".to_owned(), None)]);
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn an_action_whose_integration_was_deleted_derives_the_ticket_to_a_human(pool: PgPool) {
    let system = System::start(pool, 0, &[]).await;
    let token = system.register("Acme").await;
    let pan = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "fw"}))
        .await;
    let ticket = system
        .create_ticket(&token, block_ip_ticket("Block", &pan, "198.51.100.1"))
        .await;
    let r = system
        .client
        .delete(system.url(&format!("/api/integrations/{pan}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut system = system;
    system.start_worker();
    let done = system
        .wait_terminal(
            &token,
            ticket["id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(done["status"], "DERIVED", "{done}");
    assert!(
        done["status_reason"]
            .as_str()
            .unwrap()
            .contains("no integration")
    );
    assert_eq!(done["actions"][0]["status"], "DERIVED");
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn sigterm_drains_and_exits_within_the_shutdown_timeout(pool: PgPool) {
    let mut system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let pan = system
        .create_integration(&token, json!({"provider": "PALO_ALTO", "name": "fw"}))
        .await;
    for i in 0..20 {
        system
            .create_ticket(
                &token,
                block_ip_ticket(&format!("t{i}"), &pan, "198.51.100.1"),
            )
            .await;
    }
    let took = system.terminate_worker(0);
    assert!(
        took < Duration::from_secs(8),
        "worker took {took:?} to stop"
    );
    // A fresh worker finishes whatever is left; nothing is stuck.
    system.start_worker();
    system.wait_all_terminal(Duration::from_secs(60)).await;
    let executed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets WHERE status = 'EXECUTED'")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    assert_eq!(executed, 20);
    system.assert_invariants().await;
}

#[sqlx::test(migrations = false)]
async fn a_connection_test_runs_on_a_worker_and_reports_the_classified_outcome(pool: PgPool) {
    let system = System::start(pool, 1, &[]).await;
    let token = system.register("Acme").await;
    let simulated = system
        .create_integration(&token, json!({"provider": "MERAKI", "name": "sim", "credentials": {"api_key": "canary-meraki-key"}}))
        .await;
    let closed_port = crate::harness::free_port();
    let unreachable = system
        .create_integration(
            &token,
            json!({"provider": "WAZUH", "name": "live", "mode": "live", "settings": {"base_url": format!("http://127.0.0.1:{closed_port}"), "timeout_secs": 2}, "credentials": {"username": "wazuh", "password": "canary-wazuh-password"}}),
        )
        .await;
    let test = |id: String| {
        let system = &system;
        let token = token.clone();
        async move {
            let r = system
                .client
                .post(system.url(&format!("/api/integrations/{id}/test")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let ok = test(simulated).await;
    let ok: serde_json::Value = serde_json::from_str(&ok).unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["outcome"]["simulated"], true);
    let failed_text = test(unreachable).await;
    let failed: serde_json::Value = serde_json::from_str(&failed_text).unwrap();
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(
        failed["error_kind"], "transient",
        "a refused connection is worth retrying: {failed}"
    );
    assert!(!failed_text.contains("canary"));
}

#[sqlx::test(migrations = false)]
async fn create_operator_reads_the_password_from_stdin_and_the_operator_gets_into_the_board(
    pool: PgPool,
) {
    use std::io::Write;
    let mut system = System::start(pool, 0, &[]).await;
    let mut child = system
        .command("api")
        .args(["create-operator", "--username", "Ops"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"operator passphrase one\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("operator ops created"));
    let board = system
        .client
        .get(system.url("/board"))
        .basic_auth("ops", Some("operator passphrase one"))
        .send()
        .await
        .unwrap();
    assert_eq!(board.status(), 200);
    let refused = system
        .client
        .get(system.url("/board"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A password that breaks the policy is refused, with the reason, and nothing is created.
    let mut child = system
        .command("api")
        .args(["create-operator", "--username", "weak"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("password: must be at least 12 characters")
    );
    let operators: i64 = sqlx::query_scalar("SELECT count(*) FROM operators")
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(operators, 1);
}

#[sqlx::test(migrations = false)]
async fn the_worker_exits_with_one_line_when_the_schema_is_missing_or_the_database_is_unreachable(
    pool: PgPool,
) {
    let mut system = System::start(pool, 0, &[]).await;
    // A database without our schema.
    sqlx::query("DROP TABLE txdx_migrations")
        .execute(&system.pool)
        .await
        .unwrap();
    let output = system
        .command("worker")
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("schema is missing or outdated: run `api migrate` first"),
        "{stderr}"
    );
    // A database that does not answer.
    let closed = crate::harness::free_port();
    let output = system
        .command("worker")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{closed}/txdx"),
        )
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("the database is unreachable"), "{stderr}");
}

#[sqlx::test(migrations = false)]
async fn each_outcome_commits_with_the_end_of_its_job_and_the_ack_has_nothing_left_to_write(
    pool: PgPool,
) {
    let system = System::start(pool, 1, &[("WORKER_CONCURRENCY", "16")]).await;
    let token = system.register("Acme").await;
    let pan = system
        .create_integration(&token, simulated_firewall("fw", 200))
        .await;
    let tickets = 64;
    for i in 0..tickets {
        system
            .create_ticket(
                &token,
                block_ip_ticket(&format!("t{i}"), &pan, "198.51.100.9"),
            )
            .await;
    }
    // While the tickets drain, no finished action's job is still held by
    // the worker: each outcome commits with its job's end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut looks = 0;
    loop {
        let (held, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ticket_actions a JOIN apalis.jobs j ON j.id = a.job_id
                     WHERE a.status IN ('SUCCEEDED', 'FAILED', 'DERIVED') AND j.status IN ('Queued', 'Running')),
                    (SELECT count(*) FROM tickets WHERE status = 'PENDING')",
        )
        .fetch_one(&system.pool)
        .await
        .unwrap();
        looks += 1;
        assert_eq!(held, 0, "finished actions whose jobs are still held");
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} tickets not drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(looks > 10, "the drain was watched {looks} times only");
    // Every job row holds what apalis's ack writes for a delivery that
    // returned `Ok(())` at its first attempt, and no ack wrote it again.
    let rows: Vec<(String, i32, Option<serde_json::Value>, bool)> = sqlx::query_as(
        "SELECT status, attempts, last_result, done_at IS NOT NULL FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(shared::jobs::ACTION_QUEUE)
    .fetch_all(&system.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), tickets);
    for row in rows {
        assert_eq!(
            row,
            ("Done".to_string(), 1, Some(json!({"Ok": null})), true)
        );
    }
    // apalis's events for the last deliveries follow their handlers' return.
    let text = system
        .worker_metrics_when(
            0,
            Duration::from_secs(5),
            "every job end written with its outcome",
            |text| {
                sample(
                    text,
                    "txdx_worker_job_ends_total",
                    "written=\"with_outcome\"",
                ) == Some(tickets as f64)
            },
        )
        .await;
    assert_eq!(
        sample(&text, "txdx_worker_job_ends_total", "written=\"by_ack\""),
        None
    );
    assert_eq!(
        sample(&text, "txdx_worker_queue_seconds_count", "step=\"ack\""),
        None,
        "no ack statement ran"
    );
    system.assert_invariants().await;
}

/// One worker started with `env`, a company (its token) and a simulated
/// firewall (its id) that has taken one ticket, so the worker has settled
/// after its start (its listener may have come up after that ticket's
/// notification).
async fn settled_worker(pool: PgPool, env: &[(&str, &str)]) -> (System, String, String) {
    let system = System::start(pool, 1, env).await;
    let token = system.register("Acme").await;
    let pan = system
        .create_integration(&token, simulated_firewall("fw", 0))
        .await;
    system
        .run_ticket(
            &token,
            block_ip_ticket("first", &pan, "198.51.100.9"),
            Duration::from_secs(30),
        )
        .await;
    (system, token, pan)
}

/// The fetches the (first) worker has made.
async fn fetches(system: &System) -> f64 {
    let text = system.worker_metrics_text(0).await;
    sample(&text, "txdx_worker_queue_seconds_count", "step=\"fetch\"").unwrap_or(0.0)
}

#[sqlx::test(migrations = false)]
async fn a_worker_that_drained_the_queue_looks_again_on_a_notification_or_its_tick_only(
    pool: PgPool,
) {
    // A tick far apart: every timely pickup below comes from a notification.
    // A pickup by the tick would come anywhere in the 20 s after the
    // ticket, so one within 5 s is a notification's, however slow a loaded
    // machine makes it.
    let tick_secs = 20.0;
    let (system, token, pan) = settled_worker(pool, &[("QUEUE_POLL_INTERVAL_MS", "20000")]).await;
    let before = fetches(&system).await;
    let started = Instant::now();
    let tickets = 20;
    for i in 0..tickets {
        let done = system
            .run_ticket(
                &token,
                block_ip_ticket(&format!("t{i}"), &pan, "198.51.100.9"),
                Duration::from_secs(30),
            )
            .await;
        assert_eq!(done["status"], "EXECUTED", "{done}");
        let waited: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM executed_at - created_at)::float8 FROM tickets WHERE id = $1::uuid",
        )
        .bind(done["id"].as_str().unwrap())
        .fetch_one(&system.pool)
        .await
        .unwrap();
        assert!(
            waited < 5.0,
            "ticket {i} waited {waited} s: picked up by the tick, not by its notification"
        );
    }
    // Per ticket, the fetch its notification started: it takes the job,
    // fewer than it asked for, so the queue is drained. Then nothing until
    // the next notification, however often the worker's task wakes (each
    // delivery's end and each ack wake it), but for the tick.
    let ticks = (started.elapsed().as_secs_f64() / tick_secs).ceil();
    let looked = fetches(&system).await - before;
    assert!(
        looked <= f64::from(tickets) + ticks + 1.0,
        "{looked} fetches for {tickets} tickets one at a time"
    );
    assert!(looked >= f64::from(tickets), "{looked} fetches");
}

/// A worker settled with a second of fetch cooldown (`env` adds to it) and
/// a tick far apart, so every pickup is a notification's; after a
/// cooldown's rest, six tickets posted `apart`. Returns the fetches they
/// took and each one's wait from POST to EXECUTED, in seconds.
async fn six_tickets_apart(pool: PgPool, env: &[(&str, &str)], apart: Duration) -> (f64, Vec<f64>) {
    let cooldown = Duration::from_secs(1);
    let mut env = env.to_vec();
    env.extend([
        ("QUEUE_FETCH_COOLDOWN_MS", "1000"),
        ("QUEUE_POLL_INTERVAL_MS", "20000"),
    ]);
    let (system, token, pan) = settled_worker(pool, &env).await;
    // A cooldown's rest, so the next ticket is fetched at once.
    tokio::time::sleep(cooldown + Duration::from_millis(200)).await;
    let before = fetches(&system).await;

    let mut ids = Vec::new();
    for i in 0..6 {
        let ticket = system
            .create_ticket(
                &token,
                block_ip_ticket(&format!("t{i}"), &pan, "198.51.100.9"),
            )
            .await;
        ids.push(ticket["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(apart).await;
    }
    system.wait_all_terminal(Duration::from_secs(15)).await;
    let looked = fetches(&system).await - before;
    let waits: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM executed_at - created_at)::float8 FROM tickets
         WHERE id = ANY($1::uuid[]) ORDER BY created_at",
    )
    .bind(&ids)
    .fetch_all(&system.pool)
    .await
    .unwrap();
    assert_eq!(waits.len(), 6);
    system.assert_invariants().await;
    (looked, waits)
}

#[sqlx::test(migrations = false)]
async fn notifications_within_the_fetch_cooldown_are_answered_by_one_fetch_at_its_end(
    pool: PgPool,
) {
    // The whole cooldown after a fetch of one job: the tickets after the
    // first come within the cooldown of the fetch the first one started.
    let (looked, waits) = six_tickets_apart(
        pool,
        &[("QUEUE_FETCH_COOLDOWN_FULL_AT", "1")],
        Duration::from_millis(50),
    )
    .await;
    // The first ticket's fetch, then one for the five that came within
    // the cooldown: not one each.
    assert!(
        (2.0..=3.0).contains(&looked),
        "{looked} fetches for 6 tickets within a cooldown"
    );
    // The first went at once; the last waited for the cooldown's end, not
    // for the tick (20 s).
    assert!(waits[0] < 0.9, "the first ticket waited {} s", waits[0]);
    assert!(
        (0.4..5.0).contains(&waits[5]),
        "the last ticket waited {} s",
        waits[5]
    );
}

#[sqlx::test(migrations = false)]
async fn after_a_fetch_of_one_job_the_next_waits_its_share_of_the_cooldown_only(pool: PgPool) {
    // The whole cooldown after a fetch of 16 jobs (the default): after a
    // fetch of one job the next waits 62.5 ms. Tickets 100 ms apart, a
    // quiet system's pace, each come after that share and are fetched at
    // once. With the whole cooldown after every fetch, the second would
    // have waited 0.9 s and the five after the first shared one fetch.
    let (looked, waits) = six_tickets_apart(pool, &[], Duration::from_millis(100)).await;
    assert!(
        (4.0..=8.0).contains(&looked),
        "{looked} fetches for 6 tickets 100 ms apart"
    );
    assert!(
        waits.iter().all(|w| *w < 0.6),
        "a ticket waited for more than a share of the cooldown: {waits:?} s"
    );
}
