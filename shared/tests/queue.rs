//! The queue-side repository functions against a real Postgres: integration
//! limits at claim time (concurrency, sliding-window rate, snooze), the queue
//! depth gauges' query, the retention sweep, and the fetch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test on setup errors"
)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use shared::{
    db::{
        self,
        actions::{AttemptStart, ClaimPolicy},
        apalis_queue::{self, RETENTION_LOCK_KEY, purge_finished_jobs, queue_stats},
        limits::{Admission, IntegrationLimits, LimitHit},
    },
    jobs::{ACTION_QUEUE, ActionJob},
};
use sqlx::{Acquire, PgPool};
use uuid::Uuid;

const POLICY: ClaimPolicy = ClaimPolicy {
    stale_running_after: Duration::from_secs(60),
};

/// A company, an integration with `settings`, and `n` one-action tickets on
/// it; returns (company, integration, action ids).
async fn seed(pool: &PgPool, settings: serde_json::Value, n: usize) -> (Uuid, Uuid, Vec<Uuid>) {
    let company: Uuid =
        sqlx::query_scalar("INSERT INTO companies (name) VALUES ('Acme') RETURNING id")
            .fetch_one(pool)
            .await
            .unwrap();
    let integration: Uuid = sqlx::query_scalar(
        "INSERT INTO integrations (company_id, provider, name, extra_json) VALUES ($1, 'PALO_ALTO', 'fw', $2) RETURNING id",
    )
    .bind(company)
    .bind(settings)
    .fetch_one(pool)
    .await
    .unwrap();
    let mut actions = Vec::new();
    for _ in 0..n {
        let ticket: Uuid = sqlx::query_scalar(
            "INSERT INTO tickets (company_id, subject) VALUES ($1, 's') RETURNING id",
        )
        .bind(company)
        .fetch_one(pool)
        .await
        .unwrap();
        actions.push(sqlx::query_scalar(
            "INSERT INTO ticket_actions (company_id, ticket_id, position, integration_id, provider, action, params) VALUES ($1, $2, 0, $3, 'PALO_ALTO', 'block_ip', '{\"ip\": \"198.51.100.1\"}') RETURNING id",
        )
        .bind(company)
        .bind(ticket)
        .bind(integration)
        .fetch_one(pool)
        .await
        .unwrap());
    }
    (company, integration, actions)
}

async fn claim(pool: &PgPool, company: Uuid, action: Uuid) -> AttemptStart {
    let ticket: Uuid = sqlx::query_scalar("SELECT ticket_id FROM ticket_actions WHERE id = $1")
        .bind(action)
        .fetch_one(pool)
        .await
        .unwrap();
    let mut tx = db::begin_tenant(pool, company).await.unwrap();
    let start = db::actions::start_attempt(
        &mut tx,
        &ActionJob {
            company_id: company,
            ticket_id: ticket,
            action_id: action,
        },
        POLICY,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    start
}

async fn action_row(pool: &PgPool, action: Uuid) -> (String, i32, Option<DateTime<Utc>>) {
    sqlx::query_as("SELECT status, attempts, next_attempt_at FROM ticket_actions WHERE id = $1")
        .bind(action)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn jobs_of(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn pushing_no_jobs_sends_no_statement_and_mismatched_ids_are_refused(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    // An aborted transaction refuses every statement until it ends: a push
    // that still answers Ok sent none.
    assert!(sqlx::query("SELECT 1 / 0").execute(&mut *tx).await.is_err());
    shared::jobs::push_action_jobs(&mut tx, &[], &[])
        .await
        .unwrap();
    let refused =
        shared::jobs::push_action_jobs(&mut tx, &["01J0000000000000000000000A".into()], &[])
            .await
            .unwrap_err();
    assert!(
        matches!(refused, db::DbError::Invalid { ref field, .. } if field == "job"),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_claim_over_max_concurrency_is_snoozed_without_using_an_attempt(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (company, _, actions) = seed(&pool, json!({"max_concurrency": 1}), 2).await;
    assert!(matches!(
        claim(&pool, company, actions[0]).await,
        AttemptStart::Run { attempt: 1, .. }
    ));
    let before = Utc::now();
    let AttemptStart::Snoozed { limit, until } = claim(&pool, company, actions[1]).await else {
        panic!("the second claim should be snoozed");
    };
    assert_eq!(limit, LimitHit::Concurrency { max: 1 });
    assert!(until > before, "{until} is in the future");
    assert_eq!(
        until.timestamp_subsec_nanos(),
        0,
        "a whole second, as apalis stores it"
    );
    let (status, attempts, next) = action_row(&pool, actions[1]).await;
    assert_eq!((status.as_str(), attempts), ("PENDING", 0));
    assert_eq!(next, Some(until));
    // The snooze's job is the action's job now, scheduled at `until`.
    let run_at: DateTime<Utc> = sqlx::query_scalar(
        "SELECT j.run_at FROM apalis.jobs j JOIN ticket_actions a ON a.job_id = j.id WHERE a.id = $1",
    )
    .bind(actions[1])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(run_at, until);
    // The first action finishing frees the slot.
    sqlx::query("UPDATE ticket_actions SET status = 'SUCCEEDED' WHERE id = $1")
        .bind(actions[0])
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(
        claim(&pool, company, actions[1]).await,
        AttemptStart::Run { attempt: 1, .. }
    ));
}

#[sqlx::test(migrations = false)]
async fn the_outcome_that_frees_a_slot_wakes_the_longest_waiting_action_at_once(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (company, _, actions) = seed(&pool, json!({"max_concurrency": 1}), 3).await;
    let AttemptStart::Run {
        action, attempt, ..
    } = claim(&pool, company, actions[0]).await
    else {
        panic!("the first claim runs");
    };
    for waiter in &actions[1..] {
        assert!(matches!(
            claim(&pool, company, *waiter).await,
            AttemptStart::Snoozed { .. }
        ));
    }
    let job_run_at = |action: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, DateTime<Utc>>(
                "SELECT j.run_at FROM apalis.jobs j JOIN ticket_actions a ON a.job_id = j.id WHERE a.id = $1",
            )
            .bind(action)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let mut tx = db::begin_tenant(&pool, company).await.unwrap();
    db::actions::record_outcome(
        &mut tx,
        &action,
        attempt,
        db::actions::Outcome::Succeeded { result: json!({}) },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // The first in line is runnable now; the second keeps its later time.
    assert!(job_run_at(actions[1]).await <= Utc::now());
    assert!(job_run_at(actions[2]).await > Utc::now());
}

#[sqlx::test(migrations = false)]
async fn a_running_row_older_than_the_stale_bound_no_longer_holds_its_slot(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (company, _, actions) = seed(&pool, json!({"max_concurrency": 1}), 2).await;
    claim(&pool, company, actions[0]).await;
    sqlx::query("UPDATE ticket_actions SET attempt_started_at = now() - interval '61 seconds' WHERE id = $1")
        .bind(actions[0])
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(
        claim(&pool, company, actions[1]).await,
        AttemptStart::Run { .. }
    ));
}

#[sqlx::test(migrations = false)]
async fn the_rate_limit_admits_n_per_sliding_second_and_tells_when_the_next_fits(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (company, integration, actions) = seed(&pool, json!({}), 3).await;
    let limits = IntegrationLimits {
        max_concurrency: None,
        rate_limit_per_sec: Some(2),
    };
    let admit = |action: Uuid| {
        let pool = pool.clone();
        async move {
            let mut tx = db::begin_tenant(&pool, company).await.unwrap();
            let admission = db::limits::admit(
                &mut tx,
                company,
                integration,
                action,
                limits,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            admission
        }
    };
    let Admission::Admitted { at: first } = admit(actions[0]).await else {
        panic!("first start refused")
    };
    assert!(matches!(
        admit(actions[1]).await,
        Admission::Admitted { .. }
    ));
    let Admission::Refused { limit, retry_at } = admit(actions[2]).await else {
        panic!("a third start within the second was admitted")
    };
    assert_eq!(limit, LimitHit::Rate { per_sec: 2 });
    assert_eq!(retry_at, first + chrono::Duration::seconds(1));
    // A second later the window has room again.
    tokio::time::sleep((retry_at - Utc::now()).to_std().unwrap_or_default()).await;
    assert!(matches!(
        admit(actions[2]).await,
        Admission::Admitted { .. }
    ));
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM integration_call_starts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(logged <= 2, "older starts are pruned: {logged} rows");
}

#[sqlx::test(migrations = false)]
async fn an_integration_without_limits_takes_no_lock_and_logs_nothing(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (company, _, actions) = seed(&pool, json!({}), 3).await;
    for action in &actions {
        assert!(matches!(
            claim(&pool, company, *action).await,
            AttemptStart::Run { .. }
        ));
    }
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM integration_call_starts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, 0);
    assert_eq!(jobs_of(&pool).await, 0, "no snooze job");
}

/// Inserts a job row of `job_type` in `status`, finished `age` ago.
async fn insert_job(pool: &PgPool, job_type: &str, status: &str, attempts: i32, age_secs: f64) {
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, done_at)
         VALUES ('\\x00'::bytea, $1, $2, $3, $4, 3, now() - make_interval(secs => $5), CASE WHEN $3 IN ('Pending', 'Queued', 'Running') THEN NULL ELSE now() - make_interval(secs => $5) END)",
    )
    // A job's id is a ULID of the time it was pushed.
    .bind(
        ulid::Ulid::from_datetime(std::time::SystemTime::now() - Duration::from_secs_f64(age_secs))
            .to_string(),
    )
    .bind(job_type)
    .bind(status)
    .bind(attempts)
    .bind(age_secs)
    .execute(pool)
    .await
    .unwrap();
}

async fn count_jobs(pool: &PgPool, filter: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM apalis.jobs WHERE {filter}"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn retention_deletes_only_old_finished_jobs_of_our_queue_in_batches(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let hour = 3600.0;
    for _ in 0..25 {
        insert_job(&pool, ACTION_QUEUE, "Done", 1, 2.0 * hour).await;
    }
    insert_job(&pool, ACTION_QUEUE, "Killed", 1, 2.0 * hour).await;
    insert_job(&pool, ACTION_QUEUE, "Failed", 3, 2.0 * hour).await; // no attempt left
    // Kept: apalis may still retry it, it is recent, unfinished, or not ours.
    insert_job(&pool, ACTION_QUEUE, "Failed", 1, 2.0 * hour).await;
    insert_job(&pool, ACTION_QUEUE, "Done", 1, 60.0).await;
    insert_job(&pool, ACTION_QUEUE, "Pending", 0, 2.0 * hour).await;
    insert_job(&pool, "someone::else", "Done", 1, 2.0 * hour).await;
    // A worker row silent for two hours with no job: deleted; a live one stays.
    sqlx::query("INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) VALUES ('dead', $1, 'pg', '', now() - interval '2 hours'), ('alive', $1, 'pg', '', now())")
        .bind(ACTION_QUEUE)
        .execute(&pool)
        .await
        .unwrap();

    let purged = purge_finished_jobs(&pool, ACTION_QUEUE, Duration::from_secs(3600), 10)
        .await
        .unwrap()
        .expect("no one else holds the lock");
    assert_eq!(purged.jobs, 27, "3 batches of 10, 10, 7");
    assert_eq!(purged.workers, 1);
    assert_eq!(count_jobs(&pool, "true").await, 4);
    assert_eq!(
        count_jobs(&pool, "job_type = 'someone::else'").await,
        1,
        "another queue's rows are not ours to delete"
    );
    let workers: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.workers ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(workers, ["alive"]);
    // Idempotent.
    let again = purge_finished_jobs(&pool, ACTION_QUEUE, Duration::from_secs(3600), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.jobs, 0);
}

#[sqlx::test(migrations = false)]
async fn a_retention_sweep_reads_no_job_created_after_the_cutoff(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    // A recent finished history, as a busy queue holds within its retention.
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, done_at)
         SELECT '\\x00'::bytea, $1 || lpad(i::text, 10, '0'), $2, 'Done', 1, 3, now(), now()
         FROM generate_series(1, 5000) AS i",
    )
    .bind(&ulid::Ulid::generate().to_string()[..16])
    .bind(ACTION_QUEUE)
    .execute(&pool)
    .await
    .unwrap();
    insert_job(&pool, ACTION_QUEUE, "Done", 1, 7200.0).await;
    sqlx::query("ANALYZE apalis.jobs")
        .execute(&pool)
        .await
        .unwrap();

    let cutoff = apalis_queue::oldest_job_id_created_at(
        std::time::SystemTime::now() - Duration::from_secs(3600),
    );
    let mut tx = pool.begin().await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
        apalis_queue::PURGE_FINISHED_JOBS_BATCH
    )))
    .bind(ACTION_QUEUE)
    .bind(3600.0_f64)
    .bind(100_i64)
    .bind(&cutoff)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let plan = plan.join("\n");
    tx.rollback().await.unwrap();
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("Index Cond: (id < "), "{plan}");
    assert!(!plan.contains("Rows Removed by Filter"), "{plan}");

    let purged = purge_finished_jobs(&pool, ACTION_QUEUE, Duration::from_secs(3600), 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        purged.jobs, 1,
        "the one old job, and none of the recent ones"
    );
    assert_eq!(count_jobs(&pool, "true").await, 5000);
}

#[sqlx::test(migrations = false)]
async fn retention_skips_while_another_process_sweeps(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    insert_job(&pool, ACTION_QUEUE, "Done", 1, 7200.0).await;
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(RETENTION_LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    let skipped = purge_finished_jobs(&pool, ACTION_QUEUE, Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(skipped, None);
    assert_eq!(count_jobs(&pool, "true").await, 1);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RETENTION_LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    let swept = purge_finished_jobs(&pool, ACTION_QUEUE, Duration::from_secs(60), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(swept.jobs, 1);
}

#[sqlx::test(migrations = false)]
async fn queue_stats_count_ready_scheduled_and_running_jobs_and_the_oldest_wait(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    insert_job(&pool, ACTION_QUEUE, "Pending", 0, 30.0).await;
    insert_job(&pool, ACTION_QUEUE, "Pending", 0, 5.0).await;
    insert_job(&pool, ACTION_QUEUE, "Failed", 1, 10.0).await; // apalis retries it
    insert_job(&pool, ACTION_QUEUE, "Done", 1, 100.0).await;
    insert_job(&pool, "someone::else", "Pending", 0, 500.0).await;
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, run_at) VALUES ('\\x00'::bytea, 'future', $1, 'Pending', now() + interval '1 minute')",
    )
    .bind(ACTION_QUEUE)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO apalis.workers (id, worker_type, storage_name, layers) VALUES ('w', $1, 'pg', '')")
        .bind(ACTION_QUEUE)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, lock_by) VALUES ('\\x00'::bytea, 'running', $1, 'Running', 'w')",
    )
    .bind(ACTION_QUEUE)
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let stats = queue_stats(&mut conn, ACTION_QUEUE).await.unwrap();
    assert_eq!((stats.ready, stats.scheduled, stats.running), (3, 1, 1));
    assert!(
        (29.0..40.0).contains(&stats.oldest_ready_age_secs),
        "{}",
        stats.oldest_ready_age_secs
    );
}

#[sqlx::test(migrations = false)]
async fn the_backlog_counts_the_companys_pending_and_running_actions_up_to_the_cap(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (company, _, actions) = seed(&pool, json!({}), 4).await;
    let (other, _, _) = {
        sqlx::query("UPDATE companies SET name = 'Acme 1' WHERE id = $1")
            .bind(company)
            .execute(&pool)
            .await
            .unwrap();
        seed(&pool, json!({}), 3).await
    };
    for (action, status) in [(actions[0], "RUNNING"), (actions[1], "SUCCEEDED")] {
        sqlx::query("UPDATE ticket_actions SET status = $2 WHERE id = $1")
            .bind(action)
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    let backlogs = db::actions::company_backlogs(&mut conn, &[company, other, company])
        .await
        .unwrap();
    assert_eq!(backlogs.len(), 2);
    assert_eq!(backlogs[&company], 3, "2 PENDING + 1 RUNNING");
    assert_eq!(backlogs[&other], 3);

    // Above the cap every backlog reads as the cap, RUNNING ones included.
    let cap = db::actions::BACKLOG_CAP;
    sqlx::query(
        "INSERT INTO ticket_actions (company_id, ticket_id, position, provider, action, status)
         SELECT company_id, ticket_id, g, 'PALO_ALTO', 'block_ip', CASE WHEN g % 2 = 0 THEN 'PENDING' ELSE 'RUNNING' END
         FROM ticket_actions, generate_series(1, $2::int) AS g WHERE id = $1",
    )
    .bind(actions[2])
    .bind(i32::try_from(cap).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        db::actions::company_backlog(&mut conn, company)
            .await
            .unwrap(),
        cap
    );
}

#[sqlx::test(migrations = false)]
async fn tickets_actions_and_audit_rows_get_time_ordered_version_7_ids(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (company, _, actions) = seed(&pool, json!({}), 3).await;
    sqlx::query(
        "INSERT INTO audit_logs (company_id, action, entity_type) VALUES ($1, 'test', 'ticket')",
    )
    .bind(company)
    .execute(&pool)
    .await
    .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "(SELECT id FROM tickets ORDER BY created_at)
         UNION ALL (SELECT id FROM ticket_actions WHERE id = ANY($1))
         UNION ALL (SELECT id FROM audit_logs)",
    )
    .bind(&actions)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), 7);
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap();
    let mut last_ms = 0;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(id.get_version_num(), 7, "{id}");
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(
            now_ms.abs_diff(ms) < 60_000,
            "{id} carries the time of its insert"
        );
        if i < 3 {
            assert!(ms >= last_ms, "tickets inserted later carry later times");
            last_ms = ms;
        }
    }
}

/// Registers worker `id` of the action queue, which fetches lock jobs for.
async fn register_worker(pool: &PgPool, id: &str) {
    sqlx::query("INSERT INTO apalis.workers (id, worker_type, storage_name, layers) VALUES ($1, $2, 'pg', '')")
        .bind(id)
        .bind(ACTION_QUEUE)
        .execute(pool)
        .await
        .unwrap();
}

/// A running job of the action queue held by worker `lock_by`; answers its
/// id, a ULID as apalis gives them.
async fn running_job(pool: &PgPool, lock_by: &str) -> String {
    let id = ulid::Ulid::generate().to_string();
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, lock_by, lock_at)
         VALUES ('\\x00'::bytea, $1, $2, 'Running', $3, now())",
    )
    .bind(&id)
    .bind(ACTION_QUEUE)
    .bind(lock_by)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[sqlx::test(migrations = false)]
async fn the_fetch_takes_due_jobs_of_its_queue_by_priority_then_age_and_locks_them(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    register_worker(&pool, "w").await;
    for (id, job_type, status, priority, run_at) in [
        ("old-low", ACTION_QUEUE, "Pending", 1, "-30 seconds"),
        ("new-high", ACTION_QUEUE, "Pending", 5, "-1 second"),
        ("old-high", ACTION_QUEUE, "Pending", 5, "-20 seconds"),
        ("future", ACTION_QUEUE, "Pending", 9, "1 minute"),
        ("other-queue", "someone::else", "Pending", 9, "-60 seconds"),
        ("done", ACTION_QUEUE, "Done", 9, "-60 seconds"),
    ] {
        sqlx::query(
            "INSERT INTO apalis.jobs (job, id, job_type, status, priority, run_at) VALUES ('\\x00'::bytea, $1, $2, $3, $4, now() + $5::interval)",
        )
        .bind(id)
        .bind(job_type)
        .bind(status)
        .bind(priority)
        .bind(run_at)
        .execute(&pool)
        .await
        .unwrap();
    }
    // The fetch is called many times on one connection: the plan PL/pgSQL
    // keeps must keep answering right.
    let mut conn = pool.acquire().await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..8 {
        // Which jobs a fetch takes is the contract; the order it returns
        // them in is not.
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM apalis.get_jobs('w', $1, 2) ORDER BY id")
                .bind(ACTION_QUEUE)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        taken.push(ids);
    }
    assert_eq!(taken[0], ["new-high", "old-high"]);
    assert_eq!(taken[1], ["old-low"]);
    assert!(taken[2..].iter().all(Vec::is_empty), "{taken:?}");
    let locked: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, lock_by FROM apalis.jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (id, status, lock_by) in locked {
        let fetched = ["old-high", "new-high", "old-low"].contains(&id.as_str());
        assert_eq!(status == "Queued", fetched, "{id}: {status}");
        assert_eq!(lock_by.as_deref() == Some("w"), fetched, "{id}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_fetch_reads_due_jobs_only_whatever_is_scheduled_for_later(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    register_worker(&pool, "w").await;
    // The fetch keeps its plans: make them on an empty table, as a worker
    // that starts on an idle queue does, then grow the table under them.
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..10 {
        let none: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.get_jobs('w', $1, 10)")
            .bind(ACTION_QUEUE)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert!(none.is_empty());
    }
    // 20,000 jobs scheduled for tomorrow at each of priorities 7 and 0, and
    // a few due ones between and among them.
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, priority, run_at)
         SELECT '\\x00'::bytea, 'later-' || p || '-' || n, $1, 'Pending', p,
                now() + interval '1 day' + n * interval '1 millisecond'
         FROM unnest(ARRAY[7, 0]) AS p, generate_series(1, 20000) AS n",
    )
    .bind(ACTION_QUEUE)
    .execute(&pool)
    .await
    .unwrap();
    for (id, status, attempts, priority, run_at) in [
        ("p3-retry", "Failed", 1, 3, "-5 seconds"),
        ("p3-exhausted", "Failed", 25, 3, "-50 seconds"),
        ("p0-old", "Pending", 0, 0, "-30 seconds"),
        ("p0-mid", "Pending", 0, 0, "-20 seconds"),
        ("p0-new", "Pending", 0, 0, "-10 seconds"),
    ] {
        sqlx::query(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, priority, run_at)
             VALUES ('\\x00'::bytea, $1, $2, $3, $4, 25, $5, now() + $6::interval)",
        )
        .bind(id)
        .bind(ACTION_QUEUE)
        .bind(status)
        .bind(attempts)
        .bind(priority)
        .bind(run_at)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE apalis.jobs")
        .execute(&pool)
        .await
        .unwrap();
    // Pages of the fetch's index this backend has read so far.
    let pages =
        "SELECT pg_stat_get_xact_blocks_fetched('apalis.idx_apalis_jobs_fetch_partial'::regclass)";
    let mut fetched = Vec::new();
    for count in [2, 10, 10] {
        let mut tx = conn.begin().await.unwrap();
        let before: i64 = sqlx::query_scalar(pages).fetch_one(&mut *tx).await.unwrap();
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM apalis.get_jobs('w', $1, $2) ORDER BY id")
                .bind(ACTION_QUEUE)
                .bind(count)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        let after: i64 = sqlx::query_scalar(pages).fetch_one(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        // One scan ordered by (priority, run_at) read every scheduled job
        // of each priority it crossed: 40,000 entries, over 200 pages.
        assert!(
            after - before <= 30,
            "a fetch of {count} read {} pages of the fetch index",
            after - before
        );
        fetched.push(ids);
    }
    assert_eq!(fetched[0], ["p0-old", "p3-retry"]);
    assert_eq!(fetched[1], ["p0-mid", "p0-new"]);
    assert!(fetched[2].is_empty(), "{fetched:?}");
}

#[sqlx::test(migrations = false)]
async fn only_jobs_with_an_idempotency_key_enter_its_index_and_duplicates_are_refused(
    pool: PgPool,
) {
    db::migrate(&pool).await.unwrap();
    let index_pages = "SELECT pg_relation_size('apalis.idx_jobs_idempotency_key') / current_setting('block_size')::bigint";
    let empty: i64 = sqlx::query_scalar(index_pages)
        .fetch_one(&pool)
        .await
        .unwrap();
    // 2,000 jobs without a key, fetched and finished: three versions of
    // each row. An index over every job held 6,000 entries (dozens of
    // pages); this one holds none of them.
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, run_at)
         SELECT '\\x00'::bytea, 'unkeyed-' || n, $1, 'Pending', now() - interval '1 minute'
         FROM generate_series(1, 2000) AS n",
    )
    .bind(ACTION_QUEUE)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Queued'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let after: i64 = sqlx::query_scalar(index_pages)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, empty, "unkeyed jobs grew the idempotency index");

    let keyed = |id: &'static str, job_type: &'static str| {
        sqlx::query(
            "INSERT INTO apalis.jobs (job, id, job_type, idempotency_key) VALUES ('\\x00'::bytea, $1, $2, 'once')",
        )
        .bind(id)
        .bind(job_type)
    };
    keyed("first", ACTION_QUEUE).execute(&pool).await.unwrap();
    let err = keyed("again", ACTION_QUEUE)
        .execute(&pool)
        .await
        .expect_err("a second job with the same key in the same queue");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23505"),
        "{err}"
    );
    // The same key in another queue is another job.
    keyed("elsewhere", "someone::else")
        .execute(&pool)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_pushed_action_job_is_the_row_apalis_writes(pool: PgPool) {
    use apalis::prelude::{TaskBuilder, TaskId};
    use shared::jobs::{
        ActionEnqueue, QUEUE_MAX_ATTEMPTS, fair_priority, new_job_id, queue_run_at,
    };

    db::migrate(&pool).await.unwrap();
    let later = Utc::now() + chrono::Duration::milliseconds(90_500);
    // Each job twice: one pushed by apalis-postgres's own insert, as this
    // code did before, its twin by ours.
    let mut twins = Vec::new();
    for (backlog, run_at) in [(0, None), (250, Some(later))] {
        let item = ActionEnqueue {
            job: ActionJob {
                company_id: Uuid::now_v7(),
                ticket_id: Uuid::now_v7(),
                action_id: Uuid::now_v7(),
            },
            run_at,
            backlog,
        };
        let (theirs, ours) = (new_job_id(), new_job_id());
        let mut builder = TaskBuilder::new(serde_json::to_vec(&item.job).unwrap())
            .task_id(TaskId::from_string(theirs.clone()))
            .max_attempts(QUEUE_MAX_ATTEMPTS)
            .priority(fair_priority(item.backlog));
        if let Some(at) = run_at {
            builder =
                builder.run_at_timestamp(u64::try_from(queue_run_at(at).timestamp()).unwrap());
        }
        let mut conn = pool.acquire().await.unwrap();
        apalis_postgres::queries::push_tasks(&mut *conn, ACTION_QUEUE, vec![builder.build()])
            .await
            .unwrap();
        shared::jobs::push_action_jobs(&mut conn, std::slice::from_ref(&ours), &[item])
            .await
            .unwrap();
        twins.push((theirs, ours, run_at));
    }

    let row = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, Vec<u8>, String, i32, i32, i32, String, Option<String>, Option<String>, Option<DateTime<Utc>>, DateTime<Utc>)>(
                "SELECT job_type, job, status, attempts, max_attempts, priority, metadata::text, idempotency_key, lock_by, done_at, run_at FROM apalis.jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for (theirs, ours, run_at) in twins {
        let (mut apalis_row, mut our_row) = (row(theirs).await, row(ours).await);
        let (apalis_at, our_at) = (apalis_row.10, our_row.10);
        match run_at {
            // apalis writes the client's clock in whole seconds; ours the
            // transaction's: both due at once.
            None => {
                assert!(apalis_at <= Utc::now() && our_at <= Utc::now());
                assert!((our_at - apalis_at).num_milliseconds().abs() < 2_000);
            }
            Some(at) => {
                assert_eq!(
                    our_at, apalis_at,
                    "a scheduled job runs at its time rounded up"
                );
                assert_eq!(our_at, queue_run_at(at));
            }
        }
        (apalis_row.10, our_row.10) = (our_at, our_at);
        assert_eq!(our_row, apalis_row);
    }
}

#[sqlx::test(migrations = false)]
async fn an_ack_writes_the_row_apalis_writes_and_only_for_the_worker_holding_the_job(pool: PgPool) {
    use std::str::FromStr;

    use apalis::prelude::{Status, TaskId};
    use apalis_postgres::queries::{ResultPayload, handle_results};

    db::migrate(&pool).await.unwrap();
    register_worker(&pool, "w").await;
    register_worker(&pool, "other").await;
    let outcomes = [
        (Status::Done, 1, Ok(json!({"executed": true}))),
        (Status::Failed, 2, Err("provider said no".to_string())),
        (Status::Killed, 25, Err("gave up".to_string())),
    ];
    // Each outcome twice: one job acked by apalis-postgres's own query, its
    // twin by ours.
    let mut pairs = Vec::new();
    for (status, attempt, result) in outcomes {
        let mut twins = Vec::new();
        for _ in 0..2 {
            let id = running_job(&pool, "w").await;
            twins.push(ResultPayload {
                task_id: TaskId::from_str(&id).unwrap(),
                attempt,
                status: status.clone(),
                result: result.clone(),
            });
        }
        pairs.push(twins);
    }
    // A job the worker no longer holds: rescued and taken by another one.
    let rescued = running_job(&pool, "other").await;

    let theirs: Vec<&ResultPayload> = pairs.iter().map(|t| &t[0]).collect();
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(handle_results(&mut *conn, &theirs, "w").await.unwrap(), 3);
    let mut ours: Vec<apalis_queue::JobEnd> = pairs
        .iter()
        .map(|t| apalis_queue::JobEnd::of(&t[1]).unwrap())
        .collect();
    ours.push(apalis_queue::JobEnd {
        id: rescued.clone(),
        attempt: 1,
        status: "Done".into(),
        result: json!({"Ok": null}),
    });
    assert_eq!(
        apalis_queue::finish_jobs(&mut conn, &ours, "w")
            .await
            .unwrap(),
        3,
        "the rescued job is not this worker's to finish"
    );

    let row = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i32, Option<serde_json::Value>, bool)>(
                "SELECT status, attempts, last_result, done_at IS NOT NULL FROM apalis.jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for twins in &pairs {
        let apalis_row = row(twins[0].task_id.to_string()).await;
        let our_row = row(twins[1].task_id.to_string()).await;
        assert_eq!(our_row, apalis_row);
        assert_eq!(our_row.0, format!("{:?}", twins[1].status));
        assert!(our_row.3, "done_at is set");
    }
    assert_eq!(
        row(pairs[1][1].task_id.to_string()).await.2,
        Some(json!({"Err": "provider said no"}))
    );
    assert_eq!(
        row(rescued).await,
        ("Running".to_string(), 0, None, false),
        "untouched"
    );
}

#[sqlx::test(migrations = false)]
async fn job_ends_are_found_by_primary_key_with_plans_kept_from_before_the_table_grew(
    pool: PgPool,
) {
    db::migrate(&pool).await.unwrap();
    register_worker(&pool, "w").await;
    // An analyse would make PostgreSQL plan the statement again; this test
    // is about a plan that outlives the table's growth.
    sqlx::query("ALTER TABLE apalis.jobs SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    let end = |id: String| apalis_queue::JobEnd {
        id,
        attempt: 1,
        status: "Done".into(),
        result: json!({"Ok": null}),
    };
    // One connection, as a worker's outcome batches reuse theirs. Its first
    // job ends are written while the table holds a few rows, in
    // transactions planned by key as the worker's are (`Plans::Keyed`): the
    // plan is made then and kept. With PostgreSQL's own choice (`Reused`)
    // the kept plan read the whole table once it had grown.
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..8 {
        let id = running_job(&pool, "w").await;
        let mut tx = conn.begin().await.unwrap();
        db::plan(&mut tx, db::Plans::Keyed).await.unwrap();
        assert_eq!(
            apalis_queue::finish_jobs(&mut tx, &[end(id)], "w")
                .await
                .unwrap(),
            1
        );
        tx.commit().await.unwrap();
    }
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, lock_by, done_at)
         SELECT '\\x00'::bytea, 'history-' || g, $1, 'Done', 1, 'w', now()
         FROM generate_series(1, 20000) g",
    )
    .bind(ACTION_QUEUE)
    .execute(&pool)
    .await
    .unwrap();

    let id = running_job(&pool, "w").await;
    let mut tx = conn.begin().await.unwrap();
    db::plan(&mut tx, db::Plans::Keyed).await.unwrap();
    // The backend's reads of the table not yet reported, before and after.
    let reads = "SELECT seq_scan, seq_tup_read, idx_scan FROM pg_stat_xact_user_tables
                 WHERE schemaname = 'apalis' AND relname = 'jobs'";
    let before: (i64, i64, i64) = sqlx::query_as(reads).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(
        apalis_queue::finish_jobs(&mut tx, &[end(id)], "w")
            .await
            .unwrap(),
        1
    );
    let after: (i64, i64, i64) = sqlx::query_as(reads).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "the job's row is found by its key, not by reading the 20,000 others"
    );
    assert_eq!(after.2 - before.2, 1, "one index scan");
}

/// apalis-postgres's own insert (the connection tests' jobs go through it)
/// dates a job by the client's clock in whole seconds; the action jobs'
/// insert by the transaction's `now()`, due at once by construction.
#[sqlx::test(migrations = false)]
async fn a_job_inserted_after_its_transaction_crossed_a_second_still_notifies_the_workers(
    pool: PgPool,
) {
    use shared::jobs::{CHECK_QUEUE, CheckJob, enqueue_check};

    db::migrate(&pool).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("apalis::job::insert").await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let began: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // The job's run_at is the client's clock in whole seconds: wait for the
    // next second, so that it comes after the transaction's start.
    while Utc::now().timestamp() <= began.timestamp() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let job = CheckJob {
        company_id: Uuid::now_v7(),
        check_id: Uuid::now_v7(),
    };
    enqueue_check(&mut tx, &job).await.unwrap();
    let (id, run_at): (String, DateTime<Utc>) =
        sqlx::query_as("SELECT id, run_at FROM apalis.jobs WHERE job_type = $1")
            .bind(CHECK_QUEUE)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert!(
        run_at > began,
        "the case under test: run_at {run_at} after the transaction's start {began}"
    );
    tx.commit().await.unwrap();

    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the new job's notification")
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(notification.payload()).unwrap();
    assert_eq!(payload["id"], id.as_str());
    assert_eq!(payload["job_type"], CHECK_QUEUE);
}
