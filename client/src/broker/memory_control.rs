//! [`Control`] in memory: each namespace's live request receivers and pending reply
//! collectors, in the universe's control table; the same behaviour as Redis pub/sub (a request
//! reaches the workers listening when it is sent, and the sender counts them).
//!
//! Declared from `memory.rs` as its child, like `memory_schedule.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::MemoryBroker;
use crate::broker::Error;
use crate::broker::control::{Control, ControlReply, ControlRequest, REQUEST_BUFFER, collect};

/// Every namespace's control state, keyed like the schedule table (by the namespace's store).
pub(super) type Table = Mutex<HashMap<usize, Space>>;

/// One namespace's listeners: what Redis keeps as subscriptions to `control` and `reply:*`.
#[derive(Debug, Default)]
pub(super) struct Space {
    workers: Vec<mpsc::Sender<ControlRequest>>,
    /// Request id → its sender's collector.
    waiting: HashMap<String, mpsc::Sender<ControlReply>>,
}

impl MemoryBroker {
    fn control_space<T>(&self, f: impl FnOnce(&mut Space) -> T) -> T {
        let key = Arc::as_ptr(&self.store) as usize;
        // Poisoning is ignored for the reason given at `MemoryBroker::lock`.
        let mut table = self
            .universe
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(table.entry(key).or_default())
    }
}

impl Control for MemoryBroker {
    async fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<Vec<ControlReply>, Error> {
        let (sender, mut replies) = mpsc::channel(4096);
        let heard = self.control_space(|space| {
            space.waiting.insert(request.id.clone(), sender);
            space.workers.retain(|worker| !worker.is_closed());
            // As PUBLISH: a receiver that is not keeping up loses the message.
            space
                .workers
                .iter()
                .filter(|worker| worker.try_send(request.clone()).is_ok())
                .count()
        });
        let collected = collect(request, heard, &mut replies, timeout).await;
        self.control_space(|space| space.waiting.remove(&request.id));
        Ok(collected)
    }

    async fn control_requests(&self) -> Result<mpsc::Receiver<ControlRequest>, Error> {
        let (sender, requests) = mpsc::channel(REQUEST_BUFFER);
        self.control_space(|space| space.workers.push(sender));
        Ok(requests)
    }

    async fn delayed(&self, queue: &str, limit: usize) -> Result<Vec<(String, u64)>, Error> {
        let store = self.lock();
        Ok(store
            .index
            .delayed
            .get(queue)
            .map(|delayed| {
                delayed
                    .iter()
                    .take(limit)
                    .map(|((due_ms, _), id)| (id.clone(), *due_ms))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn reply(&self, reply: &ControlReply) -> Result<(), Error> {
        let collector = self.control_space(|space| space.waiting.get(&reply.request).cloned());
        if let Some(collector) = collector {
            let _ = collector.try_send(reply.clone());
        }
        Ok(())
    }
}
