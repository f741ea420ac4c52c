//! The event hub: the engine publishes domain events here after they are committed; each event is
//! serialized once into an immutable shared body, numbered with the global `stateVersion`, and the
//! whole batch of one engine tick is handed to every worker in one message (not per connection).
//! Workers deliver to their own sessions (`runtime::ws_session`).
//!
//! Invariant: an event body is serialized once, whatever the number of recipients.

use crate::rpc::frame::encode_event_body;
use crate::rpc::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Batches queued per worker before the engine waits for that worker.
pub const WORKER_QUEUE_BATCHES_MAX: usize = 4_096;

/// One broadcast domain event, shared by every recipient.
#[derive(Debug)]
pub struct Broadcast {
    /// `payload.runId`, used by subscription filters.
    pub run_id: Option<String>,
    pub event: String,
    /// The `stateVersion` assigned to this broadcast.
    pub state_version: u64,
    /// `"event":…,"payload":…,"apiVersion":"v1"}`: the recipient-independent part of the frame.
    pub body: Arc<[u8]>,
}

pub type BroadcastBatch = Arc<Vec<Arc<Broadcast>>>;

#[derive(Debug)]
pub struct Hub {
    state_version: AtomicU64,
    serializations: AtomicU64,
    published: AtomicU64,
    workers: Vec<flume::Sender<BroadcastBatch>>,
    receivers: Mutex<Vec<Option<flume::Receiver<BroadcastBatch>>>>,
}

impl Hub {
    pub fn new(n_workers: usize) -> Arc<Hub> {
        let (workers, receivers): (Vec<_>, Vec<_>) = (0..n_workers)
            .map(|_| flume::bounded(WORKER_QUEUE_BATCHES_MAX))
            .map(|(s, r)| (s, Some(r)))
            .unzip();
        Arc::new(Hub {
            state_version: AtomicU64::new(0),
            serializations: AtomicU64::new(0),
            published: AtomicU64::new(0),
            workers,
            receivers: Mutex::new(receivers),
        })
    }

    /// The receiver of worker `index`; each can be taken once.
    pub fn take_receiver(&self, index: usize) -> Option<flume::Receiver<BroadcastBatch>> {
        let mut receivers = match self.receivers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        receivers.get_mut(index).and_then(Option::take)
    }

    pub fn state_version(&self) -> u64 {
        self.state_version.load(Ordering::Acquire)
    }

    /// How many event bodies were serialized (equals the number of broadcasts).
    pub fn serializations(&self) -> u64 {
        self.serializations.load(Ordering::Relaxed)
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Broadcasts `events` (name, payload) in order: each gets the next `stateVersion`, is
    /// serialized once, and the batch goes to every worker in one message.
    pub fn publish(&self, events: Vec<(String, Value)>) {
        if events.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(events.len());
        for (event, payload) in events {
            let run_id = payload
                .as_object()
                .and_then(|object| object.get("runId"))
                .and_then(|value| value.as_str())
                .map(str::to_string);
            let body: Arc<[u8]> = encode_event_body(&event, &payload).into();
            self.serializations.fetch_add(1, Ordering::Relaxed);
            let state_version = self.state_version.fetch_add(1, Ordering::AcqRel) + 1;
            batch.push(Arc::new(Broadcast {
                run_id,
                event,
                state_version,
                body,
            }));
        }
        self.published
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let batch: BroadcastBatch = Arc::new(batch);
        for worker in &self.workers {
            // A worker that stopped (shutdown) has dropped its receiver; nothing to deliver.
            let _ = worker.send(batch.clone());
        }
    }
}

use simd_json::prelude::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_serialized_once_and_numbered() {
        let hub = Hub::new(3);
        let receivers: Vec<_> = (0..3).filter_map(|i| hub.take_receiver(i)).collect();
        assert_eq!(receivers.len(), 3);
        assert!(hub.take_receiver(0).is_none(), "a receiver is taken once");
        let payload = crate::rpc::frame::object(vec![("runId", Value::from("r1"))]);
        hub.publish(vec![
            ("node.started".into(), payload.clone()),
            ("run.completed".into(), payload),
        ]);
        assert_eq!(hub.serializations(), 2);
        assert_eq!(hub.state_version(), 2);
        let batches: Vec<BroadcastBatch> =
            receivers.iter().filter_map(|r| r.try_recv().ok()).collect();
        assert_eq!(batches.len(), 3);
        for batch in &batches {
            assert_eq!(batch.len(), 2);
            assert_eq!(batch[0].state_version, 1);
            assert_eq!(batch[1].state_version, 2);
            assert_eq!(batch[0].run_id.as_deref(), Some("r1"));
            // Every worker holds the very same body buffer.
            assert!(Arc::ptr_eq(&batch[0].body, &batches[0][0].body));
        }
    }
}
