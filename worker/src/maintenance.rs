//! Periodic work beside the queue consumer: the queue depth gauges and the
//! retention sweep of finished job rows (apalis never deletes them).
//!
//! Both run as tasks owned by a
//! [`Maintenance`](crate::maintenance::Maintenance) handle, never detached:
//! [`Maintenance::stop`](crate::maintenance::Maintenance::stop) signals them
//! and waits for them to end, so a graceful shutdown leaves nothing running.

use std::time::Duration;

use shared::{PgPool, db, jobs::ACTION_QUEUE};
use tokio::{sync::watch, task::JoinSet, time::MissedTickBehavior};

/// Rows deleted per retention statement.
pub const RETENTION_BATCH: i64 = 1000;

/// When the periodic tasks run.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceSettings {
    /// Refresh period of the queue gauges.
    pub metrics_interval: Duration,
    /// Finished jobs older than this are deleted.
    pub job_retention: Duration,
    /// Period of the retention sweep.
    pub retention_interval: Duration,
}

/// The running periodic tasks of one worker process.
pub struct Maintenance {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Maintenance {
    /// Starts the gauge refresher and the retention sweeper.
    pub fn spawn(pool: PgPool, settings: MaintenanceSettings) -> Self {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(refresh_queue_gauges(
            pool.clone(),
            settings.metrics_interval,
            stopped.clone(),
        ));
        tasks.spawn(sweep_finished_jobs(
            pool,
            settings.job_retention,
            settings.retention_interval,
            stopped,
        ));
        Self { stop, tasks }
    }

    /// Stops both tasks (a sweep in progress is cancelled; its finished
    /// batches stay deleted) and waits for them.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Resolves when a stop is signalled (or the handle is gone).
async fn stop_signalled(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Sets the queue gauges every `interval`. Every worker reports the same
/// queue-wide values: aggregate them with `max`, not `sum`.
async fn refresh_queue_gauges(
    pool: PgPool,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop_signalled(&mut stopped) => return,
            _ = ticks.tick() => {}
        }
        let stats = async {
            let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
            db::apalis_queue::queue_stats(&mut conn, ACTION_QUEUE).await
        };
        let stats = tokio::select! {
            () = stop_signalled(&mut stopped) => return,
            stats = stats => stats,
        };
        match stats {
            Ok(stats) => {
                metrics::gauge!("txdx_worker_queue_jobs", "state" => "ready")
                    .set(stats.ready as f64);
                metrics::gauge!("txdx_worker_queue_jobs", "state" => "scheduled")
                    .set(stats.scheduled as f64);
                metrics::gauge!("txdx_worker_queue_jobs", "state" => "running")
                    .set(stats.running as f64);
                metrics::gauge!("txdx_worker_queue_oldest_ready_seconds")
                    .set(stats.oldest_ready_age_secs);
            }
            Err(e) => tracing::warn!("queue gauges not refreshed: {e}"),
        }
    }
}

/// Deletes finished jobs older than `retention` every `interval`; one
/// process at a time sweeps (the others skip that round).
async fn sweep_finished_jobs(
    pool: PgPool,
    retention: Duration,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop_signalled(&mut stopped) => return,
            _ = ticks.tick() => {}
        }
        let sweep =
            db::apalis_queue::purge_finished_jobs(&pool, ACTION_QUEUE, retention, RETENTION_BATCH);
        let result = tokio::select! {
            () = stop_signalled(&mut stopped) => return,
            result = sweep => result,
        };
        match result {
            Ok(Some(purged)) => {
                metrics::counter!("txdx_worker_retention_deleted_jobs_total")
                    .increment(purged.jobs);
                if purged.jobs > 0 || purged.workers > 0 {
                    tracing::info!(
                        jobs = purged.jobs,
                        workers = purged.workers,
                        "retention: deleted {} finished jobs and {} silent workers older than {} s",
                        purged.jobs,
                        purged.workers,
                        retention.as_secs()
                    );
                }
            }
            Ok(None) => tracing::debug!("retention: another worker is sweeping"),
            Err(e) => tracing::warn!("retention sweep failed: {e}"),
        }
    }
}
