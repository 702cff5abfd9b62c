//! The bounded export queue, measured in points: the newest data wins when it is full.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::metrics::Batch;
use crate::telemetry::{DropReason, Metrics};

/// Batches waiting for a sender. Pushing never waits: when the queue is full the oldest
/// batches are dropped (and counted), because a monitoring backend wants the current state
/// more than an old one.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    /// Wakes senders waiting in [`Queue::pop`].
    ready: Notify,
    max_points: u64,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<Batch>,
    /// Points in `batches`.
    points: u64,
    /// No more pushes; senders drain what is left.
    closed: bool,
}

impl Queue {
    /// An empty queue holding at most `max_points` points.
    pub(crate) fn new(max_points: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            max_points,
            metrics,
        }
    }

    /// Adds a batch, dropping the oldest batches to make room. A batch larger than the
    /// whole queue is dropped itself (validation keeps export batches smaller than the
    /// queue, so this only guards against misuse). After [`Queue::close`] every batch is
    /// dropped as [`DropReason::Shutdown`].
    pub(crate) fn push(&self, batch: Batch) {
        let n = batch.points.len() as u64;
        if n == 0 {
            return;
        }
        let mut state = self.lock();
        if state.closed {
            drop(state);
            self.metrics.dropped(DropReason::Shutdown, n);
            return;
        }
        if n > self.max_points {
            drop(state);
            tracing::warn!(
                target_name = %batch.target,
                points = n,
                max_points = self.max_points,
                "batch larger than the export queue dropped"
            );
            self.metrics.dropped(DropReason::QueueFull, n);
            return;
        }

        let mut evicted = 0;
        while state.points + n > self.max_points {
            let Some(oldest) = state.batches.pop_front() else {
                break;
            };
            let m = oldest.points.len() as u64;
            state.points -= m;
            evicted += m;
        }
        state.points += n;
        state.batches.push_back(batch);
        self.metrics.queue_points.set(gauge(state.points));
        drop(state);

        if evicted > 0 {
            self.metrics.dropped(DropReason::QueueFull, evicted);
        }
        self.ready.notify_one();
    }

    /// Takes the oldest batches, as many as fit in `max_points` (at least one), waiting for
    /// one if the queue is empty. `None` once the queue is closed and empty.
    pub(crate) async fn pop(&self, max_points: u64) -> Option<Vec<Batch>> {
        loop {
            // Registered before looking at the state, so a push or close between the look
            // and the wait is not missed.
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if let Some(taken) = self.try_pop(max_points) {
                return taken;
            }
            notified.await;
        }
    }

    /// `Some(Some(batches))` when there were batches, `Some(None)` when closed and empty,
    /// `None` when the caller should wait.
    fn try_pop(&self, max_points: u64) -> Option<Option<Vec<Batch>>> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        let mut points = 0;
        while let Some(front) = state.batches.front() {
            let n = front.points.len() as u64;
            if !taken.is_empty() && points + n > max_points {
                break;
            }
            points += n;
            taken.extend(state.batches.pop_front());
        }
        state.points -= points;
        self.metrics.queue_points.set(gauge(state.points));
        let more = !state.batches.is_empty();
        let closed = state.closed;
        drop(state);

        if !taken.is_empty() {
            if more {
                // Another sender may be idle while batches wait.
                self.ready.notify_one();
            }
            return Some(Some(taken));
        }
        closed.then_some(None)
    }

    /// Stops accepting batches and wakes every waiting sender so it can drain and stop.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Empties the queue, returning how many points it held.
    pub(crate) fn clear(&self) -> u64 {
        let mut state = self.lock();
        let points = state.points;
        state.batches.clear();
        state.points = 0;
        self.metrics.queue_points.set(0);
        points
    }

    /// Points waiting.
    pub(crate) fn points(&self) -> u64 {
        self.lock().points
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across every panic point (none mutate halfway), so a
        // poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn gauge(points: u64) -> i64 {
    i64::try_from(points).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs;
    use crate::metrics::{Descriptor, Point, Resource, Value};
    use crate::telemetry::DropLabel;

    static G: Descriptor = Descriptor::gauge("g", "1", "A gauge.");

    fn batch(tag: i64, n: usize) -> Batch {
        let resource = Arc::new(Resource { attrs: attrs!() });
        let mut b = Batch::new("t".into(), resource);
        b.points = (0..n)
            .map(|_| Point {
                desc: &G,
                attrs: attrs!(),
                value: Value::Int(tag),
                start_unix_nanos: 0,
                time_unix_nanos: 0,
            })
            .collect();
        b
    }

    fn tags(batches: &[Batch]) -> Vec<i64> {
        batches
            .iter()
            .map(|b| b.points[0].value.as_f64() as i64)
            .collect()
    }

    fn dropped(metrics: &Metrics, reason: DropReason) -> u64 {
        metrics
            .points_dropped
            .get_or_create(&DropLabel { reason })
            .get()
    }

    #[tokio::test]
    async fn full_queue_drops_the_oldest_batches_and_counts_their_points() {
        let metrics = Arc::new(Metrics::unregistered());
        let q = Queue::new(10, metrics.clone());
        q.push(batch(1, 4));
        q.push(batch(2, 4));
        q.push(batch(3, 4)); // 12 > 10: batch 1 goes
        assert_eq!(dropped(&metrics, DropReason::QueueFull), 4);
        assert_eq!(q.points(), 8);
        assert_eq!(metrics.queue_points.get(), 8);
        assert_eq!(tags(&q.pop(100).await.unwrap()), [2, 3]);
        assert_eq!(metrics.queue_points.get(), 0);
    }

    #[tokio::test]
    async fn pop_coalesces_batches_up_to_the_limit_but_always_takes_one() {
        let q = Queue::new(100, Arc::new(Metrics::unregistered()));
        q.push(batch(1, 30));
        q.push(batch(2, 30));
        q.push(batch(3, 30));
        assert_eq!(tags(&q.pop(60).await.unwrap()), [1, 2]);
        assert_eq!(tags(&q.pop(10).await.unwrap()), [3]);
    }

    #[tokio::test]
    async fn batch_larger_than_the_queue_is_dropped_and_the_queue_kept() {
        let metrics = Arc::new(Metrics::unregistered());
        let q = Queue::new(10, metrics.clone());
        q.push(batch(1, 5));
        q.push(batch(2, 11));
        assert_eq!(dropped(&metrics, DropReason::QueueFull), 11);
        assert_eq!(q.points(), 5);
    }

    #[tokio::test]
    async fn closed_queue_drains_then_ends_and_refuses_new_batches() {
        let metrics = Arc::new(Metrics::unregistered());
        let q = Queue::new(10, metrics.clone());
        q.push(batch(1, 2));
        q.close();
        q.push(batch(2, 3));
        assert_eq!(dropped(&metrics, DropReason::Shutdown), 3);
        assert_eq!(tags(&q.pop(10).await.unwrap()), [1]);
        assert!(q.pop(10).await.is_none());
    }

    #[tokio::test]
    async fn waiting_sender_wakes_on_push_and_on_close() {
        let q = Arc::new(Queue::new(10, Arc::new(Metrics::unregistered())));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { (q.pop(10).await.map(|b| tags(&b)), q.pop(10).await.is_none()) }
        });
        tokio::task::yield_now().await;
        q.push(batch(7, 1));
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), (Some(vec![7]), true));
    }
}
