//! TxDx worker: executes ticket actions from the apalis queue.
//!
//! [`run`] builds the apalis monitor over apalis-postgres with the settings
//! the queue's traps call for (see ARCHITECTURE.md): LISTEN/NOTIFY plus a
//! short fallback poll, an explicit heartbeat × missed-beats orphan window,
//! fetch batch = concurrency, and a fresh worker id per incarnation. Beside
//! it run the [`maintenance`] tasks (queue gauges, job retention), stopped
//! with it.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use apalis::prelude::{
    Attempt, BackendExt, BoxDynError, Data, Monitor, TaskId, WorkerBuilder, WorkerBuilderExt,
    WorkerContext,
};
use apalis_postgres::{PostgresStorage, Pubsub};
use shared::{
    config::Config,
    jobs::{ACTION_QUEUE, ActionJob, CHECK_QUEUE, CheckJob},
};

/// Integration connection tests.
pub mod checks;
/// One delivery: claim, run, record.
pub mod handler;
/// Periodic tasks: queue gauges, job retention.
pub mod maintenance;
/// Provider clients behind one interface.
pub mod providers;
/// The action queue's backend: the claim in the fetch transaction.
pub mod queue;
/// Backoff policy.
pub mod retry;
/// When a worker looks at the queue.
pub mod wake;

use handler::WorkerState;

/// How often a worker looks for connection tests (the check queue).
const CHECK_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Builds the worker state from configuration (pool, secret store, clients).
///
/// # Errors
/// When the database is unreachable, the schema is missing, or the secret
/// store cannot be set up; each with a one-line reason.
pub async fn prepare(config: &Config) -> anyhow::Result<Arc<WorkerState>> {
    // Batches need few connections; one per in-flight action only on the
    // one-by-one paths (limits, per-key serialisation), which wait for a
    // connection beyond this cap rather than exhaust the server's.
    let connections = u32::try_from(config.worker_concurrency.min(32)).unwrap_or(32) + 4;
    let pool = shared::db::connect_lazy(config.database_url.expose(), connections.max(6))
        .context("DATABASE_URL is invalid")?;
    let applied = shared::db::migrations_applied(&pool)
        .await
        .context("the database is unreachable")?;
    if !applied {
        anyhow::bail!("the database schema is missing or outdated: run `api migrate` first");
    }
    // The local secret store reads through a small pool of its own (lazy:
    // with Azure Key Vault it never connects). The first action of each
    // integration reads its secret; with many integrations those reads,
    // up to one per action in flight, widened the batches' pool to its cap
    // (BENCHMARKS.md, the 1,000-company drain).
    let secrets_pool = shared::db::connect_lazy(config.database_url.expose(), 4)
        .context("DATABASE_URL is invalid")?;
    let secrets = shared::secrets::from_config(config, &secrets_pool).context("secret store")?;
    let secrets: Arc<dyn shared::secrets::SecretStore> = Arc::new(
        shared::secrets::cache::CachedSecretStore::new(secrets, config.secret_cache_ttl),
    );
    match secrets.check().await {
        Ok(()) => tracing::info!("secrets: {}", secrets.describe()),
        Err(e) => anyhow::bail!("secret store does not answer: {e}"),
    }
    // Two lanes: one batch gathers while the other is in the database.
    // Each starts as soon as it holds a request: claims and outcomes come
    // in bursts (a fetch's deliveries), and holding the second lane back
    // until the first commits left their batch sizes where they were
    // (BENCHMARKS.md, "One transaction at a time below saturation").
    let lanes = shared::batch::Lanes {
        count: 2,
        max_batch: config.worker_concurrency,
        overlap_at: 1,
    };
    let claims = shared::batch::Batcher::spawn("claims", lanes, {
        let pool = pool.clone();
        move |jobs| handler::claim_jobs(pool.clone(), jobs)
    });
    let stale_running_after =
        config.action_timeout + config.queue_heartbeat * config.queue_missed_heartbeats as u32;
    let finished = Arc::new(queue::Finished::new(stale_running_after));
    let outcomes = shared::batch::Batcher::spawn("outcomes", lanes, {
        let pool = pool.clone();
        let finished = finished.clone();
        move |items| handler::record_outcomes(pool.clone(), finished.clone(), items)
    });
    Ok(Arc::new(WorkerState {
        preclaimed: Arc::new(queue::Preclaimed::new(stale_running_after)),
        finished,
        claims,
        outcomes,
        pool,
        secrets,
        providers: providers::Providers::new().context("cannot build the HTTP client")?,
        backoff: retry::Backoff {
            base: config.retry_backoff_base,
            cap: config.retry_backoff_cap,
        },
        action_timeout: config.action_timeout,
        claim: shared::db::actions::ClaimPolicy {
            stale_running_after,
        },
    }))
}

/// Delay between restarts of a failed worker loop: 100 ms doubling to 5 s,
/// reset after a minute without failures.
#[derive(Default)]
struct RestartBackoff(std::sync::Mutex<(u32, Option<std::time::Instant>)>);

impl RestartBackoff {
    fn next_delay(&self) -> Duration {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if state
            .1
            .is_some_and(|last| now.duration_since(last) > Duration::from_secs(60))
        {
            state.0 = 0;
        }
        state.1 = Some(now);
        let delay = Duration::from_millis(100u64.saturating_mul(1 << state.0.min(6)))
            .min(Duration::from_secs(5));
        state.0 = state.0.saturating_add(1);
        delay
    }
}

async fn handle_check(job: CheckJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    checks::run_check(&state, &job).await.map_err(|e| {
        tracing::error!("connection test {} failed to record: {e}", job.check_id);
        Box::new(e) as BoxDynError
    })
}

async fn handle(
    job: ActionJob,
    state: Data<Arc<WorkerState>>,
    task_id: TaskId,
    attempt: Attempt,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    let delivery = handler::JobDelivery::new(task_id, attempt.current(), worker.name())?;
    let delivered = handler::execute_action(&state, &job, delivery).await;
    // How long a delivery holds its slot: claim, provider call, outcome.
    metrics::histogram!("txdx_worker_delivery_seconds").record(started.elapsed().as_secs_f64());
    delivered.map_err(|e| {
        tracing::error!(action.id = %job.action_id, "delivery of action {} failed: {e}", job.action_id);
        Box::new(e) as BoxDynError
    })
}

/// Runs the worker until `shutdown` resolves, then stops fetching and waits
/// up to the configured timeout for in-flight actions.
///
/// # Errors
/// When the monitor fails for good.
pub async fn run(
    config: &Config,
    state: Arc<WorkerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let concurrency = config.worker_concurrency;
    let poll_interval = config.queue_poll_interval;
    let (fetch_cooldown, fetch_cooldown_full_at) = (
        config.queue_fetch_cooldown,
        config.queue_fetch_cooldown_full_at,
    );
    // The fetch already takes each job for this worker (`Queued`, with
    // its `lock_by`), which is all that orphan rescue and the ack need;
    // apalis's lock event would write every job row a second time just to
    // say `Running` (our `ticket_actions` row says that).
    let queue_config = apalis_postgres::Config::default()
        .queue(ACTION_QUEUE)
        .lock_tasks(false)
        .batch_size(concurrency)
        .heartbeat_interval(config.queue_heartbeat)
        .missed_heartbeats(config.queue_missed_heartbeats);
    let pool = state.pool.clone();
    // Unique per process incarnation: a restarted worker must not inherit
    // (and strand) the jobs its dead predecessor held.
    let incarnation = uuid::Uuid::now_v7().simple().to_string();
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    tracing::info!(
        concurrency,
        queue = ACTION_QUEUE,
        "worker {host}-{incarnation} starting"
    );
    let maintenance = maintenance::Maintenance::spawn(
        state.pool.clone(),
        maintenance::MaintenanceSettings {
            metrics_interval: config.queue_metrics_interval,
            job_retention: config.job_retention,
            retention_interval: config.job_retention_interval,
        },
    );
    let restart_backoff = RestartBackoff::default();
    let check_config = apalis_postgres::Config::default()
        .queue(CHECK_QUEUE)
        .lock_tasks(false)
        .batch_size(2)
        .heartbeat_interval(config.queue_heartbeat)
        .missed_heartbeats(config.queue_missed_heartbeats);
    let state_for_checks = state.clone();
    let host_for_checks = host.clone();
    let incarnation_for_checks = incarnation.clone();
    let monitor = Monitor::new()
        .register(move |restarts| {
            // LISTEN/NOTIFY wakes the worker at once; the short poll is
            // the fallback for lost notifications and for jobs whose run
            // time (a retry's backoff) has just arrived.
            let wake = wake::WakeUp::new(
                Pubsub::new(pool.clone(), ACTION_QUEUE.to_owned()),
                poll_interval,
            );
            let backend = queue::ActionQueue::new(
                &pool,
                queue_config.clone(),
                state.preclaimed.clone(),
                state.finished.clone(),
                wake,
                fetch_cooldown,
                fetch_cooldown_full_at,
            );
            WorkerBuilder::new(format!("txdx-{host}-{incarnation}-{restarts}"))
                .backend(backend)
                .data(state.clone())
                .concurrency(concurrency)
                .build(handle)
        })
        .register({
            let pool = state_for_checks.pool.clone();
            let state = state_for_checks.clone();
            let config = check_config.clone();
            let name = format!("txdx-{host_for_checks}-{incarnation_for_checks}-checks");
            move |restarts| {
                // A tick alone. A listener wakes its worker's task on every
                // notification, whatever its queue, before it filters them,
                // and apalis-postgres fetches on every wake: each new action
                // job cost every worker process an empty fetch of this queue,
                // half the `get_jobs` calls at 150 tickets/s (BENCHMARKS.md).
                // A connection test waits a quarter of a second at most.
                let wake = wake::WakeUp::every(CHECK_POLL_INTERVAL);
                let backend = PostgresStorage::<CheckJob>::new(&pool)
                    .with_config(config.clone())
                    .poll_with_strategy(wake);
                WorkerBuilder::new(format!("{name}-{restarts}"))
                    .backend(backend)
                    .data(state.clone())
                    .concurrency(2)
                    .build(handle_check)
            }
        })
        // A worker whose loop died (e.g. a long database outage) is restarted
        // under a new name; apalis's orphan rescue returns its jobs.
        .should_restart(move |_ctx, err| {
            // Back off between restarts so a persistent failure (database
            // down) does not spin; the monitor's callback is synchronous.
            let delay = restart_backoff.next_delay();
            tracing::warn!(
                "worker loop ended ({err}); restarting in {} ms",
                delay.as_millis()
            );
            std::thread::sleep(delay);
            true
        })
        .shutdown_timeout(config.shutdown_timeout)
        .run_with_signal(async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new jobs; waiting for in-flight actions");
            Ok(())
        })
        .await;
    maintenance.stop().await;
    monitor.context("worker monitor")?;
    Ok(())
}
