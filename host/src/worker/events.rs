//! The worker's own events in its namespace's event log: `worker-online` when it starts,
//! `worker-heartbeat` every [`WORKER_HEARTBEAT_MS`], `worker-offline` after its warm shutdown.
//! Written only while the log is on (see `Tenancy::enable_events`); a failed write is logged
//! and never stops the worker. Task events are not here: the broker writes them in the same
//! atomic step as each state change.

use std::time::Duration;

use tokio::task::JoinHandle;
use wtq_client::broker::Tenancy;
use wtq_client::message::now_ms;
use wtq_client::tenancy::{
    EVENT_LOG_CAP, EVENTS_ON_TTL, Event, WORKER_HEARTBEAT, WORKER_HEARTBEAT_MS, WORKER_OFFLINE,
    WORKER_ONLINE,
};

/// A running worker's heartbeat; [`Heartbeat::stop`] ends it with `worker-offline`.
pub(super) struct Heartbeat<B> {
    broker: B,
    worker: String,
    beating: JoinHandle<()>,
}

/// Writes `worker-online`, then a heartbeat every [`WORKER_HEARTBEAT_MS`]; with `keep_on`,
/// keeps the event log on at each beat (`wtq worker -E`).
pub(super) fn start<B: Tenancy + Clone>(broker: B, worker: String, keep_on: bool) -> Heartbeat<B> {
    let beating = tokio::spawn({
        let (broker, worker) = (broker.clone(), worker.clone());
        async move {
            if keep_on {
                keep_events_on(&broker).await;
            }
            record(&broker, WORKER_ONLINE, &worker).await;
            let period = Duration::from_millis(WORKER_HEARTBEAT_MS);
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beat.tick().await;
                if keep_on {
                    keep_events_on(&broker).await;
                }
                record(&broker, WORKER_HEARTBEAT, &worker).await;
            }
        }
    });
    Heartbeat {
        broker,
        worker,
        beating,
    }
}

impl<B: Tenancy> Heartbeat<B> {
    pub(super) async fn stop(self) {
        self.beating.abort();
        // Its online event may still be in flight: offline comes after it.
        let _ = self.beating.await;
        record(&self.broker, WORKER_OFFLINE, &self.worker).await;
    }
}

/// The heartbeat comes every 2 s and the switch lasts [`EVENTS_ON_TTL`] (30 s): the log
/// stays on while the worker lives, and goes off within 30 s after it dies.
async fn keep_events_on<B: Tenancy>(broker: &B) {
    if let Err(error) = broker.enable_events(EVENT_LOG_CAP, EVENTS_ON_TTL).await {
        tracing::warn!(%error, "cannot keep the event log on");
    }
}

async fn record<B: Tenancy>(broker: &B, kind: &str, worker: &str) {
    let event = Event::worker(kind, worker, now_ms());
    if let Err(error) = broker.record_event(&event).await {
        tracing::warn!(%error, event = kind, "cannot write a worker event");
    }
}
