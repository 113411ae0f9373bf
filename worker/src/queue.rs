//! The ticket-action queue's apalis backend: apalis-postgres's tables,
//! queries and worker bookkeeping, with the claim made in the fetch's own
//! transaction.
//!
//! apalis-postgres hands a fetched batch to the worker one job at a time, as
//! slots free up, so the claims of one fetch reached the claim batcher
//! spread out and went in several small transactions (BENCHMARKS.md: 16 rows
//! a claim for fetches of 55). Here [`ActionQueue`](crate::queue::ActionQueue) fetches with
//! apalis-postgres's own `get_jobs` query and, in the same transaction,
//! claims every plain job of the batch
//! ([`claim_batch`](shared::db::actions::claim_batch)); the claims wait in
//! [`Preclaimed`](crate::queue::Preclaimed) for their deliveries. A job the batch does
//! not claim (limits, a closed ticket, a finished action) takes the
//! handler's usual path. Registration, heartbeats, orphan rescue and
//! re-enqueueing are apalis-postgres's own queries; the ack
//! ([`finish_jobs`](shared::db::apalis_queue::finish_jobs)) writes the row
//! its `handle_results` writes, by primary key from arrays. The outcome
//! batch writes that same row with its outcomes and leaves it in
//! [`Finished`](crate::queue::Finished); an ack that would write it again
//! is skipped, so the worker's loop, which runs fetches and acks one at a
//! time, spends its time fetching. So apalis's dashboard and its recovery
//! see exactly what they would with its `PostgresStorage`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis::prelude::{Backend, Status, WorkerContext};
use apalis_codec::json::JsonCodec;
use apalis_core::backend::{
    BackendConfig, WireFormatBackend,
    finalize::Durable,
    persistence::{Persisted, Persistence, State, TaskEvent, TaskPersistLayer},
};
use apalis_postgres::{Config, Error, PgTask, Pubsub, queries};
use serde_json::Value;
use shared::{
    PgPool,
    db::{self, actions::Claimed},
    jobs::ActionJob,
};
use uuid::Uuid;

use crate::{handler::distinct, wake::WakeUp};

/// Values handed from one step of a delivery to a later one, each taken
/// once; a value never taken (the worker loop died before the later step)
/// is dropped after `max_age`.
pub struct Handoff<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    max_age: Duration,
}

/// Claims made at fetch time, waiting for their deliveries, by action id.
///
/// A claim whose delivery never comes is dropped; its job is redelivered by
/// apalis's orphan rescue and claimed again, as after a crash.
pub type Preclaimed = Handoff<Uuid, Claimed>;

/// Jobs ended with their outcomes (in the outcome batch's transaction) as
/// apalis's ack of a handler's `Ok(())` ends them, waiting for that ack: by
/// job id, apalis's attempt count. An ack that says `Done`, `Ok(null)`, at
/// that attempt would write the row again and is skipped.
pub type Finished = Handoff<String, i32>;

impl<K: Eq + std::hash::Hash, V> Handoff<K, V> {
    /// An empty store whose values are dropped after `max_age`.
    #[must_use]
    pub fn new(max_age: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_age,
        }
    }

    /// The value put for `key`, if any (taken).
    pub fn take(&self, key: &K) -> Option<V> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .map(|(value, _)| value)
    }

    /// Puts `values`, and drops the values older than `max_age`.
    pub fn put(&self, values: impl IntoIterator<Item = (K, V)>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, (_, at)| now.duration_since(*at) < self.max_age);
        entries.extend(values.into_iter().map(|(k, v)| (k, (v, now))));
    }
}

/// apalis-postgres's persistence for the action queue, with the claim in
/// the fetch transaction.
#[derive(Clone)]
pub struct ActionFetch {
    pool: PgPool,
    config: Config,
    preclaimed: Arc<Preclaimed>,
    finished: Arc<Finished>,
    /// How many jobs the last fetch took. Fewer than it asked for: it took
    /// every job due then that no other fetch was taking.
    fetched: Arc<AtomicUsize>,
}

impl ActionFetch {
    /// `get_jobs`, then the claim of the batch's plain jobs, in one
    /// transaction. Jobs whose payload does not decode are left to the
    /// delivery (which reports them).
    async fn fetch_and_claim(&self, worker: &WorkerContext) -> Result<Vec<PgTask>, QueueError> {
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let tasks = queries::fetch_next(&mut *tx, &self.config, worker).await?;
        let jobs: Vec<ActionJob> = tasks
            .iter()
            .filter_map(|task| serde_json::from_slice(&task.args).ok())
            .collect();
        if jobs.is_empty() {
            tx.commit().await.map_err(Error::from)?;
            return Ok(tasks);
        }
        let companies = distinct(jobs.iter().map(|j| j.company_id));
        db::scope_tenants(&mut tx, &companies, db::Plans::Keyed).await?;
        let claimed = db::actions::claim_batch(&mut tx, &jobs).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        self.preclaimed.put(claimed);
        Ok(tasks)
    }

    /// [`db::actions::release_claims`] in a transaction of its own.
    async fn release(&self, claims: &[Claimed]) -> Result<u64, db::DbError> {
        let companies = distinct(claims.iter().map(|c| c.action.company_id));
        let mut tx = db::begin_tenants(&self.pool, &companies, db::Plans::PerExecution).await?;
        let released = db::actions::release_claims(&mut tx, claims).await?;
        tx.commit().await?;
        Ok(released)
    }
}

/// Records how long one of the queue's own steps took, in the histogram
/// `txdx_worker_queue_seconds{step}`, when dropped. apalis runs a worker's
/// fetches and acks one at a time, so their sum bounds the worker's pace.
struct StageTimer {
    step: &'static str,
    started: Instant,
}

impl StageTimer {
    fn start(step: &'static str) -> Self {
        Self {
            step,
            started: Instant::now(),
        }
    }
}

impl Drop for StageTimer {
    fn drop(&mut self) {
        metrics::histogram!("txdx_worker_queue_seconds", "step" => self.step)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Why [`ActionFetch::fetch_and_claim`] failed.
#[derive(Debug, thiserror::Error)]
enum QueueError {
    /// The queue's own part (connection, `get_jobs`).
    #[error(transparent)]
    Queue(#[from] Error),
    /// The claim, or the commit that carried it.
    #[error("claim: {0}")]
    Claim(#[from] db::DbError),
}

impl Persistence for ActionFetch {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = Error;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let queue = self.config.queue.as_ref();
        queries::reenqueue_orphaned(&mut *tx, queue, self.config.orphaned_duration().as_secs())
            .await?;
        let now = chrono::Utc::now().timestamp();
        queries::register_worker(&mut *tx, queue, worker, &now.into(), "PgStorage").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let queue = self.config.queue.as_ref();
        queries::keep_alive(&mut *tx, queue, worker).await?;
        queries::reenqueue_orphaned(&mut *tx, queue, self.config.orphaned_duration().as_secs())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<PgTask>, Error> {
        let _timer = StageTimer::start("fetch");
        let tasks = match self.fetch_and_claim(worker).await {
            Ok(tasks) => tasks,
            Err(QueueError::Queue(e)) => return Err(e),
            // The claim failed and the fetch rolled back with it: fetch
            // alone; the deliveries claim their jobs themselves.
            Err(e @ QueueError::Claim(_)) => {
                tracing::warn!("a fetch with its claim failed ({e}); fetching without the claim");
                let mut tx = self.pool.begin().await?;
                let tasks = queries::fetch_next(&mut *tx, &self.config, worker).await?;
                tx.commit().await?;
                tasks
            }
        };
        self.fetched.store(tasks.len(), Ordering::Relaxed);
        Ok(tasks)
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<PgTask>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        // The fetch claimed these jobs ahead of their deliveries: their
        // claims are released first, while the jobs are still this
        // worker's, so no other worker can have started them.
        let claims: Vec<Claimed> = tasks
            .iter()
            .filter_map(|task| serde_json::from_slice::<ActionJob>(&task.args).ok())
            .filter_map(|job| self.preclaimed.take(&job.action_id))
            .collect();
        if !claims.is_empty() {
            match self.release(&claims).await {
                Ok(released) => {
                    tracing::info!("{released} claims of jobs handed back unrun released");
                }
                // Their next deliveries claim them again, each at one
                // attempt more, as after a crash.
                Err(e) => tracing::warn!(
                    "releasing the claims of {} jobs handed back failed: {e}",
                    claims.len()
                ),
            }
        }
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.task_id().map(ToString::to_string))
            .collect();
        let mut tx = self.pool.begin().await?;
        let queue = self.config.queue.as_ref();
        let count = queries::reenqueue_abandoned(&mut *tx, queue, worker.name(), &ids).await?;
        if usize::try_from(count).ok() != Some(tasks.len()) {
            return Err(Error::ReenqueueMismatch {
                queued: tasks.len(),
                abandoned: usize::try_from(count).unwrap_or(usize::MAX),
            });
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        // The backend never asks for locks (`lock_tasks(false)`): the fetch
        // already took each job for this worker.
        let acks: Vec<_> = events
            .iter()
            .filter_map(|event| match event {
                TaskEvent::Complete(result) => Some(result),
                _ => None,
            })
            .collect();
        if acks.is_empty() {
            return Ok(());
        }
        // A job whose end was written with its outcome needs no second
        // write, if this ack says exactly the same.
        let mut ends = Vec::with_capacity(acks.len());
        for result in &acks {
            let written = self
                .finished
                .take(&result.task_id.to_string())
                .is_some_and(|attempt| {
                    i32::try_from(result.attempt) == Ok(attempt)
                        && result.status == Status::Done
                        && result.result == Ok(Value::Null)
                });
            if !written {
                ends.push(db::apalis_queue::JobEnd::of(result).map_err(Error::JsonError)?);
            }
        }
        let written_before = acks.len() - ends.len();
        if written_before > 0 {
            metrics::counter!("txdx_worker_job_ends_total", "written" => "with_outcome")
                .increment(written_before as u64);
        }
        if ends.is_empty() {
            return Ok(());
        }
        metrics::counter!("txdx_worker_job_ends_total", "written" => "by_ack")
            .increment(ends.len() as u64);
        let _timer = StageTimer::start("ack");
        let mut tx = db::begin_planned(&self.pool, db::Plans::Keyed).await?;
        db::apalis_queue::finish_jobs(&mut tx, &ends, worker.name()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<PgTask>) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, self.config.queue.as_ref(), tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The action queue as an apalis backend (see the module documentation).
///
/// Once a fetch has taken fewer jobs than it asked for, it has taken every
/// job then due, and the next fetch waits for a reason to look again: a
/// notification of a new job or the fallback tick of `wake`. apalis
/// otherwise fetches whenever it polls a worker's backend: after every
/// batch, and on every wake of the worker's task, which every finished
/// delivery and every ack cause. One worker taking 20 tickets sent one at
/// a time made 67 fetches; it now makes one a ticket (BENCHMARKS.md).
/// Every way a job becomes due at once notifies: apalis's insert trigger,
/// and the wake of a slot waiter
/// ([`wake_slot_waiters`](shared::db::limits::wake_slot_waiters)); jobs due
/// later (retries, snoozes, rescued orphans) are found by the tick. Such a
/// look starts no sooner than a cooldown after the previous fetch started,
/// so under load the notifications of a busy moment are answered by one
/// fetch that takes all their jobs, and their claims and outcomes share
/// transactions too. The cooldown follows the load (`FetchCooldown`).
pub struct ActionQueue {
    persistence: Persisted<ActionFetch>,
    codec: JsonCodec,
    wake: WakeUp<Pubsub>,
    fetched: Arc<AtomicUsize>,
    woken: bool,
    cooldown: FetchCooldown,
}

/// The least time between the starts of two fetches that a wake asked for:
/// the wakes that come sooner wait for its end and are answered by one
/// fetch. It follows the load, waiting at most `most`
/// (`QUEUE_FETCH_COOLDOWN_MS`):
/// - after a fetch of fewer than `full_at` jobs
///   (`QUEUE_FETCH_COOLDOWN_FULL_AT`), that share of `most`: a quiet
///   system's fetches take a job or none, and its next job waits a
///   sixteenth of the cooldown or nothing;
/// - and never longer than the jobs' pace, as the last fetch saw it, takes
///   to bring `enough` more (half a fetch): near saturation the whole
///   cooldown held back a worker whose fetches were already large (one
///   worker kept up with 3,279 tickets/s instead of 3,758).
///
/// In between, under load, each fetch waits the whole cooldown and takes
/// many jobs, which saves the fetches, claims and outcome transactions of
/// smaller batches (BENCHMARKS.md, "A fetch cooldown that follows the
/// load").
struct FetchCooldown {
    most: Duration,
    full_at: usize,
    enough: usize,
    /// When the last fetch started, and the one before it.
    last_start: Option<tokio::time::Instant>,
    previous_start: Option<tokio::time::Instant>,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl FetchCooldown {
    /// A cooldown of at most `most`, the whole of it after a fetch of
    /// `full_at` jobs (at least 1), and no longer than `enough` more jobs
    /// take to come; `0` never waits.
    fn new(most: Duration, full_at: usize, enough: usize) -> Self {
        Self {
            most,
            full_at: full_at.max(1),
            enough: enough.max(1),
            last_start: None,
            previous_start: None,
            timer: None,
        }
    }

    /// The cooldown after a fetch that took `took` jobs, which came in the
    /// `since` between the start of the fetch before it and its own.
    fn after(&self, took: usize, since: Option<Duration>) -> Duration {
        let share = u32::try_from(took.min(self.full_at)).unwrap_or(u32::MAX);
        let whole = u32::try_from(self.full_at).unwrap_or(u32::MAX);
        let cooldown = self.most * share / whole;
        let enough = u32::try_from(self.enough).unwrap_or(u32::MAX);
        match (since, u32::try_from(took)) {
            // The time `enough` more jobs take at that pace.
            (Some(since), Ok(took)) if took > 0 => cooldown.min(since * enough / took),
            _ => cooldown,
        }
    }

    /// Ready when a fetch may start now, after one that took `took` jobs;
    /// else pending, with `cx`'s waker held by a timer set to the moment it
    /// may.
    fn poll_ready(&mut self, cx: &mut Context<'_>, took: usize) -> Poll<()> {
        let Some(last) = self.last_start else {
            return Poll::Ready(());
        };
        let since = self.previous_start.map(|previous| last - previous);
        let due = last + self.after(took, since);
        if tokio::time::Instant::now() >= due {
            return Poll::Ready(());
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        timer.as_mut().poll(cx)
    }

    fn started(&mut self) {
        if !self.most.is_zero() {
            self.previous_start = self.last_start;
            self.last_start = Some(tokio::time::Instant::now());
        }
    }
}

impl ActionQueue {
    /// The queue named in `config`, read through `pool`; claims made at
    /// fetch time go to `preclaimed`, and the acks of jobs in `finished`
    /// are skipped. `wake` says when to look again after a fetch that
    /// drained the queue, and no such look starts sooner than its cooldown
    /// after the previous fetch started: `cooldown` after a fetch of
    /// `cooldown_full_at` jobs or more, that share of it after one of fewer.
    #[must_use]
    pub fn new(
        pool: &PgPool,
        config: Config,
        preclaimed: Arc<Preclaimed>,
        finished: Arc<Finished>,
        wake: WakeUp<Pubsub>,
        cooldown: Duration,
        cooldown_full_at: usize,
    ) -> Self {
        // As if the last fetch had been full: the first one goes at once.
        let fetched = Arc::new(AtomicUsize::new(config.batch_size));
        let enough = config.batch_size / 2;
        Self {
            persistence: Persisted::new(ActionFetch {
                pool: pool.clone(),
                config,
                preclaimed,
                finished,
                fetched: fetched.clone(),
            }),
            codec: JsonCodec::default(),
            wake,
            fetched,
            woken: false,
            cooldown: FetchCooldown::new(cooldown, cooldown_full_at, enough),
        }
    }
}

impl Backend for ActionQueue {
    type Task = PgTask;
    type Error = Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        let heartbeat = self.persistence.config.heartbeat_interval;
        self.persistence.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<PgTask, Error>>> {
        loop {
            // Polled every time, so both sources of `wake` hold this task's
            // waker; a wake that comes while a fetch is in flight is kept
            // for after it.
            self.woken |= self.wake.poll_wake(cx);
            if matches!(self.persistence.state(), State::Ready) {
                // After a fetch that drained the queue: only when a wake
                // asked for a look, and not before the cooldown's end.
                let took = self.fetched.load(Ordering::Relaxed);
                if took < self.persistence.config.batch_size
                    && (!self.woken || self.cooldown.poll_ready(cx, took).is_pending())
                {
                    return Poll::Pending;
                }
                // The fetch about to start is the look the wake asked for.
                self.woken = false;
                self.cooldown.started();
            }
            let next = self.persistence.poll_next(cx, worker);
            // Pending with nothing in flight: the fetch came back empty. If
            // a wake came while it ran, its job may have come too late for
            // it: look again.
            if next.is_pending() && matches!(self.persistence.state(), State::Ready) && self.woken {
                continue;
            }
            return next;
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        self.persistence.poll_close(cx, worker)
    }
}

impl BackendConfig for ActionQueue {
    type Args = ActionJob;
    type Kind = Durable;
    type Id = ulid::Ulid;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Config {
        &self.persistence.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        let batch_size = self.persistence.config.batch_size;
        let persist_results = self.persistence.config.persist_results;
        let lock_tasks = self.persistence.config.lock_tasks;
        self.persistence
            .layer(JsonCodec::<Value>::default(), batch_size)
            .persist_results(persist_results)
            .lock_tasks(lock_tasks)
    }
}

impl WireFormatBackend for ActionQueue {
    type Codec = JsonCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &JsonCodec {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, task::Waker};

    use super::*;
    use crate::wake::tests::CountingWaker;

    #[tokio::test]
    async fn a_fetch_waits_out_the_cooldown_of_the_previous_one_and_is_woken_at_its_end() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut cooldown = FetchCooldown::new(Duration::from_millis(100), 1, 128);

        assert!(cooldown.poll_ready(&mut cx, 1).is_ready(), "no fetch yet");
        cooldown.started();
        assert!(cooldown.poll_ready(&mut cx, 1).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            counter.0.load(Ordering::SeqCst) > 0,
            "the cooldown's end woke the task"
        );
        assert!(cooldown.poll_ready(&mut cx, 1).is_ready());

        // The next fetch's cooldown runs from its own start.
        cooldown.started();
        assert!(cooldown.poll_ready(&mut cx, 1).is_pending());
    }

    #[tokio::test]
    async fn the_cooldown_is_the_share_of_a_full_fetch_the_last_fetch_took() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut cooldown = FetchCooldown::new(Duration::from_millis(1600), 16, 128);
        assert_eq!(cooldown.after(0, None), Duration::ZERO);
        assert_eq!(cooldown.after(1, None), Duration::from_millis(100));
        assert_eq!(cooldown.after(8, None), Duration::from_millis(800));
        assert_eq!(cooldown.after(16, None), Duration::from_millis(1600));
        assert_eq!(cooldown.after(256, None), Duration::from_millis(1600));
        // Never longer than 128 more jobs take at the last fetch's pace:
        // 256 jobs in 1 s bring 128 in 500 ms; 32 in 1 s, in 4 s, so the
        // whole cooldown; one job in 10 s, its share.
        let since = |ms| Some(Duration::from_millis(ms));
        assert_eq!(cooldown.after(256, since(1000)), Duration::from_millis(500));
        assert_eq!(cooldown.after(32, since(1000)), Duration::from_millis(1600));
        assert_eq!(cooldown.after(1, since(10_000)), Duration::from_millis(100));
        assert_eq!(cooldown.after(0, since(1)), Duration::ZERO);

        // After an empty fetch (another worker took the job) the next may
        // start at once; after one job, 100 ms later; after a full one,
        // 1.6 s later.
        cooldown.started();
        assert!(cooldown.poll_ready(&mut cx, 0).is_ready());
        assert!(cooldown.poll_ready(&mut cx, 1).is_pending());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(cooldown.poll_ready(&mut cx, 1).is_ready());
        assert!(cooldown.poll_ready(&mut cx, 16).is_pending());
        assert!(cooldown.poll_ready(&mut cx, 300).is_pending());
    }

    #[tokio::test]
    async fn without_a_cooldown_every_fetch_may_start_at_once() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut cooldown = FetchCooldown::new(Duration::ZERO, 16, 128);
        cooldown.started();
        assert!(cooldown.poll_ready(&mut cx, 16).is_ready());
        cooldown.started();
        assert!(cooldown.poll_ready(&mut cx, 16).is_ready());
    }
}
