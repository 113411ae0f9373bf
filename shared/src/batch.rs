//! Group commit: the requests of one moment share one transaction.
//!
//! Each caller (a worker's delivery with its claim or outcome, an api
//! request creating a ticket) hands its request to a [`Batcher`](crate::batch::Batcher) and
//! awaits the answer. A batcher task takes every request waiting at that
//! moment (up to `max_batch`), runs them together, and answers each. While
//! one batch is in the database the next one gathers, so batches grow with
//! the load by themselves: one request alone is written at once, and under
//! load many share the statements and the commit. No timer holds a request
//! back.

use std::{future::Future, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

type Envelope<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// A queue of requests served in batches by `lanes` tasks.
pub struct Batcher<Req, Resp> {
    sender: mpsc::Sender<Envelope<Req, Resp>>,
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Starts `lanes` tasks (at least one), each serving up to `max_batch`
    /// requests at a time with `run`, which must answer every request of
    /// its batch, in order. The tasks end when the batcher is dropped.
    /// Batch sizes go to the histogram `txdx_batch_size{batcher = name}`,
    /// the time each batch takes to `txdx_batch_seconds{batcher = name}`.
    pub fn spawn<F, Fut>(name: &'static str, lanes: usize, max_batch: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (sender, receiver) = mpsc::channel::<Envelope<Req, Resp>>(max_batch * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let run = Arc::new(run);
        for _ in 0..lanes.max(1) {
            let receiver = receiver.clone();
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
                        while batch.len() < max_batch {
                            match receiver.try_recv() {
                                Ok(next) => batch.push(next),
                                Err(_) => break,
                            }
                        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_each_gets_its_own_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Arc::new(Batcher::spawn("test", 1, 16, move |requests: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                requests.into_iter().map(|r| r * 10).collect()
            }
        }));
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
        let batcher = Batcher::spawn("test", 2, 16, |requests: Vec<&'static str>| async move {
            requests.into_iter().map(str::len).collect()
        });
        let answer = tokio::time::timeout(std::time::Duration::from_secs(1), batcher.call("four"))
            .await
            .expect("answered without waiting for more requests");
        assert_eq!(answer, Some(4));
    }

    #[tokio::test]
    async fn a_batch_whose_run_panics_answers_none_and_the_next_batch_is_served() {
        let batcher = Batcher::spawn("test", 1, 1, |requests: Vec<u32>| async move {
            assert!(requests[0] != 13, "unlucky");
            requests
        });
        assert_eq!(batcher.call(13).await, None);
        assert_eq!(batcher.call(7).await, Some(7));
    }
}
