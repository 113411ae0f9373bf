//! When a worker looks at the queue: on every NOTIFY of a new job and on a
//! fallback interval.
//!
//! apalis's own `Strategy` returns as soon as its first source is ready and
//! leaves the others unpolled, and its interval arms the next tick without
//! polling it. After a notification whose job another worker took first (an
//! empty fetch), neither source then held the task's waker, and the worker
//! slept until its next heartbeat: 5 s stalls every few seconds at 100
//! tickets/s with two workers (BENCHMARKS.md). [`WakeUp`](crate::wake::WakeUp) polls every source
//! until it is pending each time, so both always hold the waker; a burst of
//! notifications also becomes one fetch instead of one each.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::{PollSnapshot, PollStrategy};
use futures::{Stream, StreamExt};
use tokio::time::{Interval, MissedTickBehavior};

/// Wakes the worker on a notification or a tick, whichever comes first.
pub struct WakeUp<S> {
    notifications: Option<S>,
    interval: Interval,
}

impl<S> WakeUp<S> {
    /// Notifications from `notifications` (LISTEN/NOTIFY), and a tick every
    /// `every`. Call inside the Tokio runtime.
    pub fn new(notifications: S, every: Duration) -> Self {
        // apalis fetches once at start by itself; the first tick is a period later.
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            notifications: Some(notifications),
            interval,
        }
    }
}

impl WakeUp<futures::stream::Pending<()>> {
    /// A tick every `every`, and no notifications.
    pub fn every(every: Duration) -> Self {
        Self::new(futures::stream::pending(), every)
    }
}

impl<S> WakeUp<S>
where
    S: Stream + Unpin,
{
    /// Whether a notification or a tick came since the last call. Both
    /// sources are left holding `cx`'s waker.
    pub fn poll_wake(&mut self, cx: &mut Context<'_>) -> bool {
        let mut woken = false;
        // Drained to Pending, so the next notification wakes the task.
        if let Some(notifications) = self.notifications.as_mut() {
            loop {
                match notifications.poll_next_unpin(cx) {
                    Poll::Ready(Some(_)) => woken = true,
                    // Closed (its connection failed for good): the interval
                    // alone wakes the worker from now on.
                    Poll::Ready(None) => {
                        self.notifications = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        // Likewise: polled until the next tick is armed with our waker.
        while self.interval.poll_tick(cx).is_ready() {
            woken = true;
        }
        woken
    }
}

impl<S> PollStrategy for WakeUp<S>
where
    S: Stream + Unpin,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        if self.poll_wake(cx) {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use super::*;

    /// A waker that counts its wakes (also used by the queue's tests).
    pub(crate) struct CountingWaker(pub(crate) AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn after_a_notification_both_sources_still_hold_the_waker() {
        let (sender, receiver) = futures::channel::mpsc::unbounded::<u32>();
        let mut wake = WakeUp::new(receiver, Duration::from_millis(100));
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::default();
        assert!(wake.poll_drive(&mut cx, &snapshot).is_pending());

        // Three notifications: one wake-up, and the stream is drained.
        for n in 0..3 {
            sender.unbounded_send(n).expect("the receiver is alive");
        }
        assert!(wake.poll_drive(&mut cx, &snapshot).is_ready());
        assert!(wake.poll_drive(&mut cx, &snapshot).is_pending());

        // Without another notification, the interval still wakes the task.
        let before = counter.0.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            counter.0.load(Ordering::SeqCst) > before,
            "the tick woke the task"
        );
        assert!(wake.poll_drive(&mut cx, &snapshot).is_ready());

        // And a later notification wakes it too.
        assert!(wake.poll_drive(&mut cx, &snapshot).is_pending());
        let before = counter.0.load(Ordering::SeqCst);
        sender.unbounded_send(9).expect("the receiver is alive");
        assert!(counter.0.load(Ordering::SeqCst) > before);
    }

    #[tokio::test]
    async fn a_closed_notification_stream_leaves_the_interval() {
        let (sender, receiver) = futures::channel::mpsc::unbounded::<u32>();
        drop(sender);
        let mut wake = WakeUp::new(receiver, Duration::from_millis(100));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::default();
        assert!(wake.poll_drive(&mut cx, &snapshot).is_pending());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(wake.poll_drive(&mut cx, &snapshot).is_ready());
    }
}
