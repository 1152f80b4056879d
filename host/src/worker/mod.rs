//! The worker: leases messages from the broker in batches, runs each call in the sandbox under
//! its limits, and settles it (result stored and message acknowledged in one atomic step).
//!
//! One function, top to bottom ([`run`]): the fetch loop runs here; beside it run a settler
//! (batches settlements into one broker call), a keeper (renews every held lease and records
//! STARTED / PROGRESS), a reaper (returns other workers' expired leases) and a listener for
//! terminate requests.
//!
//! Guest calls run on a separate compute runtime. Everything that talks to the broker stays on
//! the runtime `run` is called on, whose threads guests never occupy: with every compute thread
//! busy, tokio polls its I/O driver only every few dozen task polls (each up to one 10 ms epoch
//! slice), which delayed lease renewals past short leases; on their own thread they are never
//! starved.
//!
//! Warm shutdown: stop fetching, hand back what has not started, let running calls finish
//! within the shutdown timeout, stop the rest at their next epoch tick and hand them back too.

mod components;
mod settle;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use wtq_client::broker::{Broker, Delivery, Lease, Mark, Settle, Settlement};
use wtq_client::message::{Progress, State, TaskFailure, now_ms};

use crate::sandbox::{Limits, Sandbox};
pub use components::ComponentError;
use components::Components;

/// Most messages asked for in one reserve.
const MAX_BATCH: usize = 256;
/// How long an idle worker waits for work before looking again (delayed messages become due
/// without a wake-up).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How often STARTED / PROGRESS is written; a call shorter than this goes from RECEIVED to its
/// final state without a STARTED write (Celery's `task_track_started` is off by default too).
const MARK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest pause after the broker fails, between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Shown in records and logs (`-n`).
    pub name: String,
    /// Queues to consume, in priority order.
    pub queues: Vec<String>,
    /// Calls that run at once.
    pub concurrency: usize,
    /// Messages held per running slot (Celery's prefetch multiplier).
    pub prefetch_multiplier: usize,
    /// How long a delivery is leased; renewed every third of it while the task runs.
    pub lease: Duration,
    /// How long a warm shutdown waits for running calls.
    pub shutdown_timeout: Duration,
    /// Default limits; a message's own limits override them.
    pub limits: Limits,
    /// How often expired leases are returned to their queues.
    pub reap_interval: Duration,
}

/// What a worker did, for its exit log and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub revoked: u64,
    /// Handed back (warm shutdown, broker trouble).
    pub released: u64,
    /// Settlements refused because the lease had been taken over.
    pub stale: u64,
    /// Settlements the broker kept refusing; their tasks will be delivered again.
    pub unsettled: u64,
}

/// Why a running call is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// Revoked with terminate: it ends REVOKED.
    Revoked,
    /// Warm shutdown timed out: it is handed back.
    Shutdown,
    /// Its lease was lost: its settlement will be refused anyway.
    LeaseLost,
}

/// A delivery this worker holds.
struct Held {
    token: u64,
    stop: watch::Sender<bool>,
    reason: Option<StopReason>,
    started_ms: Option<u64>,
    marked_started: bool,
    progress: watch::Receiver<Option<Progress>>,
}

/// What the worker's parts share.
struct Shared<B> {
    config: WorkerConfig,
    broker: B,
    components: Components<B>,
    held: Mutex<HashMap<String, Held>>,
    /// Terminate requests for ids not (yet) held, in case the request beat the delivery.
    early_terminations: Mutex<HashSet<String>>,
    slots: Semaphore,
    freed: Notify,
    shutting_down: AtomicBool,
    settle: mpsc::UnboundedSender<Settle>,
    counts: Counts,
    /// Where guest calls run.
    compute: tokio::runtime::Handle,
}

#[derive(Default)]
struct Counts {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    revoked: AtomicU64,
    released: AtomicU64,
    stale: AtomicU64,
    unsettled: AtomicU64,
}

/// Runs a worker until `shutdown` resolves, then shuts down warmly. Guest calls run on
/// `compute` (a multi-thread runtime); the broker is driven from the calling runtime.
pub async fn run<B>(
    config: WorkerConfig,
    broker: B,
    sandbox: Sandbox,
    compute: tokio::runtime::Handle,
    shutdown: impl Future<Output = ()> + Send,
) -> Summary
where
    B: Broker + Clone,
{
    let (settle_sender, settle_receiver) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        components: Components::new(broker.clone(), sandbox),
        slots: Semaphore::new(config.concurrency.max(1)),
        config,
        broker,
        held: Mutex::new(HashMap::new()),
        early_terminations: Mutex::new(HashSet::new()),
        freed: Notify::new(),
        shutting_down: AtomicBool::new(false),
        settle: settle_sender,
        counts: Counts::default(),
        compute,
    });
    tracing::info!(
        worker = %shared.config.name,
        queues = ?shared.config.queues,
        concurrency = shared.config.concurrency,
        "worker started"
    );
    let settler = tokio::spawn(settle::run(shared.clone(), settle_receiver));
    let keeper = tokio::spawn(keep(shared.clone()));
    let reaper = tokio::spawn(reap(shared.clone()));
    let listener = tokio::spawn(listen(shared.clone()));

    tokio::pin!(shutdown);
    fetch(&shared, &mut shutdown).await;

    // Warm shutdown.
    shared.shutting_down.store(true, Ordering::SeqCst);
    shared.slots.close();
    let running = shared
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    tracing::info!(
        running,
        "warm shutdown: no new work; waiting for running tasks"
    );
    let deadline = Instant::now() + shared.config.shutdown_timeout;
    while !held_is_empty(&shared) && Instant::now() < deadline {
        let _ = tokio::time::timeout_at(deadline.into(), shared.freed.notified()).await;
    }
    let stopped = stop_all(&shared, StopReason::Shutdown);
    if stopped > 0 {
        tracing::info!(
            stopped,
            "shutdown timeout passed: stopping running tasks and handing them back"
        );
    }
    // Stopped calls end within one epoch tick; their settlements may wait for a broker that
    // is down, but not past the lease, after which others reclaim them anyway.
    let give_up = Instant::now() + shared.config.lease;
    while !held_is_empty(&shared) && Instant::now() < give_up {
        let _ = tokio::time::timeout_at(give_up.into(), shared.freed.notified()).await;
    }
    let unsettled = shared
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    if unsettled > 0 {
        tracing::warn!(
            unsettled,
            "could not settle every task before exiting; their leases will expire and other workers will run them"
        );
    }
    // Every settlement is done once nothing is held: the settler removes a task only after
    // its settlement returned.
    for part in [listener, reaper, keeper, settler] {
        part.abort();
    }
    let summary = shared.counts.summary();
    tracing::info!(?summary, "worker stopped");
    summary
}

fn held_is_empty<B>(shared: &Shared<B>) -> bool {
    shared
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty()
}

fn stop_all<B>(shared: &Shared<B>, reason: StopReason) -> usize {
    let mut held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
    for entry in held.values_mut() {
        entry.reason.get_or_insert(reason);
        entry.stop.send_replace(true);
    }
    held.len()
}

/// Leases messages while there is room, until shutdown.
async fn fetch<B: Broker + Clone>(
    shared: &Arc<Shared<B>>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    let config = &shared.config;
    let room_total = config.concurrency.max(1) * config.prefetch_multiplier.max(1);
    let lease_ms = config.lease.as_millis() as u64;
    let mut backoff = Duration::from_millis(50);
    loop {
        // Registered before the room is counted, so a slot freed in between still wakes us.
        let freed = shared.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if requested(shutdown).await {
            return;
        }
        let held = shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let room = room_total.saturating_sub(held).min(MAX_BATCH);
        if room == 0 {
            tokio::select! {
                biased;
                () = &mut *shutdown => return,
                () = freed => continue,
            }
        }
        // Not raced with shutdown: the script runs whether or not its reply is awaited, and
        // what it leased must be registered to be handed back at once.
        let reserved = shared
            .broker
            .reserve(&config.name, &config.queues, room, lease_ms, now_ms())
            .await;
        match reserved {
            Ok(deliveries) if deliveries.is_empty() => {
                backoff = Duration::from_millis(50);
                tokio::select! {
                    biased;
                    () = &mut *shutdown => return,
                    _ = shared.broker.wait_for_work(&config.queues, IDLE_WAIT) => {}
                }
            }
            Ok(deliveries) => {
                backoff = Duration::from_millis(50);
                for delivery in deliveries {
                    start(shared, delivery);
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "cannot reserve work; retrying");
                tokio::select! {
                    biased;
                    () = &mut *shutdown => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether `shutdown` has resolved, without waiting for it.
async fn requested(shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => true,
        () = std::future::ready(()) => false,
    }
}

/// Registers a delivery and spawns its execution.
fn start<B: Broker + Clone>(shared: &Arc<Shared<B>>, delivery: Delivery) {
    let (stop, stopped) = watch::channel(false);
    let (progress_sender, progress) = watch::channel(None);
    let early = shared
        .early_terminations
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&delivery.id)
        || delivery.terminating;
    let held = Held {
        token: delivery.token,
        stop,
        reason: early.then_some(StopReason::Revoked),
        started_ms: None,
        marked_started: false,
        progress,
    };

    if early {
        held.stop.send_replace(true);
    }
    shared
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(delivery.id.clone(), held);
    shared
        .compute
        .spawn(execute(shared.clone(), delivery, stopped, progress_sender));
}

/// Runs one delivery and hands its settlement to the settler.
async fn execute<B: Broker + Clone>(
    shared: Arc<Shared<B>>,
    delivery: Delivery,
    stopped: watch::Receiver<bool>,
    progress: watch::Sender<Option<Progress>>,
) {
    let lease = Lease {
        id: delivery.id.clone(),
        token: delivery.token,
    };
    let settlement = match shared.slots.acquire().await {
        // Closed: warm shutdown began before this prefetched message got a slot; it goes back
        // (unless it was revoked meanwhile).
        Err(_) => stopped_settlement(&shared, &delivery, None, None),
        Ok(_permit) => run_one(&shared, &delivery, stopped, progress).await,
    };
    let _ = shared.settle.send(Settle { lease, settlement });
}

async fn run_one<B: Broker + Clone>(
    shared: &Shared<B>,
    delivery: &Delivery,
    stopped: watch::Receiver<bool>,
    progress: watch::Sender<Option<Progress>>,
) -> Settlement {
    let message = match &delivery.message {
        Ok(message) => message,
        Err(reason) => {
            tracing::warn!(id = %delivery.id, %reason, "undecodable message; dead-lettering it");
            return Settlement::DeadLetter(TaskFailure {
                kind: "malformed_message".into(),
                message: format!("the message could not be decoded: {reason}"),
            });
        }
    };
    if *stopped.borrow() {
        return stopped_settlement(shared, delivery, None, None);
    }
    let (component, digest) = match shared.components.get(message).await {
        Ok(found) => found,
        Err(ComponentError::Broker(error)) => {
            tracing::warn!(id = %delivery.id, %error, "registry unreachable; handing the task back");
            return stopped_settlement(shared, delivery, None, None);
        }
        Err(ComponentError::Unavailable(reason)) => {
            let attempt = outcome::attempt(shared, delivery, None, None, State::Failure);
            return Settlement::Finish(wtq_client::message::Attempt {
                error: Some(TaskFailure {
                    kind: "unknown_component".into(),
                    message: reason,
                }),
                ..attempt
            });
        }
    };
    let started_ms = now_ms();
    if let Some(held) = shared
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(&delivery.id)
    {
        held.started_ms = Some(started_ms);
    }
    let limits = outcome::limits(&shared.config.limits, &message.limits);
    let request = crate::sandbox::CallRequest {
        task: &message.task,
        args: &message.args,
        task_id: &delivery.id,
        attempt: delivery.attempt,
        tenant: "",
        limits,
        cancel: Some(stopped),
        progress: Some(progress),
    };
    match component.call(&request).await {
        Ok(report) => outcome::settlement(shared, delivery, message, &digest, started_ms, report),
        Err(error) => {
            // The host failed (e.g. the instance pool is exhausted), not the task: retry later.
            tracing::error!(id = %delivery.id, %error, "sandbox failure; handing the task back");
            stopped_settlement(shared, delivery, None, None)
        }
    }
}

/// The settlement of a delivery that was stopped before or while running, or that cannot run
/// now: REVOKED if it was revoked with terminate, otherwise handed back.
fn stopped_settlement<B>(
    shared: &Shared<B>,
    delivery: &Delivery,
    digest: Option<&str>,
    started_ms: Option<u64>,
) -> Settlement {
    let reason = shared
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&delivery.id)
        .and_then(|held| held.reason);
    match reason {
        Some(StopReason::Revoked) => {
            let attempt = outcome::attempt(shared, delivery, digest, started_ms, State::Revoked);
            Settlement::Finish(wtq_client::message::Attempt {
                error: Some(TaskFailure {
                    kind: "terminated".into(),
                    message: "revoked with terminate while running".into(),
                }),
                ..attempt
            })
        }
        // Shutdown hands it back; a lost lease's settlement would be refused anyway.
        _ => Settlement::Release,
    }
}

mod outcome;

/// Renews held leases and records STARTED / PROGRESS.
async fn keep<B: Broker + Clone>(shared: Arc<Shared<B>>) {
    let lease_ms = shared.config.lease.as_millis() as u64;
    let renew_every = (shared.config.lease / 3).max(MARK_INTERVAL);
    let mut last_renewal = Instant::now();
    let mut ticker = tokio::time::interval(MARK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = now_ms();
        let marks = due_marks(&shared, now);
        if !marks.is_empty()
            && let Err(error) = shared.broker.mark(&marks).await
        {
            tracing::warn!(%error, "cannot record task progress");
        }
        if last_renewal.elapsed() < renew_every {
            continue;
        }
        last_renewal = Instant::now();
        let leases: Vec<Lease> = shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, held)| Lease {
                id: id.clone(),
                token: held.token,
            })
            .collect();
        if leases.is_empty() {
            continue;
        }
        match shared.broker.renew(&leases, lease_ms, now_ms()).await {
            Ok(held_still) => {
                let mut held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
                for (lease, kept) in leases.iter().zip(held_still) {
                    if let Some(entry) = held.get_mut(&lease.id)
                        && !kept
                        && entry.token == lease.token
                    {
                        tracing::warn!(id = %lease.id, "lease lost (taken over after expiry); stopping the task");
                        entry.reason.get_or_insert(StopReason::LeaseLost);
                        entry.stop.send_replace(true);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot renew leases; will retry"),
        }
    }
}

/// STARTED for calls running longer than one mark interval, PROGRESS for new reports.
fn due_marks<B>(shared: &Shared<B>, now: u64) -> Vec<Mark> {
    let mut held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
    let mut marks = Vec::new();
    for (id, entry) in held.iter_mut() {
        let Some(started_ms) = entry.started_ms else {
            continue;
        };
        let lease = Lease {
            id: id.clone(),
            token: entry.token,
        };
        if entry.progress.has_changed().unwrap_or(false) {
            let progress = entry.progress.borrow_and_update().clone();
            entry.marked_started = true;
            marks.push(Mark {
                lease,
                state: State::Progress,
                progress,
                at_ms: now,
            });
        } else if !entry.marked_started
            && now.saturating_sub(started_ms) >= MARK_INTERVAL.as_millis() as u64
        {
            entry.marked_started = true;
            marks.push(Mark {
                lease,
                state: State::Started,
                progress: None,
                at_ms: started_ms,
            });
        }
    }
    marks
}

/// Returns expired leases (of any worker) to their queues.
async fn reap<B: Broker + Clone>(shared: Arc<Shared<B>>) {
    let mut ticker = tokio::time::interval(shared.config.reap_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match shared.broker.reap(now_ms(), 1000).await {
            Ok(0) => {}
            Ok(reclaimed) => tracing::info!(reclaimed, "returned expired leases to their queues"),
            Err(error) => tracing::warn!(%error, "cannot reap expired leases"),
        }
    }
}

/// Stops held tasks that are revoked with terminate.
async fn listen<B: Broker + Clone>(shared: Arc<Shared<B>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut requests = match shared.broker.terminations().await {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to terminate requests; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        while let Some(id) = requests.recv().await {
            let mut held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
            match held.get_mut(&id) {
                Some(entry) => {
                    tracing::info!(%id, "terminating on request");
                    entry.reason.get_or_insert(StopReason::Revoked);
                    entry.stop.send_replace(true);
                }
                None => {
                    drop(held);
                    remember_early(&shared, id);
                }
            }
        }
    }
}

/// Most remembered terminate requests for ids not held; older ones are dropped.
const MAX_EARLY_TERMINATIONS: usize = 10_000;

fn remember_early<B>(shared: &Shared<B>, id: String) {
    let mut early = shared
        .early_terminations
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if early.len() >= MAX_EARLY_TERMINATIONS {
        early.clear();
    }
    early.insert(id);
}

impl Counts {
    fn summary(&self) -> Summary {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Summary {
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            revoked: get(&self.revoked),
            released: get(&self.released),
            stale: get(&self.stale),
            unsettled: get(&self.unsettled),
        }
    }
}
