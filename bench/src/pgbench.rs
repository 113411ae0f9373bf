//! PostgreSQL's own limit for a job queue on this machine: `pgbench` running
//! the lifecycle of a job (insert; claim with `FOR UPDATE SKIP LOCKED`; mark
//! done) on a table shaped like `apalis.jobs`, one job per transaction and
//! 100 jobs per statement. Our pipeline's figures are reported as ratios of
//! these.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::PgPool;

/// The queue table and the index its claim uses (apalis's, minus columns
/// the lifecycle does not touch).
const SCHEMA: &str = "
CREATE TABLE jobs (
    id        bigserial   PRIMARY KEY,
    job_type  text        NOT NULL,
    job       bytea       NOT NULL,
    status    text        NOT NULL DEFAULT 'Pending',
    attempts  integer     NOT NULL DEFAULT 0,
    priority  integer     NOT NULL DEFAULT 0,
    run_at    timestamptz NOT NULL DEFAULT now(),
    lock_by   text,
    lock_at   timestamptz,
    done_at   timestamptz
);
CREATE INDEX jobs_fetch_idx ON jobs (job_type, priority DESC, run_at) WHERE status = 'Pending';
CREATE INDEX jobs_lock_by_idx ON jobs (lock_by);
";

/// One job per transaction: 3 transactions per job.
const ONE_AT_A_TIME: &str = r#"INSERT INTO jobs (job_type, job) VALUES ('action', convert_to('{"company_id":"6f1c2a4e-0d55-4d1a-9a43-0c5b3e8d8a11","ticket_id":"0b8e0f57-6f0b-4b4f-9e3e-2c1d8f5f7a21","action_id":"4a7d7c8e-1b2f-4c3d-8e9f-a0b1c2d3e4f5"}', 'UTF8'));
WITH next AS (SELECT id FROM jobs WHERE job_type = 'action' AND status = 'Pending' AND run_at <= now() ORDER BY priority DESC, run_at LIMIT 1 FOR UPDATE SKIP LOCKED), claimed AS (UPDATE jobs j SET status = 'Running', attempts = j.attempts + 1, lock_by = :client_id::text, lock_at = now() FROM next WHERE j.id = next.id RETURNING j.id) SELECT coalesce(max(id), 0) AS job_id FROM claimed
\gset
UPDATE jobs SET status = 'Done', done_at = now() WHERE id = :job_id;
"#;

/// 100 jobs per statement: 3 transactions per 100 jobs.
const BATCHED: &str = r#"INSERT INTO jobs (job_type, job) SELECT 'action', convert_to('{"company_id":"6f1c2a4e-0d55-4d1a-9a43-0c5b3e8d8a11","ticket_id":"0b8e0f57-6f0b-4b4f-9e3e-2c1d8f5f7a21","action_id":"4a7d7c8e-1b2f-4c3d-8e9f-a0b1c2d3e4f5"}', 'UTF8') FROM generate_series(1, 100);
WITH next AS (SELECT id FROM jobs WHERE job_type = 'action' AND status = 'Pending' AND run_at <= now() ORDER BY priority DESC, run_at LIMIT 100 FOR UPDATE SKIP LOCKED) UPDATE jobs j SET status = 'Running', attempts = j.attempts + 1, lock_by = :client_id::text, lock_at = now() FROM next WHERE j.id = next.id;
UPDATE jobs SET status = 'Done', done_at = now() WHERE lock_by = :client_id::text AND status = 'Running';
"#;

/// Jobs per script run of [`BATCHED`].
pub const BATCH: f64 = 100.0;

/// One pgbench run.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchRun {
    /// `one-at-a-time` or `batched-100`.
    pub script: String,
    /// Client connections.
    pub clients: usize,
    /// Seconds.
    pub seconds: u64,
    /// Script runs per second as pgbench reports them.
    pub scripts_per_sec: f64,
    /// Jobs through their whole lifecycle per second.
    pub jobs_per_sec: f64,
    /// Mean latency of one script run (ms).
    pub latency_ms: f64,
    /// Server CPU seconds per wall second during the run, when measurable.
    pub postgres_cores: Option<f64>,
}

/// Creates the queue table in the (fresh) database behind `pool`.
///
/// # Errors
/// Database failures.
pub async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    Ok(())
}

/// Runs one script for `seconds` with `clients` connections.
///
/// # Errors
/// When pgbench is missing, fails, or prints no throughput.
pub async fn run(
    pgbench: &Path,
    url: &str,
    work_dir: &Path,
    batched: bool,
    clients: usize,
    seconds: u64,
    postmaster: Option<u32>,
) -> anyhow::Result<PgbenchRun> {
    let (name, script) = if batched {
        ("batched-100", BATCHED)
    } else {
        ("one-at-a-time", ONE_AT_A_TIME)
    };
    let file = work_dir.join(format!("pgbench-{name}.sql"));
    std::fs::write(&file, script)?;
    let cpu_before = postmaster.and_then(crate::procfs::postgres_cpu_seconds);
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-j", "2"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-T")
        .arg(seconds.to_string())
        .arg("-f")
        .arg(&file)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", pgbench.display()))?;
    let wall = started
        .elapsed()
        .max(Duration::from_millis(1))
        .as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench {name} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = field(&stdout, "tps = ").context("pgbench printed no tps")?;
    let latency_ms = field(&stdout, "latency average = ").unwrap_or(0.0);
    let postgres_cores = match (
        cpu_before,
        postmaster.and_then(crate::procfs::postgres_cpu_seconds),
    ) {
        (Some(a), Some(b)) => Some((b - a) / wall),
        _ => None,
    };
    Ok(PgbenchRun {
        script: name.into(),
        clients,
        seconds,
        scripts_per_sec: tps,
        jobs_per_sec: if batched { tps * BATCH } else { tps },
        latency_ms,
        postgres_cores,
    })
}

/// The number after `key` on pgbench's output.
fn field(output: &str, key: &str) -> Option<f64> {
    output.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_and_latency_are_read_from_pgbench_output() {
        let out = "number of failed transactions: 0 (0.000%)\nlatency average = 2.345 ms\ninitial connection time = 3.1 ms\ntps = 3407.551839 (without initial connection time)\n";
        assert_eq!(field(out, "tps = "), Some(3407.551839));
        assert_eq!(field(out, "latency average = "), Some(2.345));
    }
}
