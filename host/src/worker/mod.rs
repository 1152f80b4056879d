//! The worker: leases messages from the broker in batches, runs each call in the sandbox under
//! its limits, and settles it (result stored and message acknowledged in one atomic step).
//!
//! One function, top to bottom ([`run`] for one namespace, [`run_tenants`] for every tenant of
//! the hosted service). A worker is a [`Process`] (the slot budget, the compute runtime, the
//! counters) serving one *lane* per namespace. A lane runs a fetch loop; beside it run a
//! settler (batches settlements into one broker call), a keeper (renews every held lease and
//! records STARTED / PROGRESS), a reaper (returns other workers' expired leases) and a listener
//! for terminate requests. Task ids are unique only within a namespace, so everything keyed by
//! id lives in its lane.
//!
//! Slots: [`run`]'s single lane prefetches (`concurrency × prefetch`) and a message takes a
//! slot when it starts. [`run_tenants`]'s lanes take slots *before* they reserve, one lane at a
//! time in FIFO order (tokio's fair semaphore, one waiter per lane), and reserve at most as
//! many messages as they hold slots: a flooding tenant then holds no prefetched messages that
//! would queue ahead of another tenant's, and a freed slot goes to the lane that has waited
//! longest.
//!
//! Guest calls run on a separate compute runtime. Everything that talks to the broker stays on
//! the runtime `run` is called on, whose threads guests never occupy: with every compute thread
//! busy, tokio polls its I/O driver only every few dozen task polls (each up to one 10 ms epoch
//! slice), which delayed lease renewals past short leases; on their own thread they are never
//! starved.
//!
//! Metrics: [`run`] and [`run_tenants`] also serve Prometheus `GET /metrics` (see `metrics`).
//!
//! Slots are a resizable [`pool::Pool`]: `control pool-grow`/`pool-shrink` and the autoscaler
//! (`autoscale.rs`) change its size while the worker runs. Live workers answer `wtq inspect`
//! and `wtq control` requests (`control.rs`).
//!
//! Shutdown, in [`Stage`]s: warm (stop fetching, hand back what has not started, let running
//! calls finish), soft once the shutdown timeout passed (stop the running calls at their next
//! epoch tick and hand them back), cold at once on a second signal or SIGQUIT.

mod autoscale;
mod components;
mod control;
mod events;
mod metrics;
mod outcome;
mod policies;
mod pool;
mod settle;
mod tenants;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;
use wtq_client::broker::{Broker, Control, Delivery, Lease, Mark, Settle, Settlement, Tenancy};
use wtq_client::message::{Progress, State, TaskFailure, now_ms};

use crate::sandbox::{Limits, Sandbox};
pub use autoscale::Bounds;
pub use components::ComponentError;
use components::Components;
use metrics::{Depths, WorkerMetrics};
use policies::Policies;
use pool::Pool;
pub use pool::ResizeError;
pub use tenants::{compute_threads, run_tenants};

/// How long slots stay idle before the autoscaler shrinks the pool, unless configured.
pub const DEFAULT_AUTOSCALE_KEEPALIVE: Duration = Duration::from_secs(30);

/// Most messages asked for in one reserve.
const MAX_BATCH: usize = 256;
/// How long an idle worker waits for work before looking again (delayed messages become due
/// without a wake-up).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How long a lane pauses after two empty reserves in a row with work waiting: its namespace
/// is at its concurrency cap (a tenant quota), so asking again at once would only spin. One of
/// the lane's own calls ending ends the pause early.
const CAPPED_PAUSE: Duration = Duration::from_millis(100);
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
    /// Calls that run at once (across every tenant, for [`run_tenants`]); with `autoscale`,
    /// where the pool starts.
    pub concurrency: usize,
    /// Most calls that may ever run at once (`pool-grow`, the autoscaler): what the sandbox
    /// is sized for.
    pub max_concurrency: usize,
    /// Grow and shrink the pool between these with the backlog (Celery's `--autoscale`).
    pub autoscale: Option<autoscale::Bounds>,
    /// How long the pool must have idle slots before the autoscaler shrinks it.
    pub autoscale_keepalive: Duration,
    /// Messages held per running slot (Celery's prefetch multiplier); [`run_tenants`] holds
    /// none beyond its running calls.
    pub prefetch_multiplier: usize,
    /// How long a delivery is leased; renewed every third of it while the task runs.
    pub lease: Duration,
    /// How long a warm shutdown waits for running calls before the soft stage stops them.
    pub shutdown_timeout: Duration,
    /// Default limits; a message's own limits override them.
    pub limits: Limits,
    /// How often expired leases are returned to their queues.
    pub reap_interval: Duration,
    /// Keep the namespace's event log on while the worker runs (Celery's `-E`), so events
    /// are kept even while nobody tails them.
    pub task_events: bool,
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

/// How far a worker's shutdown has gone; it only moves forward (see [`advance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Serving.
    Running,
    /// SIGTERM, a first SIGINT, `control shutdown`: no new work; running calls get the
    /// shutdown timeout, then the soft stage stops them at their next epoch tick and hands them
    /// back.
    Warm,
    /// SIGQUIT, a second SIGTERM or SIGINT: running calls are stopped now and handed back.
    Cold,
}

/// Moves a worker's shutdown on to `stage`, never back.
pub fn advance(stop: &watch::Sender<Stage>, stage: Stage) {
    stop.send_if_modified(|current| {
        let later = stage > *current;
        if later {
            *current = stage;
        }
        later
    });
}

/// Resolves once the shutdown has reached `stage`.
async fn reached(mut stop: watch::Receiver<Stage>, stage: Stage) {
    // An error means every sender is gone: nothing can advance it any more.
    if stop.wait_for(|current| *current >= stage).await.is_err() {
        std::future::pending::<()>().await;
    }
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
    /// Shared with its execution; `inspect active`/`reserved` read the task from it.
    delivery: Arc<Delivery>,
    stop: watch::Sender<bool>,
    reason: Option<StopReason>,
    started_ms: Option<u64>,
    marked_started: bool,
    progress: watch::Receiver<Option<Progress>>,
}

/// What every lane of a worker process shares.
struct Process {
    config: WorkerConfig,
    /// One slot per call that may run at once, shared by every lane. Fair (FIFO) lanes take
    /// theirs before they reserve; a prefetching lane when a message starts.
    pool: Pool,
    /// The queues consumed, in priority order (`add-consumer`, `cancel-consumer`).
    queues: RwLock<Vec<String>>,
    /// The autoscaler's bounds, if it runs (`control autoscale` sets them).
    autoscale: Mutex<Option<autoscale::Bounds>>,
    /// Where the shutdown is; advanced by signals and by `control shutdown`.
    stop: watch::Sender<Stage>,
    started: Instant,
    /// Whether lanes take slots before reserving (multi-tenant) or prefetch (one namespace).
    fair: bool,
    /// Woken whenever any lane settles, for the warm shutdown.
    freed: Notify,
    counts: Counts,
    /// Everything else `/metrics` shows; shared with each lane's component loader.
    metrics: Arc<WorkerMetrics>,
    /// Where guest calls run.
    compute: tokio::runtime::Handle,
}

/// One namespace served by a worker: its broker and everything keyed by task id.
struct Lane<B> {
    process: Arc<Process>,
    broker: B,
    /// The tenant whose tasks these are (`""` outside the hosted service): warm instances
    /// never cross tenants, and a guest's `context().tenant` is this.
    tenant: String,
    components: Components<B>,
    /// Tasks' time limits set by operators (`control time-limit`), read every second.
    policies: Policies,
    held: Mutex<HashMap<String, Held>>,
    /// Terminate requests for ids not (yet) held, in case the request beat the delivery.
    early_terminations: Mutex<HashSet<String>>,
    /// Woken whenever this lane settles: its fetch loop may have room again.
    freed: Notify,
    settle: mpsc::UnboundedSender<Settle>,
}

/// A lane's background parts (settler, keeper, reaper, listener), aborted once it holds
/// nothing more.
struct Parts(Vec<JoinHandle<()>>);

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

/// Runs a worker over one namespace until `stop` reaches [`Stage::Warm`] (a signal, or a
/// `control shutdown` request, which advances it), then shuts down in stages. Guest calls run
/// on `compute` (a multi-thread runtime); the broker is driven from the calling runtime.
/// With `metrics`, it also serves Prometheus `GET /metrics` there until it has shut down.
/// It answers `wtq inspect` / `wtq control` requests while it runs.
pub async fn run<B>(
    config: WorkerConfig,
    broker: B,
    sandbox: Sandbox,
    compute: tokio::runtime::Handle,
    metrics: Option<tokio::net::TcpListener>,
    stop: watch::Sender<Stage>,
) -> Summary
where
    B: Broker + Tenancy + Control + Clone,
{
    let process = Process::new(config, compute, false, stop);
    let endpoint = metrics
        .map(|listener| metrics::serve(listener, process.clone(), Depths::One(broker.clone())));
    let heartbeat = events::start(
        broker.clone(),
        process.config.name.clone(),
        process.config.task_events,
    );
    tracing::info!(
        worker = %process.config.name,
        queues = ?process.config.queues,
        concurrency = process.config.concurrency,
        "worker started"
    );
    let (lane, mut parts) = Lane::start(&process, broker, String::new(), sandbox);
    parts.0.push(tokio::spawn(control::listen(
        process.clone(),
        lane.broker.clone(),
        control::Scope::One(lane.clone()),
    )));
    parts.0.push(tokio::spawn(autoscale::run(lane.clone())));
    let shutdown = reached(process.stop.subscribe(), Stage::Warm);
    tokio::pin!(shutdown);
    fetch(&lane, &mut shutdown).await;
    shut_down(&process, std::slice::from_ref(&lane)).await;
    parts.abort();
    heartbeat.stop().await;
    if let Some(endpoint) = endpoint {
        endpoint.abort();
    }
    process.finish()
}

impl Process {
    fn new(
        config: WorkerConfig,
        compute: tokio::runtime::Handle,
        fair: bool,
        stop: watch::Sender<Stage>,
    ) -> Arc<Process> {
        Arc::new(Process {
            pool: Pool::new(config.concurrency, config.max_concurrency),
            queues: RwLock::new(config.queues.clone()),
            autoscale: Mutex::new(config.autoscale),
            stop,
            started: Instant::now(),
            config,
            fair,
            freed: Notify::new(),
            counts: Counts::default(),
            metrics: Arc::new(WorkerMetrics::new()),
            compute,
        })
    }

    /// The queues consumed now.
    fn queues(&self) -> Vec<String> {
        self.queues
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The summary, logged.
    fn finish(&self) -> Summary {
        let summary = self.counts.summary();
        tracing::info!(?summary, "worker stopped");
        summary
    }
}

impl<B: Broker + Clone> Lane<B> {
    /// A lane over `broker` with its background parts running; its fetch loop is the
    /// caller's to run.
    fn start(
        process: &Arc<Process>,
        broker: B,
        tenant: String,
        sandbox: Sandbox,
    ) -> (Arc<Lane<B>>, Parts) {
        let (settle_sender, settle_receiver) = mpsc::unbounded_channel();
        let lane = Arc::new(Lane {
            process: process.clone(),
            components: Components::new(broker.clone(), sandbox, process.metrics.clone()),
            broker,
            tenant,
            policies: Policies::default(),
            held: Mutex::new(HashMap::new()),
            early_terminations: Mutex::new(HashSet::new()),
            freed: Notify::new(),
            settle: settle_sender,
        });
        let parts = Parts(vec![
            tokio::spawn(settle::run(lane.clone(), settle_receiver)),
            tokio::spawn(keep(lane.clone())),
            tokio::spawn(reap(lane.clone())),
            tokio::spawn(listen(lane.clone())),
        ]);
        (lane, parts)
    }
}

impl<B> Lane<B> {
    fn held_count(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Deliveries held that have not started (prefetched, waiting for a slot).
    fn waiting(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|held| held.started_ms.is_none())
            .count()
    }
}

impl Parts {
    /// Stops the parts. Every settlement is done once the lane holds nothing: the settler
    /// removes a task only after its settlement returned.
    fn abort(&self) {
        for part in &self.0 {
            part.abort();
        }
    }
}

/// Shuts every lane down, whose fetch loops have returned. Warm: slots close (prefetched
/// messages go back) and running calls get the shutdown timeout. Soft, once it passed, or cold
/// at once if the shutdown goes cold meanwhile: running calls are stopped at their next epoch
/// tick and handed back. Each stage logs its counts.
async fn shut_down<B>(process: &Process, lanes: &[Arc<Lane<B>>]) {
    process.pool.close();
    let counts = || process.counts.summary();
    let before = counts();
    let running = |lanes: &[Arc<Lane<B>>]| lanes.iter().map(|lane| lane.held_count()).sum();
    let cold = reached(process.stop.subscribe(), Stage::Cold);
    tokio::pin!(cold);
    let stage = if *process.stop.borrow() >= Stage::Cold {
        "cold"
    } else {
        tracing::info!(
            held = running(lanes),
            timeout = ?process.config.shutdown_timeout,
            "warm shutdown: no new work; unstarted tasks go back, running tasks may finish (a second signal or SIGQUIT: cold shutdown)"
        );
        let deadline = Instant::now() + process.config.shutdown_timeout;
        tokio::select! {
            () = wait_until_settled(process, lanes, deadline) => "soft",
            () = &mut cold => "cold",
        }
    };
    let finished = counts().finished().saturating_sub(before.finished());
    let stopped = stop_all(lanes, StopReason::Shutdown);
    if stopped > 0 {
        tracing::info!(
            finished,
            stopping = stopped,
            "{stage} shutdown: stopping the running tasks at their next epoch tick and handing them back"
        );
    }
    // Stopped calls end within one epoch tick; their settlements may wait for a broker that
    // is down, but not past the lease, after which others reclaim them anyway.
    wait_until_settled(process, lanes, Instant::now() + process.config.lease).await;
    let after = counts();
    let unsettled: usize = running(lanes);
    tracing::info!(
        finished = after.finished().saturating_sub(before.finished()),
        handed_back = after.released.saturating_sub(before.released),
        unsettled,
        "shutdown complete"
    );
    if unsettled > 0 {
        tracing::warn!(
            unsettled,
            "could not settle every task before exiting; their leases will expire and other workers will run them"
        );
    }
}

/// Waits until no lane holds a delivery, or `deadline`.
async fn wait_until_settled<B>(process: &Process, lanes: &[Arc<Lane<B>>], deadline: Instant) {
    loop {
        // Registered before looking, so a settlement in between still wakes it.
        let freed = process.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if lanes.iter().all(|lane| lane.held_count() == 0) || Instant::now() >= deadline {
            return;
        }
        let _ = tokio::time::timeout_at(deadline.into(), freed).await;
    }
}

fn stop_all<B>(lanes: &[Arc<Lane<B>>], reason: StopReason) -> usize {
    let mut stopped = 0;
    for lane in lanes {
        let mut held = lane.held.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in held.values_mut() {
            entry.reason.get_or_insert(reason);
            entry.stop.send_replace(true);
        }
        stopped += held.len();
    }
    stopped
}

/// What a fetch loop may reserve now.
enum Room {
    /// Up to this many messages; for a fair lane, with one slot per message already taken.
    Some(usize, Option<OwnedSemaphorePermit>),
    /// Nothing until one of the lane's calls ends.
    Full,
    Shutdown,
}

/// Leases messages for `lane` while there is room, until shutdown.
async fn fetch<B: Broker + Clone>(
    lane: &Arc<Lane<B>>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) {
    let config = &lane.process.config;
    let lease_ms = config.lease.as_millis() as u64;
    let mut backoff = Duration::from_millis(50);
    // When the last reserve came back empty, and whether it followed another empty one.
    let mut last_empty: Option<Instant> = None;
    loop {
        // Registered before the room is counted, so a slot freed in between still wakes us.
        let freed = lane.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if requested(shutdown).await {
            return;
        }
        let queues = lane.process.queues();
        let (room, slots) = match room(lane, shutdown).await {
            Room::Some(room, slots) => (room, slots),
            Room::Shutdown => return,
            Room::Full => {
                tokio::select! {
                    biased;
                    () = &mut *shutdown => return,
                    () = freed => continue,
                }
            }
        };
        // Not raced with shutdown: the script runs whether or not its reply is awaited, and
        // what it leased must be registered to be handed back at once.
        let reserved = lane
            .broker
            .reserve(&config.name, &queues, room, lease_ms, now_ms())
            .await;
        match reserved {
            Ok(deliveries) if deliveries.is_empty() => {
                drop(slots);
                backoff = Duration::from_millis(50);
                // `wait_for_work` returns at once while messages are ready, and they stay
                // ready while the namespace is at its concurrency cap: after a second empty
                // reserve in a row that did not wait, pause (or until one of ours ends).
                if last_empty.is_some_and(|at| at.elapsed() < IDLE_WAIT) {
                    tokio::select! {
                        biased;
                        () = &mut *shutdown => return,
                        () = &mut freed => {}
                        () = tokio::time::sleep(CAPPED_PAUSE) => {}
                    }
                }
                last_empty = Some(Instant::now());
                tokio::select! {
                    biased;
                    () = &mut *shutdown => return,
                    _ = lane.broker.wait_for_work(&queues, IDLE_WAIT) => {}
                }
            }
            Ok(deliveries) => {
                backoff = Duration::from_millis(50);
                last_empty = None;
                let mut slots = slots;
                for delivery in deliveries {
                    // A fair lane holds one slot per message it asked for.
                    let slot = slots.as_mut().and_then(|slots| slots.split(1));
                    start(lane, delivery, slot);
                }
            }
            Err(error) => {
                drop(slots);
                tracing::warn!(tenant = %lane.tenant, %error, retry_in = ?backoff, "cannot reserve work; retrying");
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

/// How many messages `lane` may reserve. A prefetching lane counts what it holds; a fair lane
/// waits its turn for one slot, then takes any others no lane is waiting for.
async fn room<B>(lane: &Lane<B>, shutdown: &mut Pin<&mut impl Future<Output = ()>>) -> Room {
    let process = &lane.process;
    if !process.fair {
        let room_total = process.pool.size() * process.config.prefetch_multiplier.max(1);
        let room = room_total.saturating_sub(lane.held_count()).min(MAX_BATCH);
        return if room == 0 {
            Room::Full
        } else {
            Room::Some(room, None)
        };
    }
    let mut slots = tokio::select! {
        biased;
        () = &mut *shutdown => return Room::Shutdown,
        slot = process.pool.acquire() => match slot {
            Ok(slot) => slot,
            Err(_) => return Room::Shutdown,
        },
    };
    // Permits are handed to waiters first, so the ones left over are wanted by no other lane.
    if let Some(more) = process.pool.try_acquire_spare(MAX_BATCH - 1) {
        slots.merge(more);
    }
    Room::Some(slots.num_permits(), Some(slots))
}

/// Whether `shutdown` has resolved, without waiting for it.
async fn requested(shutdown: &mut Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => true,
        () = std::future::ready(()) => false,
    }
}

/// Registers a delivery and spawns its execution, with its slot if it already has one.
fn start<B: Broker + Clone>(
    lane: &Arc<Lane<B>>,
    delivery: Delivery,
    slot: Option<OwnedSemaphorePermit>,
) {
    let (stop, stopped) = watch::channel(false);
    let (progress_sender, progress) = watch::channel(None);
    let early = lane
        .early_terminations
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&delivery.id)
        || delivery.terminating;
    let delivery = Arc::new(delivery);
    let held = Held {
        token: delivery.token,
        delivery: delivery.clone(),
        stop,
        reason: early.then_some(StopReason::Revoked),
        started_ms: None,
        marked_started: false,
        progress,
    };

    if early {
        held.stop.send_replace(true);
    }
    lane.held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(delivery.id.clone(), held);
    lane.process.compute.spawn(execute(
        lane.clone(),
        delivery,
        slot,
        stopped,
        progress_sender,
    ));
}

/// Runs one delivery (taking a slot first if it has none) and hands its settlement to the
/// settler.
async fn execute<B: Broker + Clone>(
    lane: Arc<Lane<B>>,
    delivery: Arc<Delivery>,
    slot: Option<OwnedSemaphorePermit>,
    stopped: watch::Receiver<bool>,
    progress: watch::Sender<Option<Progress>>,
) {
    let lease = Lease {
        id: delivery.id.clone(),
        token: delivery.token,
    };
    let slot = match slot {
        Some(slot) => Some(slot),
        None => lane.process.pool.acquire().await.ok(),
    };
    let settlement = match slot {
        // Closed: warm shutdown began before this prefetched message got a slot; it goes back
        // (unless it was revoked meanwhile).
        None => stopped_settlement(&lane, &delivery, None, None),
        Some(_slot) => run_one(&lane, &delivery, stopped, progress).await,
    };
    let _ = lane.settle.send(Settle { lease, settlement });
}

async fn run_one<B: Broker + Clone>(
    lane: &Lane<B>,
    delivery: &Delivery,
    stopped: watch::Receiver<bool>,
    progress: watch::Sender<Option<Progress>>,
) -> Settlement {
    let message = match &delivery.message {
        Ok(message) => message,
        Err(reason) => {
            tracing::warn!(id = %delivery.id, tenant = %lane.tenant, %reason, "undecodable message; dead-lettering it");
            return Settlement::DeadLetter(TaskFailure {
                kind: "malformed_message".into(),
                message: format!("the message could not be decoded: {reason}"),
            });
        }
    };
    if *stopped.borrow() {
        return stopped_settlement(lane, delivery, None, None);
    }
    let (component, digest) = match lane.components.get(message).await {
        Ok(found) => found,
        Err(ComponentError::Broker(error)) => {
            tracing::warn!(id = %delivery.id, tenant = %lane.tenant, %error, "registry unreachable; handing the task back");
            return stopped_settlement(lane, delivery, None, None);
        }
        Err(ComponentError::Unavailable(reason)) => {
            let attempt = outcome::attempt(lane, delivery, None, None, State::Failure);
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
    // From enqueue, or from its countdown / ETA. A retry's own due time is not in the
    // message, so its wait counts from the first enqueue (earlier attempts included).
    let due_ms = message.created_ms.max(message.eta_ms.unwrap_or(0));
    lane.process
        .metrics
        .started(started_ms.saturating_sub(due_ms));
    if let Some(held) = lane
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(&delivery.id)
    {
        held.started_ms = Some(started_ms);
    }
    let defaults = Limits {
        time: lane
            .policies
            .time_limit(&lane.broker, &message.component, &message.task)
            .await
            .unwrap_or(lane.process.config.limits.time),
        ..lane.process.config.limits
    };
    let limits = outcome::limits(&defaults, &message.limits);
    let request = crate::sandbox::CallRequest {
        task: &message.task,
        args: &message.args,
        batch: message.batch,
        task_id: &delivery.id,
        attempt: delivery.attempt,
        tenant: &lane.tenant,
        limits,
        cancel: Some(stopped),
        progress: Some(progress),
    };
    match component.call(&request).await {
        Ok(report) => {
            lane.process.metrics.finished(&report);
            outcome::settlement(lane, delivery, message, &digest, started_ms, report)
        }
        Err(error) => {
            // The host failed (e.g. the instance pool is exhausted), not the task: retry later.
            tracing::error!(id = %delivery.id, tenant = %lane.tenant, %error, "sandbox failure; handing the task back");
            stopped_settlement(lane, delivery, None, None)
        }
    }
}

/// The settlement of a delivery that was stopped before or while running, or that cannot run
/// now: REVOKED if it was revoked with terminate, otherwise handed back.
fn stopped_settlement<B>(
    lane: &Lane<B>,
    delivery: &Delivery,
    digest: Option<&str>,
    started_ms: Option<u64>,
) -> Settlement {
    let reason = lane
        .held
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&delivery.id)
        .and_then(|held| held.reason);
    match reason {
        Some(StopReason::Revoked) => {
            let attempt = outcome::attempt(lane, delivery, digest, started_ms, State::Revoked);
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

/// Renews the lane's held leases and records STARTED / PROGRESS.
async fn keep<B: Broker + Clone>(lane: Arc<Lane<B>>) {
    let config = &lane.process.config;
    let lease_ms = config.lease.as_millis() as u64;
    let renew_every = (config.lease / 3).max(MARK_INTERVAL);
    let mut last_renewal = Instant::now();
    let mut ticker = tokio::time::interval(MARK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = now_ms();
        let marks = due_marks(&lane, now);
        if !marks.is_empty()
            && let Err(error) = lane.broker.mark(&marks).await
        {
            tracing::warn!(tenant = %lane.tenant, %error, "cannot record task progress");
        }
        if last_renewal.elapsed() < renew_every {
            continue;
        }
        last_renewal = Instant::now();
        let leases: Vec<Lease> = lane
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
        match lane.broker.renew(&leases, lease_ms, now_ms()).await {
            Ok(held_still) => {
                let mut held = lane.held.lock().unwrap_or_else(PoisonError::into_inner);
                for (lease, kept) in leases.iter().zip(held_still) {
                    if let Some(entry) = held.get_mut(&lease.id)
                        && !kept
                        && entry.token == lease.token
                    {
                        tracing::warn!(id = %lease.id, tenant = %lane.tenant, "lease lost (taken over after expiry); stopping the task");
                        entry.reason.get_or_insert(StopReason::LeaseLost);
                        entry.stop.send_replace(true);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(tenant = %lane.tenant, %error, "cannot renew leases; will retry")
            }
        }
    }
}

/// STARTED for calls running longer than one mark interval, PROGRESS for new reports.
fn due_marks<B>(lane: &Lane<B>, now: u64) -> Vec<Mark> {
    let mut held = lane.held.lock().unwrap_or_else(PoisonError::into_inner);
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

/// Returns the lane's namespace's expired leases (of any worker) to their queues.
async fn reap<B: Broker + Clone>(lane: Arc<Lane<B>>) {
    let mut ticker = tokio::time::interval(lane.process.config.reap_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match lane.broker.reap(now_ms(), 1000).await {
            Ok(0) => {}
            Ok(reclaimed) => {
                lane.process.metrics.reclaimed(reclaimed as u64);
                tracing::info!(tenant = %lane.tenant, reclaimed, "returned expired leases to their queues")
            }
            Err(error) => {
                tracing::warn!(tenant = %lane.tenant, %error, "cannot reap expired leases")
            }
        }
    }
}

/// Stops held tasks of the lane that are revoked with terminate.
async fn listen<B: Broker + Clone>(lane: Arc<Lane<B>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut requests = match lane.broker.terminations().await {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(tenant = %lane.tenant, %error, "cannot subscribe to terminate requests; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        while let Some(id) = requests.recv().await {
            let mut held = lane.held.lock().unwrap_or_else(PoisonError::into_inner);
            match held.get_mut(&id) {
                Some(entry) => {
                    tracing::info!(%id, tenant = %lane.tenant, "terminating on request");
                    entry.reason.get_or_insert(StopReason::Revoked);
                    entry.stop.send_replace(true);
                }
                None => {
                    drop(held);
                    remember_early(&lane, id);
                }
            }
        }
    }
}

/// Most remembered terminate requests for ids not held; older ones are dropped.
const MAX_EARLY_TERMINATIONS: usize = 10_000;

fn remember_early<B>(lane: &Lane<B>, id: String) {
    let mut early = lane
        .early_terminations
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if early.len() >= MAX_EARLY_TERMINATIONS {
        early.clear();
    }
    early.insert(id);
}

impl Summary {
    /// Tasks that reached a final state or were retried.
    fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.retried + self.revoked
    }
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
