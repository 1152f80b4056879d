//! The settler: collects settlements from executions and sends them to the broker in batches,
//! retrying while the broker is unreachable, then releases the tasks' slots.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use wtq_client::broker::{self, Broker, Settle, Settled, Settlement};
use wtq_client::message::{State, now_ms};

use super::{Lane, MAX_BACKOFF};

/// Most settlements sent in one broker call.
const MAX_SETTLE_BATCH: usize = 512;

pub(super) async fn run<B: Broker + Clone>(
    lane: Arc<Lane<B>>,
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
        let outcomes = send(&lane, &batch).await;
        let mut held = lane.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (settle, outcome) in batch.drain(..).zip(outcomes) {
            // A newer delivery of the same id to this worker is not this settlement's to end.
            if held
                .get(&settle.lease.id)
                .is_some_and(|entry| entry.token == settle.lease.token)
            {
                held.remove(&settle.lease.id);
            }
            count(&lane, &settle, outcome);
        }
        drop(held);
        lane.freed.notify_waiters();
        lane.process.freed.notify_waiters();
    }
}

/// Attempts at a batch the broker refuses (rather than cannot be reached for) before it is
/// split to find the settlement it refuses: long enough for a restarting Redis to load.
const REFUSED_ATTEMPTS: u32 = 8;

/// Settles a batch: retried while the broker is unreachable, since a computed result must not
/// be lost to a passing outage (if the outage outlives the lease, the broker refuses it as
/// stale and another worker runs the task again). A batch the broker keeps refusing is split,
/// so one bad settlement cannot hold back the others; that one is given up (`None`): its lease
/// expires, and the reaper's delivery count stops it from looping forever.
async fn send<B: Broker>(lane: &Lane<B>, batch: &[Settle]) -> Vec<Option<Settled>> {
    let mut backoff = Duration::from_millis(50);
    let mut refused = 0;
    loop {
        match lane.broker.settle(batch.to_vec(), now_ms()).await {
            Ok(outcomes) => return outcomes.into_iter().map(Some).collect(),
            Err(error @ broker::Error::Unreachable { .. }) => {
                tracing::warn!(tenant = %lane.tenant, %error, tasks = batch.len(), retry_in = ?backoff, "cannot store results; retrying");
            }
            Err(error) if refused < REFUSED_ATTEMPTS => {
                refused += 1;
                tracing::warn!(tenant = %lane.tenant, %error, tasks = batch.len(), retry_in = ?backoff, "the broker refused results; retrying");
            }
            Err(error) if batch.len() == 1 => {
                tracing::error!(%error, id = %batch[0].lease.id, "the broker refuses this result; giving it up (the task will be delivered again)");
                return vec![None];
            }
            Err(_) => {
                let (left, right) = batch.split_at(batch.len() / 2);
                let mut outcomes = Box::pin(send(lane, left)).await;
                outcomes.extend(Box::pin(send(lane, right)).await);
                return outcomes;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn count<B>(lane: &Lane<B>, settle: &Settle, outcome: Option<Settled>) {
    let counts = &lane.process.counts;
    let Some(outcome) = outcome else {
        counts.unsettled.fetch_add(1, Ordering::Relaxed);
        return;
    };
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
        (Settled::Committed, Settlement::DeadLetter(_)) => {
            lane.process.metrics.dead_letters.inc();
            &counts.failed
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
