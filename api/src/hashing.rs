//! Password hashing off the async executor, bounded, and at the lowest
//! scheduling class.
//!
//! argon2id at OWASP's parameters costs tens of milliseconds of CPU a call.
//! A burst of logins would otherwise take the cores from everything else the
//! machine does: the api's other requests and the PostgreSQL backends serving
//! them. Each hash runs on a thread of its own (one spawn costs microseconds,
//! the hash milliseconds) whose scheduling class is `SCHED_IDLE` on Linux:
//! it gets a core only when nothing else wants it, so a burst of logins
//! delays logins, not the rest.
//!
//! The database work of a request that hashes is bounded too
//! ([`Hashing::password_turn`](crate::hashing::Hashing::password_turn)):
//! without it, every login of a burst ran its throttle check and user
//! lookup at once, took every connection of the pool, and the other
//! requests waited for one (BENCHMARKS.md).

use std::sync::{Arc, Once};

use thread_priority::{ThreadBuilder, ThreadPriority};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::ApiError;

/// At most `permits` password operations at once, each on a low-priority
/// thread of its own.
#[derive(Clone, Debug)]
pub struct Hashing {
    permits: Arc<Semaphore>,
    turns: Arc<Semaphore>,
}

impl Hashing {
    /// At most `permits` hashes at once (at least one), and twice as many
    /// requests that hash and use the database ([`Hashing::password_turn`]).
    pub fn new(permits: usize) -> Self {
        let permits = permits.max(1);
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            turns: Arc::new(Semaphore::new(2 * permits)),
        }
    }

    /// A turn for one request that checks or sets a password and holds a
    /// database connection around the hash (a login, a password change), to
    /// hold from its first query to its last: twice as many turns as hashes
    /// run at once, so one request's queries overlap another's hash and the
    /// hashes stay as busy as they can be, while a burst holds at most that
    /// many of the pool's connections. The requests of a burst wait here,
    /// holding nothing.
    ///
    /// # Errors
    /// Never in practice: the semaphore is never closed.
    pub async fn password_turn(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(e.into()))
    }

    /// One per two CPUs, at least one: a burst of logins keeps at least
    /// half the machine for everything else. The idle scheduling class
    /// yields the cores, not the memory: each argon2id hash writes its whole
    /// block (19 MiB when this was measured, 7 MiB now; page-faulted in and
    /// unmapped again), so hashes on every core evicted the caches the other
    /// requests ran on.
    /// Measured on 2 cores (BENCHMARKS.md): with two hashes at once the
    /// worst `GET /api/tickets` during 50 concurrent logins took 4.3–7.0×
    /// (median 5.0×) its time before the burst, with one 2.7–4.5× (median
    /// 3.6×); the burst's logins took 0.9–1.1 s and 1.7–2.0 s.
    pub fn half_the_cpus() -> Self {
        Self::new(
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2)
                / 2,
        )
    }

    /// Runs `work` (a password hash or check) on a low-priority thread once a
    /// permit is free, and returns its result.
    ///
    /// The permit goes with the thread: a request that gives up while its
    /// hash runs does not let another hash start before this one ends.
    ///
    /// # Errors
    /// When the thread cannot be started or `work` panics.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let (reply, answer) = oneshot::channel();
        low_priority_thread()
            .spawn(move |lowered| {
                if let Err(e) = lowered {
                    static WARNED: Once = Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!(error = ?e, "password hashing runs at normal priority");
                    });
                }
                // Nobody waits for the answer if the request has gone.
                let _ = reply.send(work());
                drop(permit);
            })
            .map_err(|e| ApiError::Internal(e.into()))?;
        answer.await.map_err(|e| ApiError::Internal(e.into()))
    }
}

/// A thread builder at the lowest priority this platform grants without
/// privileges: the idle scheduling class on Unix.
fn low_priority_thread() -> ThreadBuilder {
    let builder = ThreadBuilder::default()
        .name("txdx-hash")
        .priority(ThreadPriority::Min);
    #[cfg(unix)]
    let builder = builder.policy(thread_priority::unix::ThreadSchedulePolicy::Normal(
        thread_priority::unix::NormalThreadSchedulePolicy::Idle,
    ));
    builder
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn work_runs_in_the_idle_scheduling_class() -> Result<(), ApiError> {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy,
        };
        let callers = thread_schedule_policy().ok();
        let policy = Hashing::new(1).run(thread_schedule_policy).await?;
        assert_eq!(
            policy.ok(),
            Some(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Idle
            ))
        );
        // The caller's thread keeps its class.
        assert_eq!(thread_schedule_policy().ok(), callers);
        Ok(())
    }

    #[tokio::test]
    async fn no_more_than_the_permits_run_at_once() -> Result<(), ApiError> {
        let hashing = Hashing::new(2);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let calls = (0..8).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            hashing.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for done in futures::future::join_all(calls).await {
            done?;
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        Ok(())
    }

    /// Whether `future` has not finished within `wait` (it can be polled on).
    async fn still_pending_after(wait: Duration, future: &mut (impl Future + Unpin)) -> bool {
        tokio::time::timeout(wait, future).await.is_err()
    }

    #[tokio::test]
    async fn twice_as_many_logins_as_hashes_take_turns_at_once() -> Result<(), ApiError> {
        let hashing = Hashing::new(2);
        let mut turns = Vec::new();
        for _ in 0..4 {
            let turn = tokio::time::timeout(Duration::from_secs(5), hashing.password_turn())
                .await
                .map_err(|_| ApiError::Internal(anyhow::anyhow!("no turn for a login")))??;
            turns.push(turn);
        }
        let fifth = hashing.password_turn();
        tokio::pin!(fifth);
        assert!(
            still_pending_after(Duration::from_millis(50), &mut fifth).await,
            "a fifth login got a turn while four held theirs"
        );
        // A hash needs no turn: a login holding one can always hash.
        assert_eq!(hashing.run(|| 7).await?, 7);
        drop(turns.pop());
        let _fifth = tokio::time::timeout(Duration::from_secs(5), fifth)
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("no turn for the fifth login")))??;
        Ok(())
    }

    #[tokio::test]
    async fn an_abandoned_call_keeps_its_permit_until_its_work_ends() -> Result<(), ApiError> {
        let hashing = Hashing::new(1);
        let started = Arc::new(std::sync::Barrier::new(2));
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let started = started.clone();
            let hashing = hashing.clone();
            tokio::spawn(async move {
                hashing
                    .run(move || {
                        started.wait();
                        let _ = gate_rx.recv();
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started.wait())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        first.abort();
        let second = hashing.run(|| 7);
        tokio::pin!(second);
        assert!(
            still_pending_after(Duration::from_millis(100), &mut second).await,
            "a second call started while the first's work still ran"
        );
        drop(gate_tx);
        assert_eq!(second.await?, 7);
        Ok(())
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_error_not_a_crash() {
        let outcome = Hashing::new(1).run(|| -> u8 { panic!("boom") }).await;
        assert!(matches!(outcome, Err(ApiError::Internal(_))));
    }
}
