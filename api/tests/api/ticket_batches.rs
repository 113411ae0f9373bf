//! The group commit of ticket creation: requests of several companies
//! written in one transaction, each for its own company; a request's
//! validation error is its own; a batch that fails in the database is
//! written again request by request.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use shared::domain::Role;
use sqlx::PgPool;
use txdx_api::{
    auth::AuthUser,
    routes::tickets::NewActionRequest,
    ticket_writer::{CreateTicket, OVERLAP_AT, TicketWriter},
};
use uuid::Uuid;

use crate::test_app::{Session, TestApp, assert_problem, test_config};

fn request(
    session: &Session,
    subject: &str,
    actions: &[(Uuid, &str, serde_json::Value)],
) -> CreateTicket {
    CreateTicket {
        user: AuthUser {
            user_id: session.user_id,
            company_id: session.company_id,
            role: Role::Admin,
        },
        subject: subject.into(),
        description: String::new(),
        actions: actions
            .iter()
            .map(|(integration_id, action, params)| NewActionRequest {
                integration_id: *integration_id,
                provider: None,
                action: (*action).into(),
                params: params.clone(),
                max_attempts: None,
            })
            .collect(),
    }
}

/// Writes one ticket of `session`'s company that blocks an address on
/// `integration`, through `writer`.
async fn block_ip(
    writer: &TicketWriter,
    session: &Session,
    integration: Uuid,
    subject: &str,
) -> txdx_api::ticket_writer::Created {
    let r = request(
        session,
        subject,
        &[(integration, "block_ip", json!({"ip": "203.0.113.9"}))],
    );
    writer.create(r).await.unwrap()
}

/// Sends every request before the writers run (the test runtime has one
/// thread), so the first writer takes them all as one batch.
async fn write_together(
    pool: &PgPool,
    requests: Vec<CreateTicket>,
) -> Vec<Result<txdx_api::ticket_writer::Created, txdx_api::error::ApiError>> {
    let writer = TicketWriter::spawn(pool.clone(), Arc::new(test_config(&[])));
    futures::future::join_all(requests.into_iter().map(|r| writer.create(r))).await
}

#[sqlx::test(migrations = false)]
async fn one_batch_writes_each_companys_tickets_for_that_company_in_one_transaction(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let a = app.register_company("Alpha").await;
    let b = app.register_company("Bravo").await;
    let a_fw = app.create_integration(&a, "PALO_ALTO", "fw").await;
    let a_siem = app.create_integration(&a, "SPLUNK", "siem").await;
    let b_fw = app.create_integration(&b, "PALO_ALTO", "fw").await;
    let block = |ip: &str| json!({"ip": ip});

    let results = write_together(
        &pool,
        vec![
            request(
                &a,
                "a1",
                &[
                    (a_fw, "block_ip", block("203.0.113.1")),
                    (a_siem, "send_event", json!({"event": {"x": 1}})),
                ],
            ),
            request(&b, "b1", &[(b_fw, "block_ip", block("203.0.113.2"))]),
            // Alpha names Bravo's integration: refused, as in a batch of its own.
            request(&a, "a-cross", &[(b_fw, "block_ip", block("203.0.113.3"))]),
            request(&b, "b-bad", &[(b_fw, "block_ip", block("999.0.0.1"))]),
            request(&a, "a-manual", &[]),
            request(&b, "b2", &[(b_fw, "block_ip", block("203.0.113.4"))]),
        ],
    )
    .await;

    let outcome: Vec<Result<(Uuid, String, usize), String>> = results
        .iter()
        .map(|r| match r {
            Ok(c) => Ok((
                c.ticket.company_id,
                c.ticket.subject.clone(),
                c.actions.len(),
            )),
            Err(e) => Err(format!("{e:?}")),
        })
        .collect();
    assert_eq!(outcome[0], Ok((a.company_id, "a1".into(), 2)));
    assert_eq!(outcome[1], Ok((b.company_id, "b1".into(), 1)));
    assert!(
        outcome[2]
            .as_ref()
            .is_err_and(|e| e.contains("actions[0].integration_id")),
        "{outcome:?}"
    );
    assert!(
        outcome[3]
            .as_ref()
            .is_err_and(|e| e.contains("actions[0].params")),
        "{outcome:?}"
    );
    assert_eq!(outcome[4], Ok((a.company_id, "a-manual".into(), 0)));
    assert_eq!(outcome[5], Ok((b.company_id, "b2".into(), 1)));
    for created in results.iter().flatten() {
        let ticket = &created.ticket;
        assert!(
            created
                .actions
                .iter()
                .all(|x| x.company_id == ticket.company_id && x.ticket_id == ticket.id)
        );
        let positions: Vec<i32> = created.actions.iter().map(|x| x.position).collect();
        assert_eq!(
            positions,
            (0..i32::try_from(positions.len()).unwrap()).collect::<Vec<_>>()
        );
    }

    // One transaction wrote them all.
    let transactions: i64 = app
        .count("SELECT count(DISTINCT xmin::text) FROM tickets")
        .await;
    assert_eq!(transactions, 1);
    // Every row belongs to the company of the request that made it.
    let rows: Vec<(String, Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT t.subject, t.company_id,
                (SELECT count(*) FROM ticket_actions x WHERE x.ticket_id = t.id AND x.company_id = t.company_id),
                (SELECT count(*) FROM apalis.jobs j JOIN ticket_actions x ON x.job_id = j.id
                  WHERE x.ticket_id = t.id AND x.position = 0 AND (convert_from(j.job, 'UTF8')::jsonb->>'company_id')::uuid = t.company_id),
                (SELECT count(*) FROM audit_logs l WHERE l.entity_id = t.id AND l.company_id = t.company_id AND l.action = 'ticket.created')
         FROM tickets t ORDER BY t.subject",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("a-manual".into(), a.company_id, 0, 0, 1),
            ("a1".into(), a.company_id, 2, 1, 1),
            ("b1".into(), b.company_id, 1, 1, 1),
            ("b2".into(), b.company_id, 1, 1, 1),
        ]
    );
    assert_eq!(app.count("SELECT count(*) FROM ticket_actions").await, 4);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 3);
    // Bravo's second job sees its first in the backlog: a lower priority.
    let priorities: Vec<i32> = sqlx::query_scalar(
        "SELECT j.priority FROM apalis.jobs j JOIN ticket_actions x ON x.job_id = j.id JOIN tickets t ON t.id = x.ticket_id
         WHERE t.company_id = $1 ORDER BY t.subject",
    )
    .bind(b.company_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(priorities.len(), 2);
    assert!(priorities[0] > priorities[1], "{priorities:?}");
}

#[sqlx::test(migrations = false)]
async fn a_batch_the_database_refuses_is_written_again_one_request_at_a_time(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let a = app.register_company("Alpha").await;
    let b = app.register_company("Bravo").await;
    let fw = app.create_integration(&a, "PALO_ALTO", "fw").await;
    // A caller whose user no longer exists: its ticket's foreign key fails,
    // which fails the whole batch's transaction.
    let ghost = Session {
        access_token: String::new(),
        refresh_token: String::new(),
        user_id: Uuid::now_v7(),
        company_id: b.company_id,
    };
    let results = write_together(
        &pool,
        vec![
            request(
                &a,
                "first",
                &[(fw, "block_ip", json!({"ip": "203.0.113.1"}))],
            ),
            request(&ghost, "ghost", &[]),
            request(&b, "third", &[]),
            request(&a, "fourth", &[]),
        ],
    )
    .await;
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, true, true]);
    let subjects: Vec<String> = sqlx::query_scalar("SELECT subject FROM tickets ORDER BY subject")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(subjects, ["first", "fourth", "third"]);
    // Each was written in its own transaction, with its job and audit row.
    assert_eq!(
        app.count("SELECT count(DISTINCT xmin::text) FROM tickets")
            .await,
        3
    );
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_logs WHERE action = 'ticket.created'")
            .await,
        3
    );
}

#[sqlx::test(migrations = false)]
async fn requests_that_queue_behind_a_commit_share_the_next_one(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let a = app.register_company("Alpha").await;
    let b = app.register_company("Bravo").await;
    // Hold Alpha's company row: a ticket insert for Alpha waits on it (its
    // foreign-key check), so a writer stalls on Alpha's tickets while later
    // requests queue.
    let lock = app.hold_company_row(a.company_id).await;
    let post =
        |session: &Session, subject: String| app.post_ticket_in_background(session, &subject);
    let mut held = vec![post(&a, "held".into())];
    app.wait_for_stalled_ticket_inserts(1).await;
    // Fewer than OVERLAP_AT requests wait for the running commit rather
    // than start a second one beside it.
    let queued: Vec<_> = (0..10)
        .map(|i| post(if i % 2 == 0 { &a } else { &b }, format!("queued {i}")))
        .collect();
    // Give the queued requests time to pass authentication and queue up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.stalled_ticket_inserts().await,
        1,
        "ten requests started a second commit beside the stalled one"
    );
    // OVERLAP_AT more do: the second writer starts beside the first (and
    // stalls on Alpha's row too).
    let more: Vec<_> = (0..OVERLAP_AT)
        .map(|i| post(&a, format!("more {i}")))
        .collect();
    app.wait_for_stalled_ticket_inserts(2).await;
    lock.rollback().await.unwrap();
    held.extend(queued);
    held.extend(more);
    for response in held {
        let response = response.await.unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    let queued_transactions = app
        .count("SELECT count(DISTINCT xmin::text) FROM tickets WHERE subject LIKE 'queued%'")
        .await;
    assert!(
        queued_transactions < 10,
        "ten queued requests took {queued_transactions} transactions"
    );
    let wrong_company = app
        .count("SELECT count(*) FROM tickets t JOIN users u ON u.id = t.created_by_user_id WHERE u.company_id <> t.company_id")
        .await;
    assert_eq!(wrong_company, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM tickets").await,
        11 + OVERLAP_AT as i64
    );
    // And a request's own mistake is still its own 422.
    let response = app
        .post_json(
            "/api/tickets",
            Some(&a.access_token),
            &json!({"subject": "x", "actions": [{"integration_id": Uuid::now_v7(), "action": "block_ip", "params": {"ip": "1.2.3.4"}}]}),
        )
        .await;
    let problem = assert_problem(response, 422).await;
    assert_eq!(problem["field"], "actions[0].integration_id");
}

#[sqlx::test(migrations = false)]
async fn a_company_backlog_is_counted_at_most_once_a_second_and_raised_by_each_job_meanwhile(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let a = app.register_company("Alpha").await;
    let fw = app.create_integration(&a, "PALO_ALTO", "fw").await;
    let writer = TicketWriter::spawn(pool.clone(), Arc::new(test_config(&[])));
    let write = |subject: &'static str| block_ip(&writer, &a, fw, subject);
    let priority_of = |subject: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT j.priority FROM apalis.jobs j JOIN ticket_actions x ON x.job_id = j.id JOIN tickets t ON t.id = x.ticket_id WHERE t.subject = $1",
            )
            .bind(subject)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // Backlog 0 when first counted.
    write("t1").await;
    assert_eq!(priority_of("t1").await, 1000);
    // Five actions queued behind the writer's back: not seen within the
    // second, but the writer's own job is.
    sqlx::query(
        "WITH t AS (INSERT INTO tickets (company_id, subject) SELECT $1, 'other' FROM generate_series(1, 5) RETURNING id)
         INSERT INTO ticket_actions (company_id, ticket_id, position, integration_id, provider, action) SELECT $1, t.id, 0, $2, 'PALO_ALTO', 'block_ip' FROM t",
    )
    .bind(a.company_id)
    .bind(fw)
    .execute(&pool)
    .await
    .unwrap();
    write("t2").await;
    assert_eq!(priority_of("t2").await, 999);
    // A second later the backlog is counted again: t1, t2 and the five.
    tokio::time::sleep(txdx_api::ticket_writer::BACKLOG_TTL + Duration::from_millis(100)).await;
    write("t3").await;
    assert_eq!(priority_of("t3").await, 1000 - 7);
}

#[sqlx::test(migrations = false)]
async fn a_ticket_batch_is_planned_once_per_connection_as_the_tables_grow(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let a = app.register_company("Alpha").await;
    let fw = app.create_integration(&a, "PALO_ALTO", "fw").await;
    // One connection with the api's session settings, so every batch
    // runs on it and its prepared statements can be read afterwards.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(shared::db::session_options(
            (*pool.connect_options()).clone(),
        ))
        .await
        .unwrap();
    let writer = TicketWriter::spawn(one.clone(), Arc::new(test_config(&[])));
    let write = |subject: &'static str| block_ip(&writer, &a, fw, subject);
    write("t1").await;
    write("t2").await;
    // The tables grow and no analyse tells the planner: a history of
    // tickets, and many more integrations of the company.
    sqlx::query(
        "WITH t AS (INSERT INTO tickets (company_id, subject, status, executed_at) SELECT $1, 'old', 'EXECUTED', now() FROM generate_series(1, 5000) RETURNING id)
         INSERT INTO ticket_actions (company_id, ticket_id, position, integration_id, provider, action, status) SELECT $1, t.id, 0, $2, 'PALO_ALTO', 'block_ip', 'SUCCEEDED' FROM t",
    )
    .bind(a.company_id)
    .bind(fw)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO integrations (company_id, provider, name) SELECT $1, 'PALO_ALTO', 'fw-' || n FROM generate_series(1, 2000) n",
    )
    .bind(a.company_id)
    .execute(&pool)
    .await
    .unwrap();
    write("t3").await;
    // The batch's lookup of its integrations and its two inserts (the
    // tickets; their actions with the jobs and the audit rows) ran three
    // times each on one kept plan, and were never planned for a run.
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT left(statement, 40), generic_plans, custom_plans FROM pg_prepared_statements
         WHERE statement ~ '^(SELECT id, company_id, provider.*FROM integrations\\s+WHERE id = ANY|INSERT INTO tickets |WITH actions AS \\(\\s+INSERT INTO ticket_actions )'",
    )
    .fetch_all(&one)
    .await
    .unwrap();
    assert_eq!(plans.len(), 3, "{plans:?}");
    for (statement, generic, custom) in &plans {
        assert!(
            *custom == 0 && *generic == 3,
            "{statement}: {generic} runs of a kept plan, {custom} planned for their run"
        );
    }
}
