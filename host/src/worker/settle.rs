//! The settler: collects settlements from executions and sends them to the broker in batches,
//! retrying while the broker is unreachable, then releases the tasks' slots.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use wtq_client::broker::{Broker, Settle, Settled, Settlement};
use wtq_client::message::{State, now_ms};

use super::{MAX_BACKOFF, Shared};

/// Most settlements sent in one broker call.
const MAX_SETTLE_BATCH: usize = 512;

pub(super) async fn run<B: Broker + Clone>(
    shared: Arc<Shared<B>>,
    mut settlements: mpsc::UnboundedReceiver<Settle>,
) {
    let mut batch = Vec::with_capacity(MAX_SETTLE_BATCH);
    while let Some(first) = settlements.recv().await {
        batch.push(first);
        while batch.len() < MAX_SETTLE_BATCH {
            match settlements.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let outcomes = send(&shared, &batch).await;
        let mut held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (settle, outcome) in batch.drain(..).zip(outcomes) {
            held.remove(&settle.lease.id);
            count(&shared, &settle, outcome);
        }
        drop(held);
        shared.freed.notify_waiters();
    }
}

/// Settles a batch, retrying until the broker answers: a result that was computed must not
/// be lost to a passing outage (if the outage outlives the lease, the broker refuses it as
/// stale and another worker runs the task again).
async fn send<B: Broker>(shared: &Shared<B>, batch: &[Settle]) -> Vec<Settled> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match shared.broker.settle(batch.to_vec(), now_ms()).await {
            Ok(outcomes) => return outcomes,
            Err(error) => {
                tracing::warn!(%error, tasks = batch.len(), retry_in = ?backoff, "cannot store results; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn count<B>(shared: &Shared<B>, settle: &Settle, outcome: Settled) {
    let counts = &shared.counts;
    let counter = match (outcome, &settle.settlement) {
        (Settled::Stale, _) => {
            tracing::warn!(id = %settle.lease.id, "result refused: the lease was taken over by another worker");
            &counts.stale
        }
        (Settled::Committed, Settlement::Finish(attempt)) => match attempt.state {
            State::Success => &counts.succeeded,
            State::Revoked => &counts.revoked,
            _ => &counts.failed,
        },
        (Settled::Committed, Settlement::Retry { .. }) => &counts.retried,
        (Settled::Committed, Settlement::Release) => &counts.released,
        (Settled::Committed, Settlement::DeadLetter(_)) => &counts.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
