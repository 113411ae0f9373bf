//! Schema tests: both migration sets apply and re-apply, the app role cannot
//! bypass row-level security, and every tenant table is isolated.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test on setup errors"
)]

use shared::db;
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrations = false)]
async fn migrations_apply_to_an_empty_database_and_a_second_run_is_a_no_op(pool: PgPool) {
    assert!(!db::migrations_applied(&pool).await.unwrap());
    db::migrate(&pool).await.unwrap();
    assert!(db::migrations_applied(&pool).await.unwrap());
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let ours = count("txdx_migrations").await;
    let queue = count("apalis._sqlx_migrations").await;
    assert_eq!(ours as usize, db::migrator().iter().count());
    assert!(
        queue > 0,
        "apalis-postgres migrations are tracked in their own table"
    );

    db::migrate(&pool).await.unwrap();
    assert_eq!(count("txdx_migrations").await, ours);
    assert_eq!(count("apalis._sqlx_migrations").await, queue);
}

#[sqlx::test(migrations = false)]
async fn the_app_role_is_neither_superuser_nor_bypassrls_nor_owner(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(db::APP_ROLE)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!superuser && !bypass);
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = $1",
    )
    .bind(db::APP_ROLE)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(owned, 0);
    // And a tenant transaction really runs as it.
    let mut tx = db::begin_tenant(&pool, Uuid::new_v4()).await.unwrap();
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(role, db::APP_ROLE);
}

/// Inserts one row in every tenant table for a new company, as the connecting
/// (superuser) role, bypassing RLS the way only migrations and tests may.
async fn seed_company(pool: &PgPool, name: &str) -> Uuid {
    let company: Uuid = sqlx::query_scalar("INSERT INTO companies (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
    let user: Uuid = sqlx::query_scalar(
        "INSERT INTO users (company_id, username, email, password_hash, role) VALUES ($1, $2, $3, 'x', 'ADMIN') RETURNING id",
    )
    .bind(company)
    .bind(format!("{name}-admin"))
    .bind(format!("admin@{name}.example"))
    .fetch_one(pool)
    .await
    .unwrap();
    let integration: Uuid = sqlx::query_scalar(
        "INSERT INTO integrations (company_id, provider, name) VALUES ($1, 'SPLUNK', 'splunk') RETURNING id",
    )
    .bind(company)
    .fetch_one(pool)
    .await
    .unwrap();
    let ticket: Uuid = sqlx::query_scalar(
        "INSERT INTO tickets (company_id, created_by_user_id, subject) VALUES ($1, $2, 'subject') RETURNING id",
    )
    .bind(company)
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO ticket_actions (company_id, ticket_id, position, integration_id, provider, action) VALUES ($1, $2, 0, $3, 'SPLUNK', 'send_event')")
        .bind(company).bind(ticket).bind(integration).execute(pool).await.unwrap();
    sqlx::query("INSERT INTO integration_call_starts (company_id, integration_id, started_at) VALUES ($1, $2, now())")
        .bind(company).bind(integration).execute(pool).await.unwrap();
    sqlx::query("INSERT INTO ticket_idempotency_keys (company_id, key, request_hash, ticket_id, expires_at) VALUES ($1, 'k', 'h', $2, now() + interval '1 day')")
        .bind(company).bind(ticket).execute(pool).await.unwrap();
    sqlx::query("INSERT INTO refresh_tokens (company_id, user_id, family_id, token_hash, expires_at) VALUES ($1, $2, gen_random_uuid(), $3, now() + interval '1 day')")
        .bind(company).bind(user).bind(format!("hash-{name}")).execute(pool).await.unwrap();
    sqlx::query("INSERT INTO audit_logs (company_id, actor_user_id, action, entity_type) VALUES ($1, $2, 'seeded', 'company')")
        .bind(company).bind(user).execute(pool).await.unwrap();
    sqlx::query("INSERT INTO integration_checks (company_id, integration_id) VALUES ($1, $2)")
        .bind(company)
        .bind(integration)
        .execute(pool)
        .await
        .unwrap();
    let session: Uuid = sqlx::query_scalar("INSERT INTO agent_sessions (company_id, user_id, external_thread_id, purpose) VALUES ($1, $2, 't', 'triage') RETURNING id")
        .bind(company).bind(user).fetch_one(pool).await.unwrap();
    sqlx::query("INSERT INTO agent_memory_refs (company_id, session_id, vector_store_id, scope) VALUES ($1, $2, 'vs', 'SESSION')")
        .bind(company).bind(session).execute(pool).await.unwrap();
    company
}

const TENANT_TABLES: &[&str] = &[
    "companies",
    "users",
    "integrations",
    "tickets",
    "ticket_actions",
    "ticket_idempotency_keys",
    "refresh_tokens",
    "audit_logs",
    "agent_sessions",
    "agent_memory_refs",
    "integration_checks",
    "integration_call_starts",
];

#[sqlx::test(migrations = false)]
async fn with_a_tenant_set_a_bare_select_sees_only_that_companys_rows_in_every_table(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let a = seed_company(&pool, "alpha").await;
    let b = seed_company(&pool, "bravo").await;

    // Every table with RLS enabled is in the list, so a new table cannot slip through.
    let rls_tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relrowsecurity AND relforcerowsecurity ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected: Vec<String> = TENANT_TABLES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(rls_tables, expected);

    for table in TENANT_TABLES {
        let key = if *table == "companies" {
            "id"
        } else {
            "company_id"
        };
        let mut tx = db::begin_tenant(&pool, a).await.unwrap();
        let seen: Vec<Uuid> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {key} FROM {table}")))
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        assert!(!seen.is_empty(), "{table}: company A sees its own rows");
        assert!(
            seen.iter().all(|c| *c == a),
            "{table}: company A sees only its rows"
        );
        assert!(!seen.contains(&b), "{table}: no row of company B");
        tx.rollback().await.unwrap();
    }
}

#[sqlx::test(migrations = false)]
async fn without_a_tenant_the_app_role_sees_nothing_and_cannot_write_across_tenants(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let a = seed_company(&pool, "alpha").await;
    let b = seed_company(&pool, "bravo").await;

    // No tenant set: fails closed.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('role', $1, true)")
        .bind(db::APP_ROLE)
        .execute(&mut *tx)
        .await
        .unwrap();
    for table in TENANT_TABLES {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table} without a tenant");
    }
    tx.rollback().await.unwrap();

    // Company A cannot insert a row for company B.
    let mut tx = db::begin_tenant(&pool, a).await.unwrap();
    let err = sqlx::query("INSERT INTO tickets (company_id, subject) VALUES ($1, 'smuggled')")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();

    // Nor update or delete B's rows: they are invisible, so nothing matches.
    let mut tx = db::begin_tenant(&pool, a).await.unwrap();
    let updated = sqlx::query("UPDATE tickets SET subject = 'hijacked' WHERE company_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM users WHERE company_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    tx.commit().await.unwrap();
    let b_subject: String = sqlx::query_scalar("SELECT subject FROM tickets WHERE company_id = $1")
        .bind(b)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(b_subject, "subject");
}

/// The tables a batch (one transaction naming several companies in
/// `app.company_ids`: the worker's claims and outcomes, the api's new
/// tickets) may touch; every other tenant table stays closed to it.
const BATCH_SCOPE_TABLES: &[&str] = &["integrations", "tickets", "ticket_actions", "audit_logs"];

#[sqlx::test(migrations = false)]
async fn a_batch_sees_exactly_the_companies_it_names_and_only_in_its_tables(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let mut scoped: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_policies WHERE schemaname = 'public' AND policyname LIKE '%batch%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    scoped.sort();
    let mut expected: Vec<String> = BATCH_SCOPE_TABLES.iter().map(|t| (*t).to_owned()).collect();
    expected.sort();
    assert_eq!(scoped, expected, "one batch-scope policy per batch table");
    let named: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' AND policyname = tablename || '_batch_scope'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(named, i64::try_from(BATCH_SCOPE_TABLES.len()).unwrap());
    let a = seed_company(&pool, "alpha").await;
    let b = seed_company(&pool, "bravo").await;
    let c = seed_company(&pool, "charlie").await;

    for table in TENANT_TABLES {
        let key = if *table == "companies" {
            "id"
        } else {
            "company_id"
        };
        let mut tx = db::begin_tenants(&pool, &[a, b], db::Plans::PerExecution)
            .await
            .unwrap();
        let mut seen: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT {key} FROM {table}"
        )))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        seen.sort();
        if BATCH_SCOPE_TABLES.contains(table) {
            let mut named = vec![a, b];
            named.sort();
            assert_eq!(seen, named, "{table}: the batch sees both named companies");
        } else {
            assert!(seen.is_empty(), "{table}: closed to a batch, saw {seen:?}");
        }
        assert!(!seen.contains(&c), "{table}: never an unnamed company");
        tx.rollback().await.unwrap();
    }

    // It writes only for the companies it names.
    let mut tx = db::begin_tenants(&pool, &[a, b], db::Plans::PerExecution)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO audit_logs (company_id, action, entity_type) VALUES ($1, 'smuggled', 'ticket')")
        .bind(c)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();
    let mut tx = db::begin_tenants(&pool, &[a], db::Plans::PerExecution)
        .await
        .unwrap();
    let moved = sqlx::query("UPDATE tickets SET subject = 'moved' WHERE company_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(moved.rows_affected(), 0, "company B is not named");
    tx.rollback().await.unwrap();

    // Naming no company sees nothing (fails closed).
    let mut tx = db::begin_tenants(&pool, &[], db::Plans::PerExecution)
        .await
        .unwrap();
    for table in BATCH_SCOPE_TABLES {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table} with an empty batch scope");
    }
    tx.rollback().await.unwrap();
}

/// A batch names up to one company per job. Its check must cost each row
/// one hash probe, not a comparison with every named company: `= ANY` over
/// a list that is not a constant compares in turn (with 1,000 companies
/// it was PostgreSQL's hottest function in the drain, BENCHMARKS.md).
#[sqlx::test(migrations = false)]
async fn a_batch_checks_each_row_against_a_hash_of_the_companies_it_names(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let a = seed_company(&pool, "alpha").await;
    seed_company(&pool, "bravo").await;
    let mut named: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    named.push(a);
    let mut tx = db::begin_tenants(&pool, &named, db::Plans::PerExecution)
        .await
        .unwrap();
    for table in BATCH_SCOPE_TABLES {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT company_id FROM {table} WHERE company_id = $1"
        )))
        .bind(a)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("hashed SubPlan"),
            "{table}: the batch scope is not a hashed sub-plan:\n{plan}"
        );
        assert!(
            !plan.contains("= ANY"),
            "{table}: a row is compared with the named companies in turn:\n{plan}"
        );
        let seen: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        let alone: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE company_id = $1"
        )))
        .bind(a)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert!(alone >= 1, "{table}: the named company's rows are seen");
        assert_eq!(
            seen, alone,
            "{table}: rows of the one real named company only"
        );
    }
    tx.rollback().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn tenant_settings_do_not_leak_to_the_next_user_of_a_pooled_connection(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let a = seed_company(&pool, "alpha").await;
    // One connection only, so the next transaction reuses it.
    let single = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let mut tx = db::begin_tenant(&single, a).await.unwrap();
    assert_eq!(db::current_tenant(&mut tx).await.unwrap(), Some(a));
    tx.commit().await.unwrap();
    let mut conn = single.acquire().await.unwrap();
    assert_eq!(db::current_tenant(&mut conn).await.unwrap(), None);
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_ne!(role, db::APP_ROLE);
}

/// A pool of one connection with our session settings, so that each
/// transaction taken from it reuses the connection the one before used.
async fn one_connection_of_ours(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db::session_options((*pool.connect_options()).clone()))
        .await
        .unwrap()
}

/// What a connection's session says of whom it acts for and how it plans:
/// (current user, `app.company_id`, `app.company_ids`, `plan_cache_mode`,
/// `enable_seqscan`, `enable_hashjoin`).
async fn session_scope(conn: &mut sqlx::PgConnection) -> [String; 6] {
    let row: (String, String, String, String, String, String) = sqlx::query_as(
        "SELECT current_user::text, coalesce(current_setting('app.company_id', true), ''),
                coalesce(current_setting('app.company_ids', true), ''),
                current_setting('plan_cache_mode'), current_setting('enable_seqscan'),
                current_setting('enable_hashjoin')",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    [row.0, row.1, row.2, row.3, row.4, row.5]
}

/// Each way into a transaction of ours sets the role, the tenant scope and
/// the plan mode with its `BEGIN`, in one round trip, and none of it
/// outlives the transaction, committed or rolled back.
#[sqlx::test(migrations = false)]
async fn a_transaction_starts_with_its_scope_and_plan_mode_and_leaves_neither_behind(pool: PgPool) {
    use sqlx::Connection as _;
    db::migrate(&pool).await.unwrap();
    let a = seed_company(&pool, "alpha").await;
    let b = seed_company(&pool, "bravo").await;
    // One connection of ours, so every transaction below reuses it.
    let single = one_connection_of_ours(&pool).await;
    let idle = session_scope(&mut single.acquire().await.unwrap()).await;
    let login = idle[0].clone();
    assert_ne!(login, db::APP_ROLE);
    let expect = |user: &str, company: String, companies: String, keyed: bool| {
        let (mode, scans) = if keyed {
            ("force_generic_plan", "off")
        } else {
            ("force_custom_plan", "on")
        };
        [
            user.to_string(),
            company,
            companies,
            mode.to_string(),
            scans.to_string(),
            scans.to_string(),
        ]
    };
    assert_eq!(idle, expect(&login, String::new(), String::new(), false));
    let mut pair = [a, b];
    pair.sort_unstable();
    let both = format!("{{{},{}}}", pair[0], pair[1]);

    let mut tx = db::begin_tenant_with(&single, a, db::Plans::Keyed)
        .await
        .unwrap();
    let expected = expect(db::APP_ROLE, a.to_string(), String::new(), true);
    assert_eq!(session_scope(&mut tx).await, expected);
    tx.rollback().await.unwrap();

    let mut tx = db::begin_tenants(&single, &pair, db::Plans::Keyed)
        .await
        .unwrap();
    let expected = expect(db::APP_ROLE, String::new(), both, true);
    assert_eq!(session_scope(&mut tx).await, expected);
    tx.commit().await.unwrap();

    let mut tx = db::begin_tenant(&single, b).await.unwrap();
    let expected = expect(db::APP_ROLE, b.to_string(), String::new(), false);
    assert_eq!(session_scope(&mut tx).await, expected);
    tx.commit().await.unwrap();

    let mut tx = db::begin_planned(&single, db::Plans::Keyed).await.unwrap();
    let expected = expect(&login, String::new(), String::new(), true);
    assert_eq!(session_scope(&mut tx).await, expected);
    tx.commit().await.unwrap();

    let mut conn = single.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    db::scope_tenants(&mut tx, &[a], db::Plans::Keyed)
        .await
        .unwrap();
    let expected = expect(db::APP_ROLE, String::new(), format!("{{{a}}}"), true);
    assert_eq!(session_scope(&mut tx).await, expected);
    tx.rollback().await.unwrap();

    assert_eq!(session_scope(&mut conn).await, idle);
}

/// The api's token check reads the token's user under the token's company,
/// as the app role, in one statement outside any transaction
/// (`db::users::find_token_user`, migration 0032), and leaves neither the
/// role nor the company on the connection.
#[sqlx::test(migrations = false)]
async fn the_token_check_finds_its_companys_user_only_and_leaves_no_scope_behind(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let a = seed_company(&pool, "alpha").await;
    let b = seed_company(&pool, "bravo").await;
    let a_admin: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE company_id = $1")
        .bind(a)
        .fetch_one(&pool)
        .await
        .unwrap();
    let single = one_connection_of_ours(&pool).await;
    let idle = session_scope(&mut single.acquire().await.unwrap()).await;

    let user = db::users::find_token_user(&single, a, a_admin)
        .await
        .unwrap();
    assert_eq!((user.id, user.company_id), (a_admin, a));
    assert_eq!(user.username, "alpha-admin");
    assert!(matches!(
        db::users::find_token_user(&single, b, a_admin).await,
        Err(db::DbError::NotFound("user"))
    ));
    let mut conn = single.acquire().await.unwrap();
    assert_eq!(session_scope(&mut conn).await, idle);
}

#[sqlx::test(migrations = false)]
async fn the_login_lookup_sees_exactly_the_named_user(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    seed_company(&pool, "alpha").await;
    seed_company(&pool, "bravo").await;
    let mut tx = db::begin_login_lookup(&pool, "alpha-admin").await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT username FROM users")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(names, vec!["alpha-admin".to_string()]);
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tickets, 0);
}

#[sqlx::test(migrations = false)]
async fn every_policy_reads_its_setting_once_per_statement(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    // A bare `current_setting(..)` in a policy is evaluated for every row
    // (a batch's list of companies parsed per row); inside a sub-select it
    // is evaluated once per statement: a scalar one (migration 0027) or the
    // hashed `IN (SELECT unnest(..))` of the batch scope (migration 0030).
    let per_row: Vec<String> = sqlx::query_scalar(
        "SELECT tablename || '.' || policyname FROM pg_policies
         WHERE schemaname = 'public'
           AND (regexp_replace(coalesce(qual, ''), '\\( SELECT (unnest\\()?\\(?NULLIF\\(current_setting', '', 'g') LIKE '%current_setting%'
                OR regexp_replace(coalesce(with_check, ''), '\\( SELECT (unnest\\()?\\(?NULLIF\\(current_setting', '', 'g') LIKE '%current_setting%')
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        per_row.is_empty(),
        "policies reading a setting per row: {per_row:?}"
    );
    let policies: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(policies >= 17, "{policies} policies");
}

/// A statement prepared while its table is small must not keep that
/// moment's plan as the table grows: our connections plan every execution
/// (`db::session_options`). PostgreSQL's default switches to a generic plan
/// after five executions, which a connection without our settings shows.
#[sqlx::test(migrations = false)]
async fn our_connections_plan_every_execution_with_the_statistics_of_the_moment(pool: PgPool) {
    use sqlx::Connection as _;
    const PROBE: &str = "SELECT count(*) FROM plan_probe WHERE id = $1";
    async fn plans(conn: &mut sqlx::PgConnection) -> (i64, i64) {
        plans_after_ten_runs(conn, PROBE, 1, 0).await
    }
    sqlx::query("CREATE TABLE plan_probe (id int PRIMARY KEY, payload text)")
        .execute(&pool)
        .await
        .unwrap();
    let plain = (*pool.connect_options()).clone();
    let mut ours = sqlx::PgConnection::connect_with(&db::session_options(plain.clone()))
        .await
        .unwrap();
    assert_eq!(plans(&mut ours).await, (0, 10));
    let parallel: String = sqlx::query_scalar("SHOW max_parallel_workers_per_gather")
        .fetch_one(&mut ours)
        .await
        .unwrap();
    assert_eq!(parallel, "0");
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&mut ours)
        .await
        .unwrap();
    assert_eq!(jit, "off");
    let mut theirs = sqlx::PgConnection::connect_with(&plain).await.unwrap();
    let (generic, custom) = plans(&mut theirs).await;
    assert!(generic > 0, "generic {generic}, custom {custom}");
}

/// A transaction may let its statements keep generic plans
/// (`db::Plans::Reused`), from its start or from any point on; the setting
/// ends with the transaction, and the connection's next transaction plans
/// every execution again.
#[sqlx::test(migrations = false)]
async fn a_transaction_may_reuse_plans_and_the_next_one_plans_every_execution_again(pool: PgPool) {
    const PROBE: &str = "SELECT count(*) FROM companies WHERE id = $1";
    async fn probe(conn: &mut sqlx::PgConnection, id: Uuid) -> (i64, i64) {
        plans_after_ten_runs(conn, PROBE, id, 1).await
    }
    db::migrate(&pool).await.unwrap();
    let a = seed_company(&pool, "alpha").await;
    // One connection of ours, so every transaction below reuses it.
    let single = one_connection_of_ours(&pool).await;

    let mut tx = db::begin_tenant(&single, a).await.unwrap();
    assert_eq!(probe(&mut tx, a).await, (0, 10));
    db::plan(&mut tx, db::Plans::Reused).await.unwrap();
    let (generic, custom) = probe(&mut tx, a).await;
    assert!(generic > 0, "generic {generic}, custom {custom}");
    tx.commit().await.unwrap();

    let mut tx = db::begin_tenant(&single, a).await.unwrap();
    assert_eq!(probe(&mut tx, a).await, (generic, custom + 10));
    tx.commit().await.unwrap();

    let mut tx = db::begin_tenant_with(&single, a, db::Plans::Reused)
        .await
        .unwrap();
    assert_eq!(db::current_tenant(&mut tx).await.unwrap(), Some(a));
    assert_eq!(probe(&mut tx, a).await, (generic + 10, custom + 10));
    tx.rollback().await.unwrap();

    let mut conn = single.acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(mode, "force_custom_plan");
}

/// Runs `probe` (a `count(*)` with one parameter) ten times with `value`,
/// each expected to count `expected`; the statement's (generic, custom)
/// plans on `conn` since it was prepared.
async fn plans_after_ten_runs<T>(
    conn: &mut sqlx::PgConnection,
    probe: &'static str,
    value: T,
    expected: i64,
) -> (i64, i64)
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Clone + Send,
{
    for _ in 0..10 {
        let n: i64 = sqlx::query_scalar(probe)
            .bind(value.clone())
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(n, expected);
    }
    sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
    )
    .bind(probe)
    .fetch_one(conn)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn every_foreign_key_to_a_user_is_known_and_a_write_for_a_deleted_user_says_so(pool: PgPool) {
    db::migrate(&pool).await.unwrap();
    let mut referencing: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint
         WHERE contype = 'f' AND confrelid = 'users'::regclass ORDER BY conname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut known: Vec<String> = db::USER_REFERENCES.iter().map(|&c| c.to_owned()).collect();
    known.sort();
    referencing.sort();
    assert_eq!(referencing, known);

    let company = seed_company(&pool, "alpha").await;
    let mut tx = db::begin_tenant(&pool, company).await.unwrap();
    let event = |actor| db::audit::NewAuditEvent {
        company_id: company,
        actor_user_id: Some(actor),
        action: "ticket.created",
        entity_type: "ticket",
        entity_id: None,
        payload: serde_json::json!({}),
    };
    let gone = db::audit::insert_audit_event(&mut tx, event(Uuid::now_v7())).await;
    assert!(matches!(gone, Err(db::DbError::UserGone)), "{gone:?}");
}
