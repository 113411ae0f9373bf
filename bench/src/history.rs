//! Growth: history seeded straight into PostgreSQL, so the pipeline can be
//! measured again with a large table behind it.
//!
//! One finished ticket of this run (one action, its queue job, its audit
//! rows) is the template: every seeded row is a copy of the real row with
//! new ids, another company (round-robin over the seeded tenants) and its
//! timestamps moved into the day before, so the copies hold exactly what the
//! product writes today, including columns this code does not know about.
//! Each table gets one `INSERT ... SELECT ... generate_series`. The pending
//! jobs are copies of the finished job, back to `Pending` and due in a day:
//! they sit in the queue's table without ever being claimed during the run
//! (they point at the copied, finished actions, so no company's backlog
//! counts them and no ticket waits on them).
//!
//! It runs as the administrator of `DATABASE_URL` (the tables' owner or a
//! superuser, whom row-level security does not bind) and, when allowed,
//! with `session_replication_role = replica`, which skips the foreign-key
//! checks and the queue's NOTIFY trigger for the copies (consistent by
//! construction). Then `VACUUM (ANALYZE)` and a checkpoint, as autovacuum
//! would long have done for a day of history.

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::{load::Tenant, probe};

/// What was seeded.
#[derive(Debug, Clone, Serialize)]
pub struct Seeded {
    /// Finished tickets, each with one SUCCEEDED action and (when the
    /// product keeps finished jobs) one `Done` job in `apalis.jobs`.
    pub history_jobs: u64,
    /// `Pending` jobs due a day later in `apalis.jobs`.
    pub pending_jobs: u64,
    /// Audit rows copied per history ticket (the real ticket's own).
    pub audit_rows_per_ticket: u64,
    /// Companies the history is spread over.
    pub companies: usize,
    /// Whether foreign-key checks and triggers were skipped for the copies.
    pub triggers_skipped: bool,
    /// Seconds per statement: `(table, rows, seconds)`.
    pub inserts: Vec<(String, u64, f64)>,
    /// Seconds of `VACUUM (ANALYZE)` and `CHECKPOINT` afterwards.
    pub vacuum_secs: f64,
    /// Seconds in all.
    pub seconds: f64,
    /// Anything the reader of the figures should know.
    pub notes: Vec<String>,
}

/// A deterministic id shaped like the ones the database gives these tables
/// (UUID version 7, migration `..24`): the copy's time (`g.at`) in the first
/// 48 bits, the version and variant bits set, the rest from the md5 of
/// `$seed`. An index over a real history holds time-ordered keys; random ones
/// would make the history cost what it no longer costs.
macro_rules! time_ordered_id {
    ($seed:literal) => {
        concat!(
            "encode(set_bit(set_bit(set_bit(set_bit(set_bit(set_bit(overlay(decode(md5(",
            $seed,
            "), 'hex') PLACING substring(int8send((extract(epoch FROM g.at) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 54, 1), 55, 0), 70, 0), 71, 1), 'hex')::uuid"
        )
    };
}

/// Deterministic ids of the copies, one namespace per kind.
const TICKET_ID: &str = time_ordered_id!("'txdx-bench-history-ticket-' || g.n");
const ACTION_ID: &str = time_ordered_id!("'txdx-bench-history-action-' || g.n");
/// Queue job ids are ULIDs, as apalis and our pushes make them: the copy's
/// time (`g.at`, milliseconds) in the first 10 Crockford base-32
/// characters, then a marker of the kind (`BENCHH` history, `BENCHP`
/// pending, at characters 11 to 16) and the row number in decimal digits.
/// Time-ordered like real ids, so a statement that bounds a scan by job id
/// (the retention sweep) sees the history a real queue would hold.
macro_rules! time_ordered_job_id {
    ($marker:literal) => {
        concat!(
            "(SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', \
             (((extract(epoch FROM g.at) * 1000)::bigint >> (5 * (9 - k))) & 31)::int + 1, 1), '' ORDER BY k) \
             FROM generate_series(0, 9) AS k) || '",
            $marker,
            "' || lpad(g.n::text, 10, '0')"
        )
    };
}
const HISTORY_JOB_ID: &str = time_ordered_job_id!("BENCHH");
const PENDING_JOB_ID: &str = time_ordered_job_id!("BENCHP");
/// The copy's company, integration and first user, by round-robin.
const COMPANY: &str = "($2::uuid[])[g.c]";
const INTEGRATION: &str = "($3::uuid[])[g.c]";
const USER: &str = "($4::uuid[])[g.c]";

/// `rows`: `n` from 1 to `$1`, its company index `c`, and `at`, its
/// creation time, spread evenly over the 24 hours that ended an hour before
/// `$8` (the seeding's start). Recent enough that the worker's retention of
/// finished jobs (`JOB_RETENTION_SECS`, 7 days by default) keeps them all in
/// `apalis.jobs`: older copies would be deleted by the first worker that
/// starts, in the middle of a measurement.
const ROWS: &str = "SELECT n, (1 + n % cardinality($2::uuid[]))::int AS c,
        $8::timestamptz - interval '25 hours' + n * (interval '24 hours' / $1::bigint) AS at
    FROM generate_series(1, $1::bigint) AS n";

/// Seeded finished jobs still in `apalis.jobs` (retention may delete them):
/// those with the history marker of [`HISTORY_JOB_ID`].
///
/// # Errors
/// Database failures.
pub async fn history_jobs_left(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE substr(id, 11, 6) = 'BENCHH'")
            .fetch_one(pool)
            .await?,
    )
}

/// The real finished ticket the copies are made of.
#[derive(sqlx::FromRow)]
struct Template {
    ticket: Uuid,
    action: Uuid,
    job: Option<String>,
    company: Uuid,
    integration: Option<Uuid>,
}

/// Seeds `history` finished tickets and `pending` not-yet-due jobs into the
/// database at `url`, spread over the tenants' companies.
///
/// # Errors
/// Database failures; no finished ticket to copy.
pub async fn seed(
    url: &str,
    tenants: &[Tenant],
    history: u64,
    pending: u64,
) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let mut conn = PgConnection::connect(url).await?;
    let result = seed_on(&mut conn, tenants, history, pending).await;
    // Never leave a session with triggers off in anyone's pool: this
    // connection is the seeding's own and ends here.
    let _ = conn.close().await;
    let mut seeded = result?;
    seeded.seconds = started.elapsed().as_secs_f64();
    Ok(seeded)
}

async fn seed_on(
    conn: &mut PgConnection,
    tenants: &[Tenant],
    history: u64,
    pending: u64,
) -> anyhow::Result<Seeded> {
    let mut notes = Vec::new();
    let triggers_skipped = match sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            notes.push(format!(
                "foreign keys and triggers checked for every copy ({e})"
            ));
            false
        }
    };
    let template = template(conn).await?;
    let anchor: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    if template.job.is_none() {
        notes.push(
            "the template's queue job is gone (finished jobs deleted?): no job history or pending jobs seeded in apalis.jobs".into(),
        );
    }
    let integration_ids: Vec<Uuid> = tenants
        .iter()
        .filter_map(|t| t.integration_id.parse().ok())
        .collect();
    let companies: Vec<(Uuid, Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT i.company_id, i.id, (SELECT u.id FROM users u WHERE u.company_id = i.company_id ORDER BY u.created_at, u.id LIMIT 1)
         FROM integrations i WHERE i.id = ANY($1) ORDER BY i.company_id",
    )
    .bind(&integration_ids)
    .fetch_all(&mut *conn)
    .await?;
    if companies.is_empty() {
        bail!("none of the tenants' integrations were found");
    }
    let company_ids: Vec<Uuid> = companies.iter().map(|c| c.0).collect();
    let integrations: Vec<Uuid> = companies.iter().map(|c| c.1).collect();
    let users: Vec<Option<Uuid>> = companies.iter().map(|c| c.2).collect();

    // Text of the template's ids, replaced by the copy's in payloads.
    let remap = |text: &str| {
        let mut out = format!(
            "replace(replace(replace({text}, '{}', {COMPANY}::text), '{}', {TICKET_ID}::text), '{}', {ACTION_ID}::text)",
            template.company, template.ticket, template.action
        );
        if let Some(i) = template.integration {
            out = format!("replace({out}, '{i}', {INTEGRATION}::text)");
        }
        out
    };
    let mut inserts = Vec::new();
    let mut insert = async |conn: &mut PgConnection,
                            table: &str,
                            template_where: &str,
                            overrides: &[(&str, String)],
                            rows: u64|
           -> anyhow::Result<u64> {
        if rows == 0 {
            return Ok(0);
        }
        let (columns, select) = copy_list(conn, table, overrides).await?;
        let sql = format!(
            "WITH tpl AS (SELECT * FROM {table} r WHERE {template_where}),
                  base AS (SELECT created_at AS base FROM tickets WHERE id = $5),
                  g AS ({ROWS})
             INSERT INTO {table} ({columns})
             SELECT {select} FROM tpl, base, g"
        );
        let t0 = Instant::now();
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(rows)?)
            .bind(&company_ids)
            .bind(&integrations)
            .bind(&users)
            .bind(template.ticket)
            .bind(template.action)
            .bind(template.job.as_deref())
            .bind(anchor)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("seeding {table}"))?
            .rows_affected();
        inserts.push((table.to_owned(), done, t0.elapsed().as_secs_f64()));
        Ok(done)
    };

    insert(
        conn,
        "tickets",
        "r.id = $5",
        &[
            ("id", TICKET_ID.into()),
            ("company_id", COMPANY.into()),
            (
                "created_by_user_id",
                format!("CASE WHEN tpl.created_by_user_id IS NULL THEN NULL ELSE {USER} END"),
            ),
        ],
        history,
    )
    .await?;
    let job_id = if template.job.is_some() {
        HISTORY_JOB_ID
    } else {
        "NULL::text"
    };
    insert(
        conn,
        "ticket_actions",
        "r.id = $6",
        &[
            ("id", ACTION_ID.into()),
            ("ticket_id", TICKET_ID.into()),
            ("company_id", COMPANY.into()),
            (
                "integration_id",
                format!("CASE WHEN tpl.integration_id IS NULL THEN NULL ELSE {INTEGRATION} END"),
            ),
            ("job_id", job_id.into()),
        ],
        history,
    )
    .await?;
    let audit_rows = insert(
        conn,
        "audit_logs",
        "r.company_id = (SELECT company_id FROM tickets WHERE id = $5) AND r.entity_id IN ($5, $6)",
        &[
            (
                "id",
                time_ordered_id!("'txdx-bench-history-audit-' || g.n || '-' || tpl.id").into(),
            ),
            ("company_id", COMPANY.into()),
            (
                "actor_user_id",
                format!("CASE WHEN tpl.actor_user_id IS NULL THEN NULL ELSE {USER} END"),
            ),
            (
                "entity_id",
                format!("CASE WHEN tpl.entity_id = $5 THEN {TICKET_ID} ELSE {ACTION_ID} END"),
            ),
            (
                "payload",
                format!("({})::jsonb", remap("tpl.payload::text")),
            ),
        ],
        history,
    )
    .await?;
    let payload = format!(
        "convert_to({}, 'UTF8')",
        remap("convert_from(tpl.job, 'UTF8')")
    );
    let mut pending_seeded = 0;
    if template.job.is_some() {
        insert(
            conn,
            "apalis.jobs",
            "r.id = $7",
            &[
                ("id", HISTORY_JOB_ID.into()),
                ("job", payload.clone()),
                ("idempotency_key", "NULL".into()),
            ],
            history,
        )
        .await?;
        pending_seeded = insert(
            conn,
            "apalis.jobs",
            "r.id = $7",
            &[
                ("id", PENDING_JOB_ID.into()),
                ("job", payload),
                ("idempotency_key", "NULL".into()),
                ("status", "'Pending'".into()),
                ("attempts", "0".into()),
                (
                    "run_at",
                    "now() + interval '1 day' + g.n * interval '1 millisecond'".into(),
                ),
                ("lock_at", "NULL".into()),
                ("lock_by", "NULL".into()),
                ("done_at", "NULL".into()),
                ("last_result", "NULL".into()),
            ],
            pending,
        )
        .await?;
    }
    let _ = sqlx::query("RESET session_replication_role")
        .execute(&mut *conn)
        .await;

    let settled = probe::settle(conn).await.context("after seeding")?;
    if let Some(e) = settled.no_checkpoint {
        notes.push(format!("no CHECKPOINT after seeding ({e})"));
    }
    let vacuum_secs = settled.seconds;
    Ok(Seeded {
        history_jobs: history,
        pending_jobs: pending_seeded,
        audit_rows_per_ticket: audit_rows.checked_div(history).unwrap_or(0),
        companies: company_ids.len(),
        triggers_skipped,
        inserts,
        vacuum_secs,
        seconds: 0.0,
        notes,
    })
}

/// The newest EXECUTED ticket with exactly one SUCCEEDED action, and that
/// action's job when it is still in `apalis.jobs` as `Done`.
async fn template(conn: &mut PgConnection) -> anyhow::Result<Template> {
    sqlx::query_as::<_, Template>(
        "SELECT t.id AS ticket, a.id AS action, j.id AS job, t.company_id AS company, a.integration_id AS integration
         FROM tickets t
         JOIN ticket_actions a ON a.ticket_id = t.id AND a.status = 'SUCCEEDED'
         LEFT JOIN apalis.jobs j ON j.id = a.job_id AND j.status = 'Done'
         WHERE t.status = 'EXECUTED'
           AND NOT EXISTS (SELECT 1 FROM ticket_actions o WHERE o.ticket_id = t.id AND o.id <> a.id)
         ORDER BY (j.id IS NULL), t.executed_at DESC
         LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?
    .context("no EXECUTED ticket with one SUCCEEDED action to copy")
}

/// The column list of `table` and the matching select list of a copy of
/// its template row `tpl`: an override where given, every other
/// `timestamptz` column moved to the copy's time (`g.at` plus its distance
/// from the template ticket's `created_at`), everything else copied as is.
/// Column names come from the catalog; generated columns are left out.
async fn copy_list(
    conn: &mut PgConnection,
    table: &str,
    overrides: &[(&str, String)],
) -> anyhow::Result<(String, String)> {
    let columns: Vec<(String, bool)> = sqlx::query_as(
        "SELECT attname::text, atttypid = 'timestamptz'::regtype FROM pg_attribute
         WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
         ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let mut names = Vec::new();
    let mut select = Vec::new();
    for (name, timestamp) in &columns {
        anyhow::ensure!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{table}.{name:?}: not a plain column name"
        );
        names.push(format!("\"{name}\""));
        select.push(
            if let Some((_, expr)) = overrides.iter().find(|(c, _)| c == name) {
                expr.clone()
            } else if *timestamp {
                format!("g.at + (tpl.\"{name}\" - base.base)")
            } else {
                format!("tpl.\"{name}\"")
            },
        );
    }
    Ok((names.join(", "), select.join(", ")))
}
