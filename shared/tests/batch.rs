//! The worker's group commit against a real Postgres: one transaction
//! claims, and one records, the attempts of many jobs of several companies,
//! with the same rules as the one-by-one path (fencing, chaining, the derived
//! ticket status, audit rows), and leaves every case it does not handle to it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test on setup errors"
)]

use serde_json::json;
use shared::{
    db::{
        self,
        actions::{AttemptOutcome, Outcome, Recorded},
    },
    domain::TicketStatus,
    jobs::ActionJob,
};
use sqlx::PgPool;
use uuid::Uuid;

/// A company with one integration (`settings`); returns (company, integration).
async fn company(pool: &PgPool, name: &str, settings: serde_json::Value) -> (Uuid, Uuid) {
    let company: Uuid = sqlx::query_scalar("INSERT INTO companies (name) VALUES ($1) RETURNING id")
        .bind(name)
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
    (company, integration)
}

/// A ticket with `n` actions on `integration`; returns its jobs in position order.
async fn ticket(pool: &PgPool, company: Uuid, integration: Uuid, n: usize) -> Vec<ActionJob> {
    let ticket: Uuid = sqlx::query_scalar(
        "INSERT INTO tickets (company_id, subject) VALUES ($1, 's') RETURNING id",
    )
    .bind(company)
    .fetch_one(pool)
    .await
    .unwrap();
    let mut jobs = Vec::new();
    for position in 0..n {
        let action_id: Uuid = sqlx::query_scalar(
            "INSERT INTO ticket_actions (company_id, ticket_id, position, integration_id, provider, action, params) VALUES ($1, $2, $3, $4, 'PALO_ALTO', 'block_ip', '{\"ip\": \"198.51.100.1\"}') RETURNING id",
        )
        .bind(company)
        .bind(ticket)
        .bind(i32::try_from(position).unwrap())
        .bind(integration)
        .fetch_one(pool)
        .await
        .unwrap();
        jobs.push(ActionJob {
            company_id: company,
            ticket_id: ticket,
            action_id,
        });
    }
    jobs
}

async fn claim_batch(
    pool: &PgPool,
    jobs: &[ActionJob],
) -> std::collections::HashMap<Uuid, db::actions::Claimed> {
    let mut companies: Vec<Uuid> = jobs.iter().map(|j| j.company_id).collect();
    companies.sort();
    companies.dedup();
    let mut tx = db::begin_tenants(pool, &companies, db::Plans::Keyed)
        .await
        .unwrap();
    let claimed = db::actions::claim_batch(&mut tx, jobs).await.unwrap();
    tx.commit().await.unwrap();
    claimed
}

async fn status_of(pool: &PgPool, table: &str, id: Uuid) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT status FROM {table} WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn audit_count(pool: &PgPool, action: &str, entity: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = $1 AND entity_id = $2")
        .bind(action)
        .bind(entity)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn one_batch_claims_the_plain_cases_of_several_companies_and_leaves_the_rest(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    let (b, b_fw) = company(&pool, "bravo", json!({"rate_limit_per_sec": 0})).await;
    let (_, limited) = company(&pool, "charlie", json!({"max_concurrency": 2})).await;
    let plain_a = ticket(&pool, a, a_fw, 1).await.remove(0);
    let plain_b = ticket(&pool, b, b_fw, 1).await.remove(0);
    let limited_job = {
        let c: Uuid = sqlx::query_scalar("SELECT company_id FROM integrations WHERE id = $1")
            .bind(limited)
            .fetch_one(&pool)
            .await
            .unwrap();
        ticket(&pool, c, limited, 1).await.remove(0)
    };
    let closed = ticket(&pool, a, a_fw, 1).await.remove(0);
    sqlx::query("UPDATE tickets SET status = 'DERIVED' WHERE id = $1")
        .bind(closed.ticket_id)
        .execute(&pool)
        .await
        .unwrap();
    let crashed = ticket(&pool, a, a_fw, 1).await.remove(0);
    sqlx::query("UPDATE ticket_actions SET status = 'RUNNING', attempts = 1 WHERE id = $1")
        .bind(crashed.action_id)
        .execute(&pool)
        .await
        .unwrap();
    // A job naming the wrong company claims nothing.
    let mismatched = ActionJob {
        company_id: b,
        ..ticket(&pool, a, a_fw, 1).await.remove(0)
    };

    let jobs = vec![
        plain_a.clone(),
        plain_b.clone(),
        limited_job.clone(),
        closed.clone(),
        crashed.clone(),
        mismatched.clone(),
    ];
    let claimed = claim_batch(&pool, &jobs).await;
    let mut ids: Vec<Uuid> = claimed.keys().copied().collect();
    ids.sort();
    let mut expected = vec![plain_a.action_id, plain_b.action_id];
    expected.sort();
    assert_eq!(ids, expected, "only the plain cases are claimed");
    let first = &claimed[&plain_a.action_id];
    assert_eq!(first.attempt, 1);
    assert_eq!(first.action.attempts, 1);
    assert_eq!(first.integration.as_ref().map(|i| i.id), Some(a_fw));
    assert_eq!(
        status_of(&pool, "ticket_actions", plain_b.action_id).await,
        "RUNNING"
    );
    for (job, status) in [
        (&limited_job, "PENDING"),
        (&closed, "PENDING"),
        (&crashed, "RUNNING"),
        (&mismatched, "PENDING"),
    ] {
        assert_eq!(
            status_of(&pool, "ticket_actions", job.action_id).await,
            status,
            "left for the one-by-one path untouched"
        );
    }
    // Claimed once: a second batch with the same jobs claims nothing.
    assert!(claim_batch(&pool, &jobs).await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn one_batch_records_outcomes_like_the_one_by_one_path(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    let (b, b_fw) = company(&pool, "bravo", json!({})).await;
    let single = ticket(&pool, a, a_fw, 1).await.remove(0);
    let chained = ticket(&pool, b, b_fw, 2).await;
    let failing = ticket(&pool, a, a_fw, 2).await;
    let fenced = ticket(&pool, b, b_fw, 1).await.remove(0);
    let claimed = claim_batch(
        &pool,
        &[
            single.clone(),
            chained[0].clone(),
            failing[0].clone(),
            fenced.clone(),
        ],
    )
    .await;
    assert_eq!(claimed.len(), 4);
    let item = |job: &ActionJob, attempt_shift: i32, outcome: Outcome| {
        let claim = &claimed[&job.action_id];
        AttemptOutcome {
            action: claim.action.clone(),
            attempt: claim.attempt + attempt_shift,
            outcome,
        }
    };
    let ok = || Outcome::Succeeded {
        result: json!({"tagged": true, "note": "nul\u{0}byte"}),
    };
    let items = vec![
        item(&single, 0, ok()),
        item(&chained[0], 0, ok()),
        item(
            &failing[0],
            0,
            Outcome::Failed {
                error: "PAN-OS refused the tag".into(),
            },
        ),
        // Another worker owns attempt 1 now: this outcome must not land.
        item(&fenced, 1, ok()),
    ];
    let mut tx = db::begin_tenants(&pool, &[a, b], db::Plans::Keyed)
        .await
        .unwrap();
    let recorded = db::actions::record_batch(&mut tx, &items).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        recorded,
        vec![
            Recorded::Written(TicketStatus::Executed),
            Recorded::Written(TicketStatus::Pending),
            Recorded::Written(TicketStatus::Failed),
            Recorded::Fenced,
        ]
    );

    // One action, succeeded: the ticket is EXECUTED with its time and audit rows.
    assert_eq!(
        status_of(&pool, "ticket_actions", single.action_id).await,
        "SUCCEEDED"
    );
    assert_eq!(
        status_of(&pool, "tickets", single.ticket_id).await,
        "EXECUTED"
    );
    let (executed_at, result): (Option<chrono::DateTime<chrono::Utc>>, serde_json::Value) =
        sqlx::query_as("SELECT t.executed_at, a.result FROM tickets t JOIN ticket_actions a ON a.ticket_id = t.id WHERE a.id = $1")
            .bind(single.action_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(executed_at.is_some());
    assert_eq!(result, json!({"tagged": true, "note": "nul\u{FFFD}byte"}));
    assert_eq!(
        audit_count(&pool, "action.succeeded", single.action_id).await,
        1
    );
    assert_eq!(
        audit_count(&pool, "ticket.status_changed", single.ticket_id).await,
        1
    );

    // Two actions: the first succeeded, the second now has its job; the ticket waits.
    assert_eq!(
        status_of(&pool, "tickets", chained[0].ticket_id).await,
        "PENDING"
    );
    let next_job: Option<String> =
        sqlx::query_scalar("SELECT a.job_id FROM ticket_actions a JOIN apalis.jobs j ON j.id = a.job_id WHERE a.id = $1 AND j.status = 'Pending'")
            .bind(chained[1].action_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert!(next_job.is_some(), "the next action was enqueued");
    assert_eq!(
        audit_count(&pool, "ticket.status_changed", chained[0].ticket_id).await,
        0
    );

    // Failed: the rest of its ticket is cancelled, the ticket FAILED.
    assert_eq!(
        status_of(&pool, "ticket_actions", failing[1].action_id).await,
        "CANCELLED"
    );
    assert_eq!(
        status_of(&pool, "tickets", failing[0].ticket_id).await,
        "FAILED"
    );

    // Fenced: still RUNNING under attempt 1, nothing audited.
    assert_eq!(
        status_of(&pool, "ticket_actions", fenced.action_id).await,
        "RUNNING"
    );
    assert_eq!(
        audit_count(&pool, "action.succeeded", fenced.action_id).await,
        0
    );
    assert_eq!(
        status_of(&pool, "tickets", fenced.ticket_id).await,
        "PENDING"
    );
}

#[sqlx::test(migrations = false)]
async fn over_a_large_finished_history_a_batch_reaches_its_rows_by_key(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    // 20,000 finished tickets, analysed: the statistics say nothing is
    // PENDING, so an index on status looks like the cheapest way to any
    // PENDING row. The batch must use the keys it has all the same.
    seed_one_action_tickets(&pool, a, a_fw, 20_000, "EXECUTED", "SUCCEEDED").await;
    sqlx::query("ANALYZE tickets, ticket_actions")
        .execute(&pool)
        .await
        .unwrap();
    // Then a queue of live work that the statistics have not seen (one
    // action a ticket: the outcome looks for a next action and finds none,
    // so no follow-up is enqueued and the backlog count, which does read the
    // status index, does not run).
    claim_and_record_live_work_by_key(&pool, a, a_fw).await;
}

#[sqlx::test(migrations = false)]
async fn behind_a_backlog_no_statistics_have_seen_a_batch_reaches_its_rows_by_key(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    // A backlog no statistics have seen yet (as at the start of a busy
    // run, before autovacuum's first analyse): thousands of the company's
    // actions in flight. Without statistics an equality on the company
    // looks selective, and it is not; the batch must reach its rows by
    // their keys.
    seed_one_action_tickets(&pool, a, a_fw, 5_000, "PENDING", "RUNNING").await;
    claim_and_record_live_work_by_key(&pool, a, a_fw).await;
}

#[sqlx::test(migrations = false)]
async fn without_statistics_a_large_batch_reads_its_tickets_actions_by_key(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    // 20,000 actions no analyse has seen: an equality on `ticket_id`, which
    // no unique index covers alone, is then estimated at 0.5 % of the table
    // per value, and for 200 tickets a scan of the whole table looked
    // cheaper than reaching each ticket's actions by its key.
    seed_one_action_tickets(&pool, a, a_fw, 20_000, "PENDING", "PENDING").await;
    let tickets: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT company_id, id FROM tickets ORDER BY id DESC LIMIT 200")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut tx = db::begin_tenants(&pool, &[a], db::Plans::PerExecution)
        .await
        .unwrap();
    // The backend's sequential scans of the table not yet reported
    // (earlier statements on this connection count too).
    let seq_scans = "SELECT pg_stat_get_xact_numscans('ticket_actions'::regclass)";
    let before: i64 = sqlx::query_scalar(seq_scans)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let statuses = db::actions::settle_tickets(&mut tx, &tickets)
        .await
        .unwrap();
    assert_eq!(statuses.len(), 200);
    let after: i64 = sqlx::query_scalar(seq_scans)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(after - before, 0, "ticket_actions was read in full");
    tx.rollback().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn with_a_finished_history_analysed_a_backlog_count_reads_its_own_company_only(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    let (b, b_fw) = company(&pool, "beta", json!({})).await;
    // A long finished history, analysed: the statistics say almost nothing
    // is PENDING. Then another company queues 5,000 actions no analyse has
    // seen, and this one 10.
    seed_one_action_tickets(&pool, a, a_fw, 10_000, "EXECUTED", "SUCCEEDED").await;
    seed_one_action_tickets(&pool, b, b_fw, 10_000, "EXECUTED", "SUCCEEDED").await;
    sqlx::query("ANALYZE tickets, ticket_actions")
        .execute(&pool)
        .await
        .unwrap();
    seed_one_action_tickets(&pool, b, b_fw, 5_000, "PENDING", "PENDING").await;
    seed_one_action_tickets(&pool, a, a_fw, 10, "PENDING", "PENDING").await;
    let mut tx = db::begin_tenants(&pool, &[a], db::Plans::PerExecution)
        .await
        .unwrap();
    // Index entries of ticket_actions read by this backend so far.
    let read = "SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid))::bigint
                FROM pg_index WHERE indrelid = 'ticket_actions'::regclass";
    let before: i64 = sqlx::query_scalar(read).fetch_one(&mut *tx).await.unwrap();
    let backlogs = db::actions::company_backlogs(&mut tx, &[a]).await.unwrap();
    let after: i64 = sqlx::query_scalar(read).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(backlogs.get(&a), Some(&10));
    // With the partial index of live actions (keyed by integration) the
    // count read every company's queued actions to find its own: 5,010.
    assert!(
        after - before <= 50,
        "counting 10 queued actions read {} index entries",
        after - before
    );
    // A backlog above the cap stops at the cap.
    let mut tx = db::begin_tenants(&pool, &[b], db::Plans::PerExecution)
        .await
        .unwrap();
    let before: i64 = sqlx::query_scalar(read).fetch_one(&mut *tx).await.unwrap();
    let backlogs = db::actions::company_backlogs(&mut tx, &[b]).await.unwrap();
    let after: i64 = sqlx::query_scalar(read).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(backlogs.get(&b), Some(&db::actions::BACKLOG_CAP));
    assert!(
        after - before <= db::actions::BACKLOG_CAP + 50,
        "counting up to {} of 5,000 queued actions read {} index entries",
        db::actions::BACKLOG_CAP,
        after - before
    );
}

#[sqlx::test(migrations = false)]
async fn a_claim_reads_each_action_of_its_batch_a_bounded_number_of_times(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    // A busy queue, analysed: the planner knows the table is large.
    seed_one_action_tickets(&pool, a, a_fw, 5_000, "PENDING", "RUNNING").await;
    sqlx::query("ANALYZE tickets, ticket_actions")
        .execute(&pool)
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for _ in 0..64 {
        jobs.extend(ticket(&pool, a, a_fw, 1).await);
    }
    let mut tx = db::begin_tenants(&pool, &[a], db::Plans::Keyed)
        .await
        .unwrap();
    sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
        .execute(&mut *tx)
        .await
        .unwrap();
    let read = "SELECT pg_stat_get_xact_tuples_returned('ticket_actions_pkey'::regclass)";
    let before: i64 = sqlx::query_scalar(read).fetch_one(&mut *tx).await.unwrap();
    let claimed = db::actions::claim_batch(&mut tx, &jobs).await.unwrap();
    let after: i64 = sqlx::query_scalar(read).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(claimed.len(), 64);
    // Each action is reached by its key to lock it, and again to update it;
    // a plan that reads the whole batch per action reads 64 x 64.
    assert!(
        after - before <= 3 * 64,
        "the claim of 64 actions read {} entries of the primary key",
        after - before
    );
}

#[sqlx::test(migrations = false)]
async fn a_ticket_derived_while_its_action_is_being_claimed_waits_for_the_claim(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    let jobs = ticket(&pool, a, a_fw, 2).await;
    // The claim of the first action is made and not yet committed.
    let mut claim = db::begin_tenants(&pool, &[a], db::Plans::Keyed)
        .await
        .unwrap();
    let claimed = db::actions::claim_batch(&mut claim, &jobs[..1])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // An ADMIN derives the ticket meanwhile: it must wait for the claim
    // (the claim reads the ticket without locking it; the action lock is
    // what orders the two).
    let derive = tokio::spawn({
        let pool = pool.clone();
        let ticket_id = jobs[0].ticket_id;
        async move {
            let mut tx = db::begin_tenant(&pool, a).await.unwrap();
            let derived = db::tickets::derive_ticket(&mut tx, a, ticket_id, "by hand")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            derived.is_some()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!derive.is_finished(), "derive went past a claimed action");
    claim.commit().await.unwrap();
    assert!(derive.await.unwrap());
    assert_eq!(
        status_of(&pool, "tickets", jobs[0].ticket_id).await,
        "DERIVED"
    );
    // The claimed attempt runs and its outcome is recorded; the action
    // that had not started is cancelled.
    assert_eq!(
        status_of(&pool, "ticket_actions", jobs[0].action_id).await,
        "RUNNING"
    );
    assert_eq!(
        status_of(&pool, "ticket_actions", jobs[1].action_id).await,
        "CANCELLED"
    );
}

#[sqlx::test(migrations = false)]
async fn derive_and_delete_lock_the_actions_before_the_ticket_as_the_worker_does(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    for derive in [true, false] {
        let jobs = ticket(&pool, a, a_fw, 2).await;
        let (ticket_id, action_id) = (jobs[0].ticket_id, jobs[0].action_id);
        // A worker's one-by-one claim has locked the action and is about
        // to lock its ticket.
        let mut worker = db::begin_tenant(&pool, a).await.unwrap();
        sqlx::query("SELECT 1 FROM ticket_actions WHERE id = $1 FOR UPDATE")
            .bind(action_id)
            .execute(&mut *worker)
            .await
            .unwrap();
        // Meanwhile an ADMIN derives (or deletes) the ticket.
        let admin = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut tx = db::begin_tenant(&pool, a).await?;
                if derive {
                    db::tickets::derive_ticket(&mut tx, a, ticket_id, "by hand").await?;
                } else {
                    db::tickets::delete_ticket(&mut tx, a, ticket_id).await?;
                }
                tx.commit().await?;
                Ok::<_, db::DbError>(())
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // The worker's next lock must not wait on the ADMIN, who waits on it.
        sqlx::query("SET LOCAL lock_timeout = '3s'")
            .execute(&mut *worker)
            .await
            .unwrap();
        let locked = sqlx::query("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE")
            .bind(ticket_id)
            .execute(&mut *worker)
            .await;
        assert!(locked.is_ok(), "derive={derive}: {locked:?}");
        worker.commit().await.unwrap();
        admin.await.unwrap().unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets WHERE id = $1")
            .bind(ticket_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if derive {
            assert_eq!(status_of(&pool, "tickets", ticket_id).await, "DERIVED");
        } else {
            assert_eq!(left, 0);
        }
    }
}

/// Inserts `n` tickets of `company` in `ticket_status`, each with one
/// action on `integration` in `action_status` (attempted once).
async fn seed_one_action_tickets(
    pool: &PgPool,
    company: Uuid,
    integration: Uuid,
    n: i32,
    ticket_status: &str,
    action_status: &str,
) {
    sqlx::query(
        "WITH t AS (
             INSERT INTO tickets (company_id, subject, status, executed_at)
             SELECT $1, 'seeded', $4, CASE WHEN $4 <> 'PENDING' THEN now() END FROM generate_series(1, $3)
             RETURNING id)
         INSERT INTO ticket_actions (company_id, ticket_id, position, integration_id, provider, action, status, attempts)
         SELECT $1, t.id, 0, $2, 'PALO_ALTO', 'block_ip', $5, 1 FROM t",
    )
    .bind(company)
    .bind(integration)
    .bind(n)
    .bind(ticket_status)
    .bind(action_status)
    .execute(pool)
    .await
    .unwrap();
}

/// Queues 80 one-action tickets and hands every tenth to
/// [`claim_and_record_by_key`].
async fn claim_and_record_live_work_by_key(pool: &PgPool, company: Uuid, integration: Uuid) {
    let mut jobs = Vec::new();
    for _ in 0..80 {
        jobs.extend(ticket(pool, company, integration, 1).await);
    }
    let first: Vec<ActionJob> = jobs.iter().step_by(10).cloned().collect();
    claim_and_record_by_key(pool, company, &first).await;
}

/// The success of each of `jobs`, at the attempt it was claimed with.
fn successes(
    jobs: &[ActionJob],
    claimed: &std::collections::HashMap<Uuid, db::actions::Claimed>,
) -> Vec<AttemptOutcome> {
    jobs.iter()
        .map(|job| {
            let claim = &claimed[&job.action_id];
            AttemptOutcome {
                action: claim.action.clone(),
                attempt: claim.attempt,
                outcome: Outcome::Succeeded { result: json!({}) },
            }
        })
        .collect()
}

/// Claims `jobs` (one-action tickets of `company`) and records their
/// success in one batch transaction, then asserts that no index on status
/// or company was scanned to reach rows the batch names by key, and that
/// every ticket is EXECUTED.
async fn claim_and_record_by_key(pool: &PgPool, company: Uuid, jobs: &[ActionJob]) {
    let mut tx = db::begin_tenants(pool, &[company], db::Plans::Keyed)
        .await
        .unwrap();
    // A worker's connection runs these statements thousands of times, and
    // after five PostgreSQL plans a prepared statement generically, for
    // any parameters: plan them that way here.
    sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
        .execute(&mut *tx)
        .await
        .unwrap();
    let claimed = db::actions::claim_batch(&mut tx, jobs).await.unwrap();
    assert_eq!(claimed.len(), 8);
    let items = successes(jobs, &claimed);
    let recorded = db::actions::record_batch(&mut tx, &items).await.unwrap();
    assert_eq!(recorded.len(), 8);
    let scans: Vec<(String, i64)> = sqlx::query_as(
        "SELECT indexrelid::regclass::text, pg_stat_get_xact_numscans(indexrelid) FROM pg_index
         WHERE indrelid IN ('tickets'::regclass, 'ticket_actions'::regclass) ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    for (index, n) in &scans {
        let by_status_or_company = index.ends_with("_status_idx")
            || index.ends_with("_status_created_idx")
            || index.ends_with("_active_idx")
            || index.ends_with("_company_created_idx");
        assert!(
            !by_status_or_company || *n == 0,
            "{index} was scanned to reach rows the batch names by key: {scans:?}"
        );
    }
    tx.commit().await.unwrap();
    for job in jobs {
        assert_eq!(status_of(pool, "tickets", job.ticket_id).await, "EXECUTED");
    }
}

/// Claims and records the success of `jobs` (one-action tickets of
/// `company`) in one transaction on `conn`, as a worker's fetch and outcome
/// batch do; returns the sequential scans of the tables they touch and the
/// entries read from each of their indexes.
async fn claim_and_record_on(
    conn: &mut sqlx::PgConnection,
    company: Uuid,
    jobs: &[ActionJob],
) -> (i64, Vec<(String, i64)>) {
    use sqlx::Connection;
    let tables = "'tickets'::regclass, 'ticket_actions'::regclass, 'integrations'::regclass, 'apalis.jobs'::regclass";
    let seq_scans =
        format!("SELECT sum(pg_stat_get_xact_numscans(t))::bigint FROM unnest(ARRAY[{tables}]) t");
    let index_reads = format!(
        "SELECT indexrelid::regclass::text, pg_stat_get_xact_tuples_returned(indexrelid) FROM pg_index
         WHERE indrelid IN ({tables}) ORDER BY 1"
    );
    let mut tx = conn.begin().await.unwrap();
    db::scope_tenants(&mut tx, &[company], db::Plans::Keyed)
        .await
        .unwrap();
    let seq_before: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(seq_scans.clone()))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let before: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(index_reads.clone()))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let claimed = db::actions::claim_batch(&mut tx, jobs).await.unwrap();
    assert_eq!(claimed.len(), jobs.len());
    let items = successes(jobs, &claimed);
    let recorded = db::actions::record_batch(&mut tx, &items).await.unwrap();
    let seq_after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(seq_scans))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let after: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(index_reads))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        recorded
            .iter()
            .all(|r| matches!(r, Recorded::Written(TicketStatus::Executed)))
    );
    let reads = before
        .iter()
        .zip(&after)
        .map(|((index, b), (_, a))| (index.clone(), a - b))
        .filter(|(_, n)| *n > 0)
        .collect();
    (seq_after - seq_before, reads)
}

#[sqlx::test(migrations = false)]
async fn an_outcome_batch_plans_once_per_connection_and_keeps_reaching_its_rows_by_key(
    pool: PgPool,
) {
    db::migrate(&pool).await.unwrap();
    let (a, a_fw) = company(&pool, "alpha", json!({})).await;
    // An analyse would make PostgreSQL plan the statements again; this test
    // is about plans that outlive the tables' growth.
    for table in [
        "tickets",
        "ticket_actions",
        "integrations",
        "apalis.jobs",
        "audit_logs",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    // The first batch of a fresh system: its plans are made while the
    // tables hold a few rows, and the connection keeps them.
    let mut first = Vec::new();
    for _ in 0..4 {
        first.extend(ticket(&pool, a, a_fw, 1).await);
    }
    claim_and_record_on(&mut conn, a, &first).await;
    // Then the tables grow, and no analyse tells the planner: a long
    // finished history, retries and snoozes queued for later, and many
    // more integrations of the same company.
    seed_one_action_tickets(&pool, a, a_fw, 20_000, "EXECUTED", "SUCCEEDED").await;
    sqlx::query(
        "INSERT INTO integrations (company_id, provider, name)
         SELECT $1, 'PALO_ALTO', 'fw-' || n FROM generate_series(1, 2000) n",
    )
    .bind(a)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, run_at)
         SELECT '\\x7b7d', 'later-' || n, 'ActionJob', now() + interval '1 day' FROM generate_series(1, 20000) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut second = Vec::new();
    for _ in 0..8 {
        second.extend(ticket(&pool, a, a_fw, 1).await);
    }
    let (seq_scans, reads) = claim_and_record_on(&mut conn, a, &second).await;
    assert_eq!(seq_scans, 0, "a table was read in full: {reads:?}");
    // Each of the 8 actions, its ticket and its integration are reached by
    // their keys a few times (lock, claim, the read of the ticket's
    // actions, the updates, the foreign keys); a plan that walks an index
    // (of the history, the jobs due later, the company's integrations)
    // reads thousands.
    let total: i64 = reads.iter().map(|(_, n)| n).sum();
    assert!(
        total <= 8 * 16,
        "the batch read {total} index entries: {reads:?}"
    );
    // And the batch's statements were not planned again.
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT left(statement, 40), generic_plans, custom_plans FROM pg_prepared_statements
         WHERE statement ~ '^(WITH cand|SELECT id, company_id, provider|UPDATE ticket_actions a|UPDATE tickets t|SELECT a.ticket_id|UPDATE apalis.jobs j SET run_at|INSERT INTO audit_logs)'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(plans.len(), 7, "{plans:?}");
    for (statement, generic, custom) in &plans {
        assert!(
            *custom == 0 && *generic == 2,
            "{statement}: {generic} runs of a kept plan, {custom} planned for their run"
        );
    }
}
