//! Group commit: the requests of one moment share one transaction.
//!
//! Each caller (a worker's delivery with its claim or outcome, an api
//! request creating a ticket) hands its request to a [`Batcher`](crate::batch::Batcher) and
//! awaits the answer. A batcher task takes every request waiting at that
//! moment (up to `max_batch`), runs them together, and answers each. While
//! one batch is in the database the next one gathers, so batches grow with
//! the load by themselves: one request alone is written at once, and under
//! load many share the statements and the commit.
//!
//! With more than one lane, a lane that holds fewer than
//! [`overlap_at`](crate::batch::Lanes::overlap_at) requests while another
//! lane's batch is in the database waits for that batch to end and then
//! takes everything that came meanwhile. Below saturation the requests of
//! one moment therefore share one transaction instead of two small ones;
//! when the load outgrows one lane, the second starts beside the first. No
//! timer holds a request back: it waits only for a batch already running.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::{Mutex, Notify, mpsc, oneshot};

type Envelope<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// A queue of requests served in batches by the tasks of its [`Lanes`].
pub struct Batcher<Req, Resp> {
    sender: mpsc::Sender<Envelope<Req, Resp>>,
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Starts `lanes.count` tasks (at least one), each serving up to
    /// `lanes.max_batch` requests at a time with `run`, which must answer
    /// every request of its batch, in order. The tasks end when the batcher
    /// is dropped. Batch sizes go to the histogram
    /// `txdx_batch_size{batcher = name}`, the time each batch takes to
    /// `txdx_batch_seconds{batcher = name}`.
    pub fn spawn<F, Fut>(name: &'static str, lanes: Lanes, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let max_batch = lanes.max_batch.max(1);
        let overlap_at = lanes.overlap_at.clamp(1, max_batch);
        let (sender, receiver) = mpsc::channel::<Envelope<Req, Resp>>(max_batch * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let in_flight = Arc::new(InFlight::default());
        let run = Arc::new(run);
        for _ in 0..lanes.count.max(1) {
            let receiver = receiver.clone();
            let in_flight = in_flight.clone();
            let run = run.clone();
            tokio::spawn(async move {
                loop {
                    // Gather under the lock, run without it: another lane
                    // gathers the next batch meanwhile.
                    let batch = {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        let mut batch = vec![first];
                        gather(&mut receiver, &mut batch, max_batch, overlap_at, &in_flight).await;
                        in_flight.started();
                        batch
                    };
                    let (requests, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                        batch.into_iter().unzip();
                    metrics::histogram!("txdx_batch_size", "batcher" => name)
                        .record(requests.len() as f64);
                    // In a task of its own: a panic fails this batch (its
                    // callers get `None`), never the lane.
                    let started = std::time::Instant::now();
                    let ran = tokio::spawn(run(requests)).await;
                    in_flight.ended();
                    metrics::histogram!("txdx_batch_seconds", "batcher" => name)
                        .record(started.elapsed().as_secs_f64());
                    let Ok(answers) = ran else {
                        tracing::error!("a batch of {} requests panicked", replies.len());
                        continue;
                    };
                    // A caller that went away (its delivery was cancelled)
                    // simply gets no answer.
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { sender }
    }

    /// Submits `request` and waits for its answer; `None` when the batch it
    /// went into failed to answer (its task panicked) or the batcher is gone.
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.sender.send((request, reply)).await.ok()?;
        answer.await.ok()
    }
}

/// How a [`Batcher`]'s lanes share its requests.
#[derive(Clone, Copy, Debug)]
pub struct Lanes {
    /// Tasks that gather and run batches (at least one).
    pub count: usize,
    /// Most requests in one batch.
    pub max_batch: usize,
    /// While another lane's batch is in the database, a lane starts one of
    /// its own only once this many requests wait; with fewer it waits for
    /// that batch to end (or for more requests). `1` starts at once.
    pub overlap_at: usize,
}

/// The batches in the database, and a wake for the lane waiting for one
/// of them to end.
#[derive(Default)]
struct InFlight {
    running: AtomicUsize,
    ended: Notify,
}

impl InFlight {
    fn started(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    fn ended(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_waiters();
    }

    fn idle(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0
    }
}

/// Adds to `batch` what waits, up to `max_batch`. While another batch is in
/// the database and fewer than `overlap_at` requests are here, waits for
/// that batch to end or for the next request, whichever comes first, and
/// looks again: a request never waits for a timer, only for a batch that
/// is already running.
async fn gather<Req, Resp>(
    receiver: &mut mpsc::Receiver<Envelope<Req, Resp>>,
    batch: &mut Vec<Envelope<Req, Resp>>,
    max_batch: usize,
    overlap_at: usize,
    in_flight: &InFlight,
) {
    loop {
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if batch.len() >= overlap_at {
            return;
        }
        let ended = in_flight.ended.notified();
        tokio::pin!(ended);
        // Registered before the check, so an end between the two wakes it.
        ended.as_mut().enable();
        if in_flight.idle() {
            return;
        }
        tokio::select! {
            () = &mut ended => return,
            next = receiver.recv() => match next {
                Some(next) => batch.push(next),
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;

    /// Lanes that start a batch as soon as they hold a request.
    fn eager(count: usize, max_batch: usize) -> Lanes {
        Lanes {
            count,
            max_batch,
            overlap_at: 1,
        }
    }

    /// A batcher of two lanes whose batches report their requests on
    /// `batches` and wait for a permit of `go` before answering.
    struct Held {
        batcher: Arc<Batcher<u32, u32>>,
        batches: mpsc::UnboundedReceiver<Vec<u32>>,
        go: Arc<Semaphore>,
    }

    fn held_batches(overlap_at: usize) -> Held {
        let (started, batches) = mpsc::unbounded_channel();
        let go = Arc::new(Semaphore::new(0));
        let lanes = Lanes {
            count: 2,
            max_batch: 16,
            overlap_at,
        };
        let released = go.clone();
        let batcher = Batcher::spawn("test", lanes, move |requests: Vec<u32>| {
            let _ = started.send(requests.clone());
            let released = released.clone();
            async move {
                if let Ok(permit) = released.acquire().await {
                    permit.forget();
                }
                requests
            }
        });
        Held {
            batcher: Arc::new(batcher),
            batches,
            go,
        }
    }

    /// The answer of a call made in the background; a batch that never
    /// answers fails the test after 5 s instead of hanging it.
    async fn answered(call: tokio::task::JoinHandle<Option<u32>>) -> Option<u32> {
        tokio::time::timeout(std::time::Duration::from_secs(5), call)
            .await
            .expect("answered within 5 s")
            .expect("the caller task ran")
    }

    fn call_in_background(
        batcher: &Arc<Batcher<u32, u32>>,
        request: u32,
    ) -> tokio::task::JoinHandle<Option<u32>> {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.call(request).await })
    }

    #[tokio::test]
    async fn below_the_overlap_a_lane_waits_for_the_running_batch_and_takes_what_came_meanwhile() {
        let Held {
            batcher,
            mut batches,
            go,
        } = held_batches(4);
        let first = call_in_background(&batcher, 1);
        assert_eq!(batches.recv().await, Some(vec![1]), "alone, served at once");
        let later: Vec<_> = [2, 3].map(|r| call_in_background(&batcher, r)).into();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            batches.try_recv().is_err(),
            "two requests, fewer than four, started a second batch beside the running one"
        );
        go.add_permits(1);
        assert_eq!(answered(first).await, Some(1));
        let mut second = batches.recv().await.unwrap_or_default();
        second.sort_unstable();
        assert_eq!(second, vec![2, 3], "one batch for both");
        go.add_permits(1);
        for (call, request) in later.into_iter().zip([2, 3]) {
            assert_eq!(answered(call).await, Some(request));
        }
    }

    #[tokio::test]
    async fn at_the_overlap_a_second_batch_runs_beside_the_first() {
        let Held {
            batcher,
            mut batches,
            go,
        } = held_batches(2);
        let first = call_in_background(&batcher, 1);
        assert_eq!(batches.recv().await, Some(vec![1]));
        let later: Vec<_> = [2, 3].map(|r| call_in_background(&batcher, r)).into();
        let second = tokio::time::timeout(std::time::Duration::from_secs(1), batches.recv())
            .await
            .expect("a second batch started while the first was held");
        let mut second = second.unwrap_or_default();
        second.sort_unstable();
        assert_eq!(second, vec![2, 3]);
        go.add_permits(2);
        assert_eq!(answered(first).await, Some(1));
        for (call, request) in later.into_iter().zip([2, 3]) {
            assert_eq!(answered(call).await, Some(request));
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_each_gets_its_own_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Arc::new(Batcher::spawn(
            "test",
            eager(1, 16),
            move |requests: Vec<u32>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    requests.into_iter().map(|r| r * 10).collect()
                }
            },
        ));
        let calls: Vec<_> = (0..64u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.expect("the caller task ran");
            assert_eq!(answer, Some(i * 10));
        }
        let batches = batches.load(Ordering::SeqCst);
        assert!(
            (4..64).contains(&batches),
            "64 concurrent requests took {batches} batches of at most 16"
        );
    }

    #[tokio::test]
    async fn a_request_alone_is_served_at_once() {
        let batcher = Batcher::spawn(
            "test",
            eager(2, 16),
            |requests: Vec<&'static str>| async move { requests.into_iter().map(str::len).collect() },
        );
        let answer = tokio::time::timeout(std::time::Duration::from_secs(1), batcher.call("four"))
            .await
            .expect("answered without waiting for more requests");
        assert_eq!(answer, Some(4));
    }

    #[tokio::test]
    async fn a_batch_whose_run_panics_answers_none_and_the_next_batch_is_served() {
        let batcher = Batcher::spawn("test", eager(1, 1), |requests: Vec<u32>| async move {
            assert!(requests[0] != 13, "unlucky");
            requests
        });
        assert_eq!(batcher.call(13).await, None);
        assert_eq!(batcher.call(7).await, Some(7));
    }
}
