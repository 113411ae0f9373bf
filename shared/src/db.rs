//! The database: pool, migrations, tenant transactions, and (in the child
//! modules) every SQL statement of the product.
//!
//! Tenant data is read and written only inside [`begin_tenant`](crate::db::begin_tenant)
//! transactions, which switch to the `txdx_app` role (not superuser, not
//! owner, not BYPASSRLS) and set `app.company_id`, so Postgres row-level
//! security confines every statement to one company even when a `WHERE`
//! clause is forgotten.
//!
//! Statements that reach rows by key and only *check* a status write the
//! check as `status IS NOT DISTINCT FROM 'PENDING'` (or `'RUNNING'`), which no index can serve
//! and no partial index's predicate is implied by. With `status = 'PENDING'`
//! the planner, whose statistics (taken over a large finished history) say
//! almost nothing is PENDING, chose the `(company_id, status, ..)` index or
//! the partial index of live actions over the primary key, and read every
//! queued row of the company per lookup: with 1,000,000 finished tickets the
//! worker's claim took 15 ms and its next-action lookup 7.7 ms per batch
//! instead of under 1 ms (BENCHMARKS.md).

use std::time::Duration;

use sqlx::{
    Arguments, PgPool, Postgres, Transaction,
    migrate::{MigrateError, Migrator},
    postgres::{PgArguments, PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

/// The table that tracks our migrations. apalis-postgres 1.0 tracks its own
/// in `apalis._sqlx_migrations`; ours get a name of their own so neither
/// side ever sees the other's versions (which sqlx refuses as unknown), even
/// with a `search_path` that reaches the `apalis` schema.
pub const MIGRATIONS_TABLE: &str = "txdx_migrations";

/// The role tenant transactions run as.
pub const APP_ROLE: &str = "txdx_app";

/// Our migrations (`migrations/` at the workspace root), tracked in [`MIGRATIONS_TABLE`].
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// Opens the connection pool.
///
/// The acquire timeout is short so that, while the database is down, a
/// request fails fast (503) instead of hanging.
///
/// # Errors
/// When the URL is malformed. Connections are opened lazily.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(session_options(options)))
}

/// The settings every connection of ours starts its session with.
///
/// - `plan_cache_mode = force_custom_plan`: each execution of a prepared
///   statement is planned with its parameters and the statistics of the
///   moment. By default PostgreSQL moves a prepared statement to a generic
///   plan after five executions and keeps it for the connection's life; a
///   worker that prepared its statements while the queue tables were
///   nearly empty kept their sequential scans as the tables grew. Under a
///   steady 1,000 tickets/s apalis's ack went from 0.9 to 95 ms a call
///   within 40 s, the fetch from 1.3 to 45 ms, and POST→EXECUTED p99 from
///   0.19 to 4.2 s (BENCHMARKS.md). Forcing custom plans for the ack alone
///   left the fetch and the outcome statements degrading.
/// - `max_parallel_workers_per_gather = 0`: our statements are short and
///   reach their rows by key; a custom plan made on statistics that lag a
///   burst once chose a parallel scan to read the actions of 49 tickets
///   (9.4 ms a call instead of 0.35).
/// - `jit = off`: PostgreSQL compiles a statement to machine code when its
///   estimated cost passes `jit_above_cost`, which estimates made before a
///   table's first analyse can do for a read of a few rows. In the
///   benchmark's drain the read of a batch's ticket actions (200 rows, 1,218
///   buffers) was compiled 381 times, once with inlining and optimisation
///   for 416 ms (`auto_explain`, BENCHMARKS.md). Our statements are short;
///   compiling never pays for them.
#[must_use]
pub fn session_options(options: PgConnectOptions) -> PgConnectOptions {
    options.application_name("txdx").options([
        ("plan_cache_mode", "force_custom_plan"),
        ("max_parallel_workers_per_gather", "0"),
        ("jit", "off"),
    ])
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// apalis-postgres's own schema (the `apalis` Postgres schema).
    #[error("queue schema migration failed: {0}")]
    Queue(#[from] apalis_postgres::Error),
    /// Our schema.
    #[error("schema migration failed: {0}")]
    Schema(#[from] MigrateError),
}

/// Applies the queue's migrations, then ours. Running it again is a no-op.
///
/// The queue's go first: ours grant the app role access to its job table.
///
/// # Errors
/// When either set fails to apply.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrationError> {
    apalis_postgres::PostgresStorage::setup(pool).await?;
    migrator().run(pool).await?;
    Ok(())
}

/// Whether every one of our migrations has been applied successfully.
///
/// # Errors
/// When the database cannot be queried.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let expected: Vec<i64> = migrator().iter().map(|m| m.version).collect();
    // The tracking table may not exist yet: to_regclass answers NULL then.
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(MIGRATIONS_TABLE)
        .fetch_one(pool)
        .await?;
    if exists.is_none() {
        return Ok(false);
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM txdx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(expected.iter().all(|v| applied.contains(v)))
}

/// Starts a transaction scoped to one company: role `txdx_app`, `app.company_id` set.
///
/// Both settings are transaction-local (`set_config(.., true)`), so nothing
/// leaks to the next user of the pooled connection.
///
/// # Errors
/// When no connection can be had or the settings cannot be applied.
pub async fn begin_tenant(
    pool: &PgPool,
    company_id: Uuid,
) -> Result<Transaction<'static, Postgres>, DbError> {
    begin_tenant_with(pool, company_id, Plans::PerExecution).await
}

/// [`begin_tenant`], with the transaction's statements planned as `plans` says.
///
/// # Errors
/// When no connection can be had or the settings cannot be applied.
pub async fn begin_tenant_with(
    pool: &PgPool,
    company_id: Uuid,
    plans: Plans,
) -> Result<Transaction<'static, Postgres>, DbError> {
    Ok(begin_scoped(pool, Scope::Company(company_id), plans).await?)
}

/// Starts a transaction of the pool's own role (no tenant scope), with its
/// statements planned as `plans` says: the queue's bookkeeping.
///
/// # Errors
/// When no connection can be had or the setting cannot be applied, as sqlx
/// reports it (the apalis backend hands it on in its own error type).
pub async fn begin_planned(
    pool: &PgPool,
    plans: Plans,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    begin_scoped(pool, Scope::Pool, plans).await
}

/// Whom a transaction of [`begin_scoped`] acts for.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// The pool's own role, no tenant setting.
    Pool,
    /// [`APP_ROLE`] and `app.company_id`.
    Company(Uuid),
    /// [`APP_ROLE`] and `app.company_ids`.
    Companies(&'a [Uuid]),
}

/// Starts a transaction whose settings (role, tenant scope, plan mode) are
/// applied by the same round trip as its `BEGIN`: one simple query,
/// `BEGIN; SELECT set_config(..), ..`, where the settings had been one or
/// two statements after it.
///
/// A round trip costs PostgreSQL about 40 µs of CPU whatever it carries,
/// and at the rates where batches hold a row or two a ticket's transactions
/// made about thirty of them (BENCHMARKS.md). The values are written into the
/// statement's text, so only values of ours go there: ids, which print as
/// hexadecimal digits and dashes, and constants. Anything a client sent is
/// bound as a parameter instead ([`begin_login_lookup`]).
async fn begin_scoped(
    pool: &PgPool,
    scope: Scope<'_>,
    plans: Plans,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let tenant = match scope {
        Scope::Pool => None,
        Scope::Company(id) => Some(("app.company_id", id.to_string())),
        Scope::Companies(ids) => Some(("app.company_ids", company_list(ids))),
    };
    let scope = tenant.map_or_else(String::new, |(setting, value)| {
        format!(
            "set_config('{setting}', '{value}', true), set_config('role', '{APP_ROLE}', true), "
        )
    });
    let begin = format!("BEGIN; SELECT {scope}{}", plans.settings());
    pool.begin_with(sqlx::AssertSqlSafe(begin)).await
}

/// `company_ids` as a PostgreSQL array literal, for `app.company_ids`.
fn company_list(company_ids: &[Uuid]) -> String {
    format!(
        "{{{}}}",
        company_ids
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// How the statements of a transaction are planned: PostgreSQL's
/// `plan_cache_mode`, set for the transaction only.
///
/// Our sessions plan every execution ([`session_options`]): a plan made
/// once, for no particular parameters, is wrong for the statements whose
/// best plan depends on how many values an array parameter holds or on how
/// large a fast-growing table has become (BENCHMARKS.md). Planning has its
/// price, though: under 600 tickets/s it was 31 % of PostgreSQL's statement
/// time, and the foreign-key checks an insert fires (internal prepared
/// statements, one per parent row) were planned once per inserted row too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// Every execution planned with its parameters and the statistics of
    /// the moment (`force_custom_plan`, the sessions' default).
    PerExecution,
    /// PostgreSQL's own choice (`auto`): after five executions a statement
    /// may keep a generic plan. Only for statements whose plan is the same
    /// whatever their parameters and the size of their tables: inserts
    /// (with the foreign-key checks they fire) and primary-key lookups.
    Reused,
    /// One plan per statement and connection (`force_generic_plan`), made
    /// with sequential and bitmap scans, hash and merge joins off: what is
    /// left is a nested loop that reaches each row through an index, by the
    /// key the statement names, and that plan suits a table of any size. So
    /// a plan made while a table held a few rows never becomes a read of the
    /// whole table as it grows, and the statement is not planned again at
    /// each execution. Only for statements that name every row they touch by
    /// a key: the api's ticket writer, the worker's claim and the
    /// statements of its outcome batch (BENCHMARKS.md: at 400 tickets/s
    /// their planning had cost more than their execution).
    Keyed,
}

impl Plans {
    fn setting(self) -> &'static str {
        match self {
            Self::PerExecution => "force_custom_plan",
            Self::Reused => "auto",
            Self::Keyed => "force_generic_plan",
        }
    }

    /// Whether the planner may read tables by sequential or bitmap scans,
    /// or join by hashing or merging.
    fn whole_scans(self) -> &'static str {
        match self {
            Self::PerExecution | Self::Reused => "on",
            Self::Keyed => "off",
        }
    }

    /// The `set_config` calls that put a transaction in this mode, for a
    /// `SELECT` list (constants only).
    fn settings(self) -> String {
        format!(
            "set_config('plan_cache_mode', '{}', true), set_config('enable_seqscan', '{scans}', true), \
             set_config('enable_bitmapscan', '{scans}', true), set_config('enable_hashjoin', '{scans}', true), \
             set_config('enable_mergejoin', '{scans}', true)",
            self.setting(),
            scans = self.whole_scans(),
        )
    }
}

/// Plans the rest of an open transaction's statements as `plans` says.
///
/// # Errors
/// When the setting cannot be applied.
pub async fn plan(conn: &mut sqlx::PgConnection, plans: Plans) -> Result<(), DbError> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {}", plans.settings())))
        .execute(conn)
        .await?;
    Ok(())
}

/// Starts a transaction scoped to several companies at once: role
/// `txdx_app`, `app.company_ids` set to exactly `company_ids`, its
/// statements planned as `plans` says.
///
/// The batches use it: the worker's (one transaction records the claims or
/// outcomes of many jobs of different companies) and the api's new tickets
/// (`TicketWriter`), both with [`Plans::Keyed`]; the `*_batch_scope`
/// policies (migrations 0022, 0025, 0026) admit these companies' rows on
/// the tables those batches touch. Every statement still names each row's
/// own company.
///
/// # Errors
/// When no connection can be had or the settings cannot be applied.
pub async fn begin_tenants(
    pool: &PgPool,
    company_ids: &[Uuid],
    plans: Plans,
) -> Result<Transaction<'static, Postgres>, DbError> {
    Ok(begin_scoped(pool, Scope::Companies(company_ids), plans).await?)
}

/// Scopes the rest of an open transaction to `company_ids`, planned as
/// `plans` says, as [`begin_tenants`] does at its start: the worker's fetch
/// takes its jobs from the queue as the pool's role, then claims them in the
/// same transaction under this scope.
///
/// # Errors
/// When the settings cannot be applied.
pub async fn scope_tenants(
    conn: &mut sqlx::PgConnection,
    company_ids: &[Uuid],
    plans: Plans,
) -> Result<(), DbError> {
    scope_as_app(conn, "app.company_ids", company_list(company_ids), plans).await
}

/// Starts a transaction as the app role that may see exactly one user row by
/// its username, before the company is known (login).
///
/// # Errors
/// When no connection can be had or the settings cannot be applied.
pub async fn begin_login_lookup(
    pool: &PgPool,
    username: &str,
) -> Result<Transaction<'static, Postgres>, DbError> {
    let mut tx = pool.begin().await?;
    scope_as_app(
        &mut tx,
        "app.login_username",
        username.to_owned(),
        Plans::PerExecution,
    )
    .await?;
    Ok(tx)
}

/// Switches an open transaction to [`APP_ROLE`] with one scoping setting and
/// a plan mode, all transaction-local, so nothing reaches the next user of
/// the connection. One statement, its values bound.
async fn scope_as_app(
    conn: &mut sqlx::PgConnection,
    setting: &'static str,
    value: String,
    plans: Plans,
) -> Result<(), DbError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT set_config($1, $2, true), set_config('role', $3, true), {}",
        plans.settings()
    )))
    .bind(setting)
    .bind(value)
    .bind(APP_ROLE)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds `value` as the next parameter of `args` and returns its placeholder
/// with `cast` (`$n::cast`): the parts of one statement (see
/// [`tickets::insert_ticket_actions`]) bind their arrays in turn, each
/// numbering its own placeholders.
///
/// # Errors
/// When the value cannot be encoded.
pub fn bind_next<'t, T>(args: &mut PgArguments, value: T, cast: &str) -> Result<String, DbError>
where
    T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value).map_err(sqlx::Error::Encode)?;
    Ok(format!("${}::{cast}", args.len()))
}

/// Rows held as the arrays of one insert, which can run alone
/// ([`execute_insert`]) or be one part of a larger statement (a new
/// ticket's, [`tickets::insert_ticket_actions`]).
pub trait ArrayInsert {
    /// Binds the rows' arrays as the next parameters of `args` (see
    /// [`bind_next`]) and returns the insert that reads them.
    ///
    /// # Errors
    /// When a value cannot be encoded.
    fn bind_insert(&self, args: &mut PgArguments) -> Result<String, DbError>;
}

/// Runs the insert of `rows` as a statement of its own.
///
/// # Errors
/// When the insert fails.
pub async fn execute_insert(
    conn: &mut sqlx::PgConnection,
    rows: &impl ArrayInsert,
) -> Result<(), DbError> {
    let mut args = PgArguments::default();
    let insert = rows.bind_insert(&mut args)?;
    sqlx::query_with(sqlx::AssertSqlSafe(insert), args)
        .execute(conn)
        .await?;
    Ok(())
}

/// The tenant a transaction is scoped to, for tests and assertions.
///
/// # Errors
/// When the database cannot be queried.
pub async fn current_tenant(tx: &mut sqlx::PgConnection) -> Result<Option<Uuid>, sqlx::Error> {
    let raw: Option<String> =
        sqlx::query_scalar("SELECT nullif(current_setting('app.company_id', true), '')")
            .fetch_one(tx)
            .await?;
    Ok(raw.and_then(|s| s.parse().ok()))
}

/// The foreign keys by which a row names the user who acted: a write that
/// violates one was made for a user deleted meanwhile ([`DbError::UserGone`]).
pub const USER_REFERENCES: &[&str] = &[
    "tickets_created_by_user_id_fkey",
    "audit_logs_actor_user_id_fkey",
    "refresh_tokens_user_id_fkey",
    "agent_sessions_user_id_fkey",
];

/// What a repository function can fail with, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The entity does not exist in the caller's company.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule: the message says which.
    #[error("{0}")]
    Conflict(String),
    /// A value the database refused (a check or foreign key).
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// Why.
        message: String,
    },
    /// The user a write names as its actor or creator no longer exists: it
    /// was deleted after the request's token was checked.
    #[error("the acting user no longer exists")]
    UserGone,
    /// The database cannot be reached (down, restarting, pool exhausted).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(err)
            }
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    // 57P01..03: admin shutdown, crash shutdown, cannot connect now; 08xxx: connection exceptions.
                    c.starts_with("57P") || c.starts_with("08")
                }) =>
            {
                Self::Unavailable(err)
            }
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some("23503")
                    && db
                        .constraint()
                        .is_some_and(|c| USER_REFERENCES.contains(&c)) =>
            {
                Self::UserGone
            }
            _ => Self::Other(err),
        }
    }
}

impl DbError {
    /// The name of the violated constraint, if this is a constraint violation.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            Self::Other(sqlx::Error::Database(db)) => db.constraint(),
            _ => None,
        }
    }
}

/// Ticket actions as the worker claims and settles them.
pub mod actions;
/// The apalis queue as a whole: depth gauges, retention and the ack.
pub mod apalis_queue;
/// The audit log.
pub mod audit;
/// Per-integration concurrency and rate limits.
pub mod limits;

/// Takes a transaction-scoped advisory lock on `key`, serialising every
/// holder of the same key across all processes until the transaction ends.
///
/// # Errors
/// Database failures.
pub async fn lock_serialization_key(
    conn: &mut sqlx::PgConnection,
    key: &str,
) -> Result<(), DbError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}
/// Companies.
pub mod companies;
/// Failed-login throttling.
pub mod login_failures;
/// Refresh tokens.
pub mod refresh_tokens;
/// Users.
pub mod users;

/// A single connection or transaction: what repository functions take.
pub use sqlx::PgConnection;
/// Integration connection tests.
pub mod integration_checks;
/// Integrations.
pub mod integrations;
/// Platform operators.
pub mod operators;
/// Jobs (actions) as company ADMINs see them; queue statistics.
pub mod queue;
/// Tickets, their actions, idempotency keys.
pub mod tickets;
