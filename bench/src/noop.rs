//! Bare apalis: `n` no-op jobs pushed with apalis-postgres's own
//! `push_tasks`, then drained by one apalis worker (fetch batch =
//! concurrency = 64, LISTEN/NOTIFY plus a 1 s poll, as the product's
//! worker). What the queue library costs before any of our work.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::{
    BackendExt, BoxDynError, Data, Monitor, Strategy, TaskBuilder, TaskId, WorkerBuilder,
    WorkerBuilderExt,
};
use apalis_postgres::{PostgresStorage, Pubsub};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

const QUEUE: &str = "bench::noop";

/// The job: nothing to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NoopJob {
    n: u64,
}

/// What the drain measured.
#[derive(Debug, Clone, Serialize)]
pub struct NoopDrain {
    /// Jobs.
    pub jobs: u64,
    /// Fetch batch and concurrency.
    pub concurrency: usize,
    /// Jobs per second pushed (1,000 per statement).
    pub push_per_sec: f64,
    /// Jobs per second drained, from the worker's start to the last job
    /// marked done in the table.
    pub drain_per_sec: f64,
    /// Server CPU per wall second while draining, when measurable.
    pub postgres_cores: Option<f64>,
    /// This process's CPU per wall second while draining (the worker).
    pub worker_cores: Option<f64>,
}

async fn noop(_job: NoopJob, done: Data<Arc<AtomicU64>>) -> Result<(), BoxDynError> {
    done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn remaining(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status <> 'Done'")
        .bind(QUEUE)
        .fetch_one(pool)
        .await
}

/// Pushes `jobs` no-op jobs into the (fresh) database behind `pool`, then
/// drains them with one worker.
///
/// # Errors
/// Database or queue failures, or a drain that stalls for 10 minutes.
pub async fn run(pool: &PgPool, jobs: u64, postmaster: Option<u32>) -> anyhow::Result<NoopDrain> {
    const CONCURRENCY: usize = 64;
    PostgresStorage::setup(pool).await?;
    let pushed = Instant::now();
    let mut next = 0u64;
    while next < jobs {
        let chunk = (jobs - next).min(1000);
        let mut tasks = Vec::new();
        for n in next..next + chunk {
            tasks.push(
                TaskBuilder::new(serde_json::to_vec(&NoopJob { n })?)
                    .task_id(TaskId::from_string(ulid::Ulid::generate().to_string()))
                    .build(),
            );
        }
        let mut conn = pool.acquire().await?;
        apalis_postgres::queries::push_tasks(&mut *conn, QUEUE, tasks).await?;
        next += chunk;
    }
    #[expect(clippy::cast_precision_loss, reason = "a job count")]
    let push_per_sec = jobs as f64 / pushed.elapsed().as_secs_f64().max(1e-9);

    let done = Arc::new(AtomicU64::new(0));
    let config = apalis_postgres::Config::default()
        .queue(QUEUE)
        .batch_size(CONCURRENCY)
        .heartbeat_interval(Duration::from_secs(5))
        .missed_heartbeats(6);
    let worker_pool = pool.clone();
    let watch_pool = pool.clone();
    let me = std::process::id();
    let cpu_before = (
        postmaster.and_then(crate::procfs::postgres_cpu_seconds),
        crate::procfs::cpu_seconds(me, false),
    );
    let started = Instant::now();
    let stall = Duration::from_secs(600);
    let finished: Arc<std::sync::Mutex<Option<anyhow::Result<Duration>>>> = Arc::default();
    let result = finished.clone();
    Monitor::new()
        .register(move |_restarts| {
            let wake = Strategy::new()
                .stream(Pubsub::new(worker_pool.clone(), QUEUE.to_owned()))
                .interval(Duration::from_secs(1));
            let backend = PostgresStorage::<NoopJob>::new(&worker_pool)
                .with_config(config.clone())
                .poll_with_strategy(wake);
            WorkerBuilder::new(format!("bench-noop-{}", ulid::Ulid::generate()))
                .backend(backend)
                .data(done.clone())
                .concurrency(CONCURRENCY)
                .build(noop)
        })
        .shutdown_timeout(Duration::from_secs(10))
        .run_with_signal(async move {
            let outcome = loop {
                match remaining(&watch_pool).await {
                    Ok(0) => break Ok(started.elapsed()),
                    Ok(_) if started.elapsed() > stall => {
                        break Err(anyhow::anyhow!("the no-op drain stalled"));
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => break Err(e.into()),
                }
            };
            *result
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outcome);
            Ok(())
        })
        .await?;
    let took = finished
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or_else(|| Err(anyhow::anyhow!("the no-op drain ended without a result")))?;
    let wall = took.as_secs_f64().max(1e-9);
    let cpu_after = (
        postmaster.and_then(crate::procfs::postgres_cpu_seconds),
        crate::procfs::cpu_seconds(me, false),
    );
    #[expect(clippy::cast_precision_loss, reason = "a job count")]
    Ok(NoopDrain {
        jobs,
        concurrency: CONCURRENCY,
        push_per_sec,
        drain_per_sec: jobs as f64 / wall,
        postgres_cores: cpu_before.0.zip(cpu_after.0).map(|(a, b)| (b - a) / wall),
        worker_cores: cpu_before.1.zip(cpu_after.1).map(|(a, b)| (b - a) / wall),
    })
}
