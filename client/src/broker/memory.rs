//! The embedded in-memory broker: the whole [`Broker`] contract over plain maps behind one
//! mutex, for `wtq up` (one process, no Redis) and fast tests. Its observable behaviour is the
//! Redis broker's; the behavioural suite in `client/tests/` runs against both.
//!
//! It owns no threads and no timers. Time moves only when a caller passes `now_ms`: the
//! broker remembers the latest time it was given and drops final records and idempotency keys
//! whose expiry has passed, on the next call that carries a time (and lazily on reads).
//! Waiting (`wait`, `wait_for_work`) is woken by [`Notify`], never by polling.
//!
//! Namespaces: [`MemoryBroker::new`] makes a universe (namespaces plus the global tenant and
//! token registry) and a broker for its default namespace; [`Tenancy::namespaced`] reaches
//! another namespace of the same universe, whose store is its own (its own mutex, too), so
//! namespaces are as isolated as they are in Redis.
//!
//! Workflows ([`Broker::submit`]) follow the Redis scripts' `flow_*` functions (the prelude's
//! workflow section) step for step: parked tasks wait outside every queue, and each final
//! transition runs the task's links in the same locked section (`Store::flow_links`). Results
//! are spliced into arguments and gathered into lists as text, as the scripts do, so an output
//! reaches the next task as it was written.
//!
//! Not here: persistence (a restart loses everything, as `wtq up` documents) and the Redis
//! wire format (messages are kept decoded, so a delivery's message is always `Ok`).
//!
//! Entry point: [`MemoryBroker::new`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::select_all;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

#[path = "memory_control.rs"]
mod control;
#[path = "memory_schedule.rs"]
mod schedule;

use super::task_rate;
use super::tenancy::{EVENTS_BUFFER, GcraStep, Metered, gcra, invalid_namespace};
use super::{
    Broker, Delivery, Enqueued, Error, IDEMPOTENCY_TTL_MS, Lease, Mark, NewTask, Revoked, Settle,
    Settled, Settlement, Tenancy,
};
use crate::connect::DEFAULT_NAMESPACE;
use crate::message::{
    Attempt, MAX_PRIORITY, Progress, State, TaskFailure, TaskMessage, TaskRecord,
};
use crate::registry::{ComponentRecord, TaskPolicy, Upload};
use crate::tenancy::{
    EVENT_LOG_CAP, EVENTS_ON_TTL, EVENTS_REFRESH, Event, Rate, RateDecision, Tenant, TokenRecord,
    Usage, namespace_of,
};
use crate::workflow::{Input, JoinSlot, Links, Parked, Plan, Tree};

/// Ids a worker's termination channel holds before further requests are dropped (with a
/// warning). A worker drains it continuously, and it also checks [`Broker::terminating`] at
/// each delivery, so a dropped request is only lost for a task already running through a
/// flood of a thousand others.
const TERMINATION_BUFFER: usize = 1024;

/// Shortest wait of `wait_for_work` when a delayed message is already due by the real clock
/// (the caller's may differ): keeps such a caller from spinning.
const MIN_DUE_WAIT: Duration = Duration::from_millis(10);

/// Failure kinds the broker itself assigns (the sandbox's kinds come from the worker).
const KIND_EXPIRED: &str = "expired";
const KIND_REVOKED: &str = "revoked";
const KIND_PURGED: &str = "purged";
const KIND_DEAD_LETTERED: &str = "dead_lettered";
/// A parked errback whose task succeeded.
const KIND_SKIPPED: &str = "skipped";
/// A parked task whose owner failed, or was revoked.
const KIND_UPSTREAM_FAILED: &str = "upstream_failed";
const KIND_UPSTREAM_REVOKED: &str = "upstream_revoked";

/// The in-memory broker of one namespace. Clones share one store; [`Tenancy::namespaced`]
/// brokers share the universe.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    universe: Arc<Universe>,
    store: Arc<Mutex<Store>>,
}

/// Everything brokers made from one [`MemoryBroker::new`] share: what Redis holds for all
/// namespaces.
#[derive(Debug, Default)]
struct Universe {
    /// Namespace → its store, created on first use and kept (namespaces are tenants: few).
    namespaces: Mutex<HashMap<String, Arc<Mutex<Store>>>>,
    /// The global tenant and token registry (`wtq:tenants`, `wtq:tokens` in Redis).
    registry: Mutex<Registry>,
    /// `wtq beat`'s entries, states and leases, per namespace (`memory_schedule.rs`).
    schedules: schedule::Table,
    /// Remote control's listeners, per namespace (`memory_control.rs`).
    control: control::Table,
}

impl Universe {
    /// The store of `namespace`. Never called with a store's lock held: the universe's lock
    /// is taken alone, so the two can never be taken in opposite orders.
    fn namespace(&self, namespace: &str) -> Arc<Mutex<Store>> {
        let mut namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(namespaces.entry(namespace.to_string()).or_default())
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Poisoning is ignored for the reason given at `MemoryBroker::lock`.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Tenants and tokens.
#[derive(Debug, Default)]
struct Registry {
    tenants: BTreeMap<String, Tenant>,
    /// Token hash → record.
    tokens: HashMap<String, TokenRecord>,
}

impl Default for MemoryBroker {
    fn default() -> MemoryBroker {
        MemoryBroker::new()
    }
}

impl MemoryBroker {
    /// A new, empty universe, and its default namespace's broker.
    pub fn new() -> MemoryBroker {
        let universe = Arc::new(Universe::default());
        let store = universe.namespace(DEFAULT_NAMESPACE);
        MemoryBroker { universe, store }
    }

    /// The store, for one short synchronous section: the guard is never held across an await
    /// (it is not `Send`, so the compiler enforces it for the trait's `Send` futures).
    fn lock(&self) -> MutexGuard<'_, Store> {
        // Sections do not panic by design; if one did, refusing every later caller would turn
        // one bug into a dead `wtq up`, so a poisoned lock is used as is.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A task's place in its ready queue: priority 9 first (rank 0), then enqueue order. Fixed at
/// enqueue, so a released, reaped, retried or re-queued message goes back where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    rank: u8,
    /// Unique per task for the broker's life; also disambiguates the time-keyed indexes.
    seq: u64,
}

/// Where a task is. Each variant but `Ready` carries the key of its index entry, so
/// [`Indexes::remove`] can find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// In its queue's ready set.
    Ready,
    /// In its queue's delayed set until `eta_ms`.
    Delayed { eta_ms: u64 },
    /// Leased to a worker under `token` until `until_ms`.
    Leased { token: u64, until_ms: u64 },
    /// Final; the record is dropped at `expires_ms`.
    Finished { expires_ms: u64 },
    /// Dead-lettered, `order`-th; kept until retried or purged.
    Dead { order: u64 },
    /// A workflow task waiting for its owner to start it (or drop it): in no index, so no
    /// worker, purge or reap sees it.
    Parked,
}

/// One task: its message and everything its record shows.
#[derive(Debug)]
struct Task {
    message: TaskMessage,
    state: State,
    place: Place,
    slot: Slot,
    /// Deliveries of the current attempt.
    deliveries: u32,
    /// The current attempt, 1 for the first.
    attempt: u32,
    worker: Option<String>,
    progress: Option<Progress>,
    error: Option<TaskFailure>,
    attempts: Vec<Attempt>,
    finished_ms: Option<u64>,
    /// Woken when the task becomes final, for [`Broker::wait`]. Per task, so a waiter wakes
    /// for its own task only.
    finished: Arc<Notify>,
    /// A workflow task's links; `None` for a plain task.
    flow: Option<Box<Flow>>,
    /// The rate-limit slot (Unix µs) booked for it while it waits in the delayed set; its
    /// delivery then takes no other (`rate_slot` in Redis).
    rate_slot: Option<u64>,
}

/// A workflow task's part in its workflow (the `flow` fields of its hash in Redis).
#[derive(Debug)]
struct Flow {
    /// `math.add`: names the task in the failures it causes downstream.
    address: String,
    links: Links,
    /// How a parked task takes its input: `Some` exactly while its slot is [`Slot::Parked`].
    parked: Option<Parked>,
    /// The joins whose groups it is inside: only those of them that collect failures
    /// collect its failure.
    within: Vec<String>,
}

/// A join waiting for its members (`join:<id>` in Redis); removed once its links ran.
#[derive(Debug)]
struct Join {
    size: usize,
    collect: bool,
    flatten: bool,
    links: Links,
    /// Member index → its result (or `{"error": failure}`) as JSON text. The first delivery
    /// of an index counts; a second one (a re-run member) changes nothing.
    results: BTreeMap<usize, String>,
}

impl Join {
    /// The results in member order as one JSON array; a flattening join concatenates the
    /// members' lists instead.
    fn gather(&self) -> String {
        let mut parts = Vec::with_capacity(self.size);
        for index in 0..self.size {
            let value = self.results.get(&index).map_or("null", String::as_str);
            let list = value
                .trim()
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'));
            match list {
                Some(items) if self.flatten => {
                    if !items.trim().is_empty() {
                        parts.push(items);
                    }
                }
                _ => parts.push(value),
            }
        }
        format!("[{}]", parts.join(","))
    }
}

/// What a failed (or revoked) workflow task hands down its links: the JSON object its
/// errbacks receive.
#[derive(Debug, Clone, Serialize)]
struct FlowFailure {
    id: String,
    task: String,
    kind: String,
    message: String,
    /// The index of the chord header member that failed, set by the join it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<usize>,
}

impl FlowFailure {
    /// The error message of a task that will not run because of this failure.
    fn describe(&self, state: State) -> String {
        let member = self
            .member
            .map(|index| format!("chord header member {index}, "))
            .unwrap_or_default();
        let verb = if state == State::Revoked {
            "was revoked"
        } else {
            "failed"
        };
        format!(
            "{member}{} ({}) {verb}: {}: {}",
            self.task, self.id, self.kind, self.message
        )
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("a failure is plain strings and a number")
    }
}

/// How a workflow task or join ended, as its links see it.
#[derive(Debug, Clone)]
enum Ended {
    /// Its output (JSON text).
    Success(String),
    /// FAILURE or REVOKED (or another final state a worker reported), and the joins the
    /// task that failed is inside.
    Failure(FlowFailure, State, Vec<String>),
    /// It will never run because nothing failed (an errback whose task succeeded): what is
    /// behind it is skipped too, errbacks included.
    Skipped,
}

/// The error of a task skipped because what it handles did not fail.
fn skipped() -> TaskFailure {
    failure(
        KIND_SKIPPED,
        "not needed: what it handles did not fail".to_string(),
    )
}

/// A parked task's own arguments with its input (JSON text) joined in. By text, as the Redis
/// script does: the input is never reparsed.
fn with_input(own: &str, input: &Input, value: &str) -> String {
    match input {
        Input::Ignore => own.to_string(),
        Input::Prepend => prepend(own, '[', ']', value),
        Input::Keyword(name) => {
            let name = serde_json::to_string(name).expect("a string serialises");
            prepend(own, '{', '}', &format!("{name}:{value}"))
        }
    }
}

/// `first` as the first item of the JSON array or object `own`.
fn prepend(own: &str, open: char, close: char, first: &str) -> String {
    let rest = own.trim_start();
    let rest = rest.strip_prefix(open).unwrap_or(rest).trim_start();
    if rest.starts_with(close) {
        format!("{open}{first}{close}")
    } else {
        format!("{open}{first},{rest}")
    }
}

impl Task {
    fn record(&self, id: &str) -> TaskRecord {
        TaskRecord {
            id: id.to_string(),
            state: self.state,
            message: self.message.clone(),
            deliveries: self.deliveries,
            worker: self.worker.clone(),
            progress: self.progress.clone(),
            error: self.error.clone(),
            attempts: self.attempts.clone(),
            finished_ms: self.finished_ms,
        }
    }
}

/// The orderings over tasks, each an index into [`Store::tasks`] kept in step with every
/// task's [`Slot`] by [`Store::move_to`].
#[derive(Debug, Default)]
struct Indexes {
    /// Queue → ready messages in delivery order. Empty queues are removed.
    ready: HashMap<String, BTreeMap<Place, String>>,
    /// Queue → (eta, seq) → id. Empty queues are removed.
    delayed: HashMap<String, BTreeMap<(u64, u64), String>>,
    /// (lease expiry, token) → id: `reap` takes the oldest expiries first.
    leases: BTreeMap<(u64, u64), String>,
    /// (record expiry, seq) → id of final tasks.
    expiring: BTreeMap<(u64, u64), String>,
    /// Dead-letter order → id: `dead` lists the newest first. A counter, not the clock, so
    /// that "most recent" is call order even within one millisecond.
    dead: BTreeMap<u64, String>,
    /// Queue → signal for `wait_for_work`, fired whenever a message becomes ready there.
    /// Created on first use and kept: queues are few and named by operators.
    work: HashMap<String, Arc<Notify>>,
}

impl Indexes {
    fn remove(&mut self, task: &Task) {
        let queue = task.message.queue.as_str();
        let seq = task.place.seq;
        match task.slot {
            Slot::Ready => {
                if let Some(ready) = self.ready.get_mut(queue) {
                    ready.remove(&task.place);
                    if ready.is_empty() {
                        self.ready.remove(queue);
                    }
                }
            }
            Slot::Delayed { eta_ms } => {
                if let Some(delayed) = self.delayed.get_mut(queue) {
                    delayed.remove(&(eta_ms, seq));
                    if delayed.is_empty() {
                        self.delayed.remove(queue);
                    }
                }
            }
            Slot::Leased { token, until_ms } => {
                self.leases.remove(&(until_ms, token));
            }
            Slot::Finished { expires_ms } => {
                self.expiring.remove(&(expires_ms, seq));
            }
            Slot::Dead { order } => {
                self.dead.remove(&order);
            }
            Slot::Parked => {}
        }
    }

    fn insert(&mut self, id: &str, task: &Task) {
        let queue = &task.message.queue;
        let seq = task.place.seq;
        let id = id.to_string();
        match task.slot {
            Slot::Ready => {
                self.ready
                    .entry(queue.clone())
                    .or_default()
                    .insert(task.place, id);
                // Wake every worker waiting on this queue; all but one find nothing, which
                // the contract allows, and none can miss it.
                if let Some(work) = self.work.get(queue) {
                    work.notify_waiters();
                }
            }
            Slot::Delayed { eta_ms } => {
                self.delayed
                    .entry(queue.clone())
                    .or_default()
                    .insert((eta_ms, seq), id);
            }
            Slot::Leased { token, until_ms } => {
                self.leases.insert((until_ms, token), id);
            }
            Slot::Finished { expires_ms } => {
                self.expiring.insert((expires_ms, seq), id);
            }
            Slot::Dead { order } => {
                self.dead.insert(order, id);
            }
            Slot::Parked => {}
        }
    }

    fn work_signal(&mut self, queue: &str) -> Arc<Notify> {
        Arc::clone(self.work.entry(queue.to_string()).or_default())
    }

    fn depth(&self, queue: &str) -> usize {
        self.ready.get(queue).map_or(0, BTreeMap::len)
    }
}

/// One rate-limited task's deferred messages: id → due time (ms), as Redis's
/// `task-rate-deferred:<task>` zset. Stale ids (revoked, purged, expired) are skipped when
/// used and trimmed once due, as there.
#[derive(Debug, Default)]
struct Deferred {
    due: HashMap<String, u64>,
    order: BTreeSet<(u64, String)>,
}

impl Deferred {
    fn insert(&mut self, id: &str, due_ms: u64) {
        if let Some(old) = self.due.insert(id.to_string(), due_ms) {
            self.order.remove(&(old, id.to_string()));
        }
        self.order.insert((due_ms, id.to_string()));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.due.remove(id) {
            self.order.remove(&(old, id.to_string()));
        }
    }

    /// Drops the entries due before `now_ms`: they are looked at again anyway.
    fn trim(&mut self, now_ms: u64) {
        while self.order.first().is_some_and(|(due, _)| *due < now_ms) {
            if let Some((_, id)) = self.order.pop_first() {
                self.due.remove(&id);
            }
        }
    }
}

/// Everything the broker holds.
#[derive(Debug, Default)]
struct Store {
    /// The latest `now_ms` any call passed: records and keys expire against it, so tests that
    /// drive the clock by hand see the same expiries as a real clock would give.
    clock_ms: u64,
    next_seq: u64,
    /// Fencing tokens: every reserve takes the next, so a token is never reused.
    next_token: u64,
    next_dead: u64,
    tasks: HashMap<String, Task>,
    index: Indexes,
    /// Idempotency key → (first task's id, key expiry).
    idempotency: HashMap<String, (String, u64)>,
    /// (key expiry, key), to drop keys in expiry order.
    idempotency_expiry: BTreeSet<(u64, String)>,
    /// Running tasks a terminate was requested for; cleared when they become final.
    terminating: HashSet<String>,
    /// One sender per `terminations()` subscriber; closed ones are dropped on the next send.
    subscribers: Vec<mpsc::Sender<String>>,
    components: BTreeMap<String, ComponentRecord>,
    /// Digest → gzip-compressed component bytes.
    blobs: HashMap<String, Vec<u8>>,
    /// Most tasks leased at once in this namespace (`quota` `concurrency` in Redis).
    concurrency: Option<u32>,
    usage: Usage,
    /// Rate bucket → GCRA theoretical arrival time (Unix µs). Buckets are few (one per kind of
    /// limited action); a bucket whose time has passed is as good as absent and is dropped.
    rates: HashMap<String, u64>,
    /// Per-task rate limits by `component.task` (`task-rates` in Redis), enforced by reserve.
    task_rates: BTreeMap<String, Rate>,
    /// Per-task time limits (ms) by `component.task` (`task-time-limits`): stored only.
    task_time_limits: BTreeMap<String, u64>,
    /// A rate-limited task's next free slot and defer cursor (Unix µs, `task-rate:<task>` and
    /// `task-rate-defer:<task>`); passed ones are as good as absent, and dropped.
    task_slots: HashMap<String, task_rate::Bucket>,
    /// A rate-limited task's deferred messages (`task-rate-deferred:<task>`), so a changed
    /// limit can bring them back; dropped with its cursor, as every one is due by then.
    task_deferred: HashMap<String, Deferred>,
    /// The event log (`events` in Redis).
    events: EventLog,
    /// Workflow id → its tree and the tree's expiry.
    workflows: HashMap<String, (Tree, u64)>,
    /// (tree expiry, workflow id), to drop trees in expiry order.
    workflow_expiry: BTreeSet<(u64, String)>,
    /// Joins still waiting; like Redis's join hashes, they have no expiry: each has an owner
    /// whose end completes or fails it.
    joins: HashMap<String, Join>,
}

impl Store {
    /// Moves the clock to `now_ms` (never back) and drops what expired by then.
    fn advance(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        while let Some(entry) = self.index.expiring.first_entry() {
            if entry.key().0 > self.clock_ms {
                break;
            }
            let id = entry.remove();
            self.tasks.remove(&id);
            self.terminating.remove(&id);
        }
        while let Some((expires_ms, _)) = self.idempotency_expiry.first() {
            if *expires_ms > self.clock_ms {
                break;
            }
            if let Some((_, key)) = self.idempotency_expiry.pop_first() {
                self.idempotency.remove(&key);
            }
        }
        while let Some((expires_ms, _)) = self.workflow_expiry.first() {
            if *expires_ms > self.clock_ms {
                break;
            }
            if let Some((expires_ms, id)) = self.workflow_expiry.pop_first()
                && self
                    .workflows
                    .get(&id)
                    .is_some_and(|(_, at)| *at == expires_ms)
            {
                self.workflows.remove(&id);
            }
        }
    }

    /// The task, unless its record has expired (it may not have been swept yet: a record
    /// can expire in the same call that finished it, when `result_expires_ms` is 0).
    fn live(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).filter(|task| match task.slot {
            Slot::Finished { expires_ms } => expires_ms > self.clock_ms,
            _ => true,
        })
    }

    fn record(&self, id: &str) -> Option<TaskRecord> {
        self.live(id).map(|task| task.record(id))
    }

    /// Moves a task to `slot`, keeping the indexes in step: the only place a slot changes.
    fn move_to(&mut self, id: &str, slot: Slot) {
        if let Some(task) = self.tasks.get_mut(id) {
            self.index.remove(task);
            task.slot = slot;
            self.index.insert(id, task);
        }
    }

    /// Whether `lease` is still the task's current lease.
    fn held(&self, lease: &Lease) -> bool {
        self.tasks.get(&lease.id).is_some_and(
            |task| matches!(task.slot, Slot::Leased { token, .. } if token == lease.token),
        )
    }

    /// Moves due delayed messages of `queue` to its ready set.
    fn promote(&mut self, queue: &str, now_ms: u64) {
        let mut due = Vec::new();
        if let Some(delayed) = self.index.delayed.get(queue) {
            due.extend(
                delayed
                    .range(..=(now_ms, u64::MAX))
                    .map(|(_, id)| id.clone()),
            );
        }
        for id in due {
            self.move_to(&id, Slot::Ready);
        }
    }

    /// Whether the ready task `id` may be leased now under its task's rate limit; if not, it
    /// is moved to its delayed set, booked or deferred (`task_rate.rs`; `reserve.lua`'s
    /// `rate_allows`).
    fn rate_allows(&mut self, id: &str, now_ms: u64) -> bool {
        let now_us = now_ms.saturating_mul(1000);
        let Some(task) = self.tasks.get_mut(id) else {
            return true;
        };
        if let Some(slot_us) = task.rate_slot {
            if slot_us > now_us + task_rate::SLOT_TOLERANCE_US {
                let eta_ms = task_rate::due_ms(slot_us);
                self.move_to(id, Slot::Delayed { eta_ms });
                return false;
            }
            task.rate_slot = None;
            return true;
        }
        if self.task_rates.is_empty() {
            return true;
        }
        let name = format!("{}.{}", task.message.component, task.message.task);
        let Some(&rate) = self.task_rates.get(&name) else {
            return true;
        };
        let queue = task.message.queue.clone();
        // Passed times are as good as absent (Redis expires the keys then).
        for bucket in self.task_slots.values_mut() {
            if bucket.tat_us <= now_us {
                bucket.tat_us = 0;
            }
            if bucket.cursor_us <= now_us {
                bucket.cursor_us = 0;
            }
        }
        self.task_slots
            .retain(|_, bucket| *bucket != task_rate::Bucket::default());
        let slots = &self.task_slots;
        self.task_deferred
            .retain(|name, _| slots.get(name).is_some_and(|bucket| bucket.cursor_us > 0));
        let bucket = self.task_slots.get(&name).copied().unwrap_or_default();
        let (step, next) = task_rate::step(bucket, rate, now_ms);
        self.task_slots.insert(name.clone(), next);
        match step {
            task_rate::Step::Lease => {
                if let Some(deferred) = self.task_deferred.get_mut(&name) {
                    deferred.remove(id);
                }
                true
            }
            task_rate::Step::Book { slot_us } => {
                if let Some(deferred) = self.task_deferred.get_mut(&name) {
                    deferred.remove(id);
                }
                if let Some(task) = self.tasks.get_mut(id) {
                    task.rate_slot = Some(slot_us);
                }
                let eta_ms = task_rate::due_ms(slot_us);
                self.move_to(id, Slot::Delayed { eta_ms });
                // Waiting workers learn of the new due time, as Redis's PUBLISH tells them.
                if let Some(work) = self.index.work.get(&queue) {
                    work.notify_waiters();
                }
                false
            }
            task_rate::Step::Defer { due_ms } => {
                let deferred = self.task_deferred.entry(name).or_default();
                deferred.trim(now_ms);
                deferred.insert(id, due_ms);
                self.move_to(id, Slot::Delayed { eta_ms: due_ms });
                false
            }
        }
    }

    /// A changed rate limit's reset (`set_rate_limit.lua`): a fresh bucket and cursor, and the
    /// task's deferred messages still waiting in their delayed sets back to their places in the
    /// ready set.
    fn undefer(&mut self, name: &str) {
        self.task_slots.remove(name);
        let Some(deferred) = self.task_deferred.remove(name) else {
            return;
        };
        for (id, due_ms) in deferred.due {
            let waiting = self
                .tasks
                .get(&id)
                .is_some_and(|task| task.slot == Slot::Delayed { eta_ms: due_ms });
            if waiting {
                self.move_to(&id, Slot::Ready);
            }
        }
    }

    /// Leases the ready task `id` to `worker`.
    fn deliver(&mut self, id: &str, worker: &str, lease_ms: u64, now_ms: u64) -> Option<Delivery> {
        self.next_token += 1;
        let token = self.next_token;
        let task = self.tasks.get_mut(id)?;
        task.deliveries = task.deliveries.saturating_add(1);
        task.state = State::Received;
        task.worker = Some(worker.to_string());
        let delivery = Delivery {
            id: id.to_string(),
            token,
            message: Ok(task.message.clone()),
            deliveries: task.deliveries,
            attempt: task.attempt,
            terminating: self.terminating.contains(id),
            received_ms: now_ms,
        };
        self.event(id, State::Received, now_ms);
        self.move_to(
            id,
            Slot::Leased {
                token,
                until_ms: now_ms.saturating_add(lease_ms),
            },
        );
        Some(delivery)
    }

    /// Makes a waiting or running task final (SUCCESS, FAILURE or REVOKED) and carries out
    /// its workflow links; its record is kept for the message's `result_expires_ms`.
    fn finish(&mut self, id: &str, state: State, error: Option<TaskFailure>, now_ms: u64) {
        self.close(id, state, error, now_ms);
        self.flow_ended(id, now_ms);
    }

    /// [`Store::finish`] without the links: what dropping a parked task does to it.
    fn close(&mut self, id: &str, state: State, error: Option<TaskFailure>, now_ms: u64) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        task.state = state;
        task.error = error;
        task.finished_ms = Some(now_ms);
        // A parked task that ends (revoked by hand, dropped) is never started.
        if let Some(flow) = &mut task.flow {
            flow.parked = None;
        }
        let expires_ms = now_ms.saturating_add(task.message.result_expires_ms);
        let finished = Arc::clone(&task.finished);
        self.move_to(id, Slot::Finished { expires_ms });
        self.terminating.remove(id);
        finished.notify_waiters();
        self.event(id, state, now_ms);
    }

    /// Dead-letters a task: FAILURE with `error`, kept until retried or purged.
    fn bury(&mut self, id: &str, error: TaskFailure, now_ms: u64) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        task.state = State::Failure;
        task.error = Some(error);
        task.finished_ms = Some(now_ms);
        let finished = Arc::clone(&task.finished);
        self.next_dead += 1;
        let order = self.next_dead;
        self.move_to(id, Slot::Dead { order });
        self.terminating.remove(id);
        finished.notify_waiters();
        self.event(id, State::Failure, now_ms);
        self.flow_ended(id, now_ms);
    }

    /// Puts a task back in its ready queue at its original place, waiting (PENDING).
    fn requeue(&mut self, id: &str, now_ms: u64) {
        if let Some(task) = self.tasks.get_mut(id) {
            task.state = State::Pending;
            self.move_to(id, Slot::Ready);
            self.event(id, State::Pending, now_ms);
        }
    }

    /// Logs `id`'s change to `state` while the log is on, as `event()` in `prelude.lua` does:
    /// with the task's name, its worker (once received), its error or progress, and the ended
    /// attempt's figures when this change ended one (a finish or a retry).
    fn event(&mut self, id: &str, state: State, at_ms: u64) {
        // The common case, the log off, costs this check only.
        if !self.events.is_on() {
            return;
        }
        let mut event = Event::task(id, state, at_ms);
        if let Some(task) = self.tasks.get(id) {
            event.task = Some(format!("{}.{}", task.message.component, task.message.task));
            if state != State::Pending {
                event.worker.clone_from(&task.worker);
            }
            if matches!(state, State::Failure | State::Retry | State::Revoked) {
                event.error.clone_from(&task.error);
            }
            if state == State::Progress {
                event.progress.clone_from(&task.progress);
            }
            // The attempt this change ended, if it ended one: a retry has moved on to the
            // next attempt; a finish is still on its own; a dead-letter has no attempt.
            let ended = match state {
                State::Retry => task.attempt.checked_sub(1),
                State::Success | State::Failure | State::Revoked => Some(task.attempt),
                _ => None,
            };
            if let Some(attempt) = task.attempts.last().filter(|a| Some(a.attempt) == ended) {
                let error = event.error.take();
                event = event.with_attempt(attempt);
                event.error = event.error.or(error);
            }
        }
        self.events.push(event);
    }

    /// Queues a new task, or refuses a used id.
    fn enqueue(&mut self, new: NewTask, now_ms: u64) -> Result<Enqueued, Error> {
        let NewTask {
            message,
            idempotency_key,
        } = new;
        if let Some(key) = &idempotency_key
            && let Some((id, _)) = self.idempotency.get(key)
        {
            return Ok(Enqueued {
                id: id.clone(),
                created: false,
            });
        }
        let id = message.id.clone();
        if self.live(&id).is_some() {
            return Err(Error::DuplicateId(id));
        }
        if let Some(key) = idempotency_key {
            let expires_ms = now_ms.saturating_add(IDEMPOTENCY_TTL_MS);
            self.idempotency_expiry.insert((expires_ms, key.clone()));
            self.idempotency.insert(key, (id.clone(), expires_ms));
        }
        self.insert(message, None, now_ms);
        Ok(Enqueued { id, created: true })
    }

    /// Stores a new task, PENDING: parked (a workflow task waiting for its owner), delayed
    /// until its eta, or ready. The caller checked that its id is free.
    fn insert(&mut self, message: TaskMessage, flow: Option<Box<Flow>>, now_ms: u64) {
        let id = message.id.clone();
        // An expired record not yet swept frees its id.
        if let Some(stale) = self.tasks.remove(&id) {
            self.index.remove(&stale);
            self.terminating.remove(&id);
        }
        self.next_seq += 1;
        let place = Place {
            rank: MAX_PRIORITY - message.priority.min(MAX_PRIORITY),
            seq: self.next_seq,
        };
        let parked = flow.as_ref().is_some_and(|flow| flow.parked.is_some());
        let slot = match message.eta_ms {
            _ if parked => Slot::Parked,
            Some(eta_ms) if eta_ms > now_ms => Slot::Delayed { eta_ms },
            _ => Slot::Ready,
        };
        let task = Task {
            message,
            state: State::Pending,
            place,
            slot,
            deliveries: 0,
            attempt: 1,
            worker: None,
            progress: None,
            error: None,
            attempts: Vec::new(),
            finished_ms: None,
            finished: Arc::default(),
            flow,
            rate_slot: None,
        };
        self.index.insert(&id, &task);
        self.tasks.insert(id.clone(), task);
        self.event(&id, State::Pending, now_ms);
    }

    /// Stores a workflow whole ([`Broker::submit`]), or nothing if an id is in use.
    fn submit(&mut self, plan: Plan, now_ms: u64) -> Result<(), Error> {
        if self.tree(&plan.id).is_some() {
            return Err(Error::DuplicateId(plan.id));
        }
        let mut ids = HashSet::new();
        for planned in &plan.tasks {
            let id = &planned.message.id;
            if self.live(id).is_some() || !ids.insert(id) {
                return Err(Error::DuplicateId(id.clone()));
            }
        }
        let expires_ms = now_ms.saturating_add(plan.ttl_ms.max(1));
        self.workflow_expiry.insert((expires_ms, plan.id.clone()));
        self.workflows.insert(plan.id, (plan.tree, expires_ms));
        for join in plan.joins {
            let join_of = Join {
                size: join.size,
                collect: join.collect,
                flatten: join.flatten,
                links: join.links,
                results: BTreeMap::new(),
            };
            self.joins.insert(join.id, join_of);
        }
        for planned in plan.tasks {
            let flow = Flow {
                address: planned.address,
                links: planned.links,
                parked: planned.parked,
                within: planned.within,
            };
            self.insert(planned.message, Some(Box::new(flow)), now_ms);
        }
        Ok(())
    }

    /// A workflow's tree, unless it has expired.
    fn tree(&self, id: &str) -> Option<&Tree> {
        self.workflows
            .get(id)
            .filter(|(_, expires_ms)| *expires_ms > self.clock_ms)
            .map(|(tree, _)| tree)
    }

    /// A task just became final: if it belongs to a workflow, its links run (prelude
    /// `flow_ended`). A success hands on its last attempt's output.
    fn flow_ended(&mut self, id: &str, now_ms: u64) {
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let Some(flow) = &task.flow else {
            return;
        };
        let ended = if task.state == State::Success {
            let output = task
                .attempts
                .last()
                .and_then(|attempt| attempt.output.clone());
            Ended::Success(output.unwrap_or_else(|| "null".to_string()))
        } else {
            let (kind, message) = match &task.error {
                Some(error) => (error.kind.clone(), error.message.clone()),
                None => ("unknown".to_string(), String::new()),
            };
            let failure = FlowFailure {
                id: id.to_string(),
                task: flow.address.clone(),
                kind,
                message,
                member: None,
            };
            Ended::Failure(failure, task.state, flow.within.clone())
        };
        let links = flow.links.clone();
        self.flow_links(links, ended, now_ms);
    }

    /// Carries out the links of a task or join that ended (prelude `flow_links`). A worklist,
    /// not recursion: a failure cascades down chains of any length, and each step's effects
    /// happen in the scripts' order.
    fn flow_links(&mut self, links: Links, ended: Ended, now_ms: u64) {
        let mut work = VecDeque::from([(links, ended)]);
        while let Some((links, ended)) = work.pop_front() {
            match &ended {
                Ended::Success(output) => {
                    for id in &links.next {
                        self.flow_start(id, output, now_ms);
                    }
                    for id in &links.errback {
                        if let Some(dropped) =
                            self.flow_drop(id, State::Revoked, &skipped(), now_ms)
                        {
                            work.push_back((dropped, Ended::Skipped));
                        }
                    }
                }
                Ended::Skipped => {
                    for id in links.next.iter().chain(&links.errback) {
                        if let Some(dropped) =
                            self.flow_drop(id, State::Revoked, &skipped(), now_ms)
                        {
                            work.push_back((dropped, Ended::Skipped));
                        }
                    }
                }
                Ended::Failure(cause, state, _) => {
                    let kind = if *state == State::Revoked {
                        KIND_UPSTREAM_REVOKED
                    } else {
                        KIND_UPSTREAM_FAILED
                    };
                    let error = failure(kind, cause.describe(*state));
                    for id in &links.next {
                        if let Some(dropped) = self.flow_drop(id, *state, &error, now_ms) {
                            work.push_back((dropped, ended.clone()));
                        }
                    }
                    let input = cause.json();
                    for id in &links.errback {
                        self.flow_start(id, &input, now_ms);
                    }
                }
            }
            if let Some(slot) = &links.join {
                work.extend(self.flow_deliver(slot, &ended));
            }
        }
    }

    /// Queues a parked task with `input` (JSON text) joined to its arguments (prelude
    /// `flow_start`); nothing if it is no longer parked (started, dropped, revoked).
    fn flow_start(&mut self, id: &str, input: &str, now_ms: u64) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        if task.state != State::Pending || task.slot != Slot::Parked {
            return;
        }
        let Some(parked) = task.flow.as_mut().and_then(|flow| flow.parked.take()) else {
            return;
        };
        task.message.args = with_input(&task.message.args, &parked.input, input);
        // A countdown counts from the start; a ready task wakes the queue's workers.
        let slot = match parked.delay_ms {
            Some(delay_ms) => Slot::Delayed {
                eta_ms: now_ms.saturating_add(delay_ms),
            },
            None => Slot::Ready,
        };
        self.move_to(id, slot);
    }

    /// Ends a parked task that will never run (prelude `flow_drop`) and returns its links, to
    /// run in turn; `None` if it was not parked (already started, or revoked by hand).
    fn flow_drop(
        &mut self,
        id: &str,
        state: State,
        error: &TaskFailure,
        now_ms: u64,
    ) -> Option<Links> {
        let task = self.tasks.get(id)?;
        if task.state != State::Pending || task.slot != Slot::Parked {
            return None;
        }
        let links = task.flow.as_ref()?.links.clone();
        self.close(id, state, Some(error.clone()), now_ms);
        Some(links)
    }

    /// Hands a member's end to its join (the join part of prelude `flow_links`). Returns the
    /// join's own end when this completes it (the gathered list) or fails it (the member's
    /// failure, naming the member); the join is gone from then on, so later deliveries are
    /// ignored.
    fn flow_deliver(&mut self, slot: &JoinSlot, ended: &Ended) -> Option<(Links, Ended)> {
        let join = self.joins.get_mut(&slot.join)?;
        let entry = match ended {
            Ended::Success(output) => output.clone(),
            Ended::Skipped => {
                let join = self.joins.remove(&slot.join)?;
                return Some((join.links, Ended::Skipped));
            }
            // Collected only from a member: a failure from outside the group fails it.
            Ended::Failure(cause, _, within) if join.collect && within.contains(&slot.join) => {
                format!("{{\"error\":{}}}", cause.json())
            }
            Ended::Failure(cause, state, within) => {
                let mut cause = cause.clone();
                cause.member.get_or_insert(slot.index);
                let join = self.joins.remove(&slot.join)?;
                return Some((join.links, Ended::Failure(cause, *state, within.clone())));
            }
        };
        if join.results.contains_key(&slot.index) {
            return None;
        }
        join.results.insert(slot.index, entry);
        if join.results.len() != join.size {
            return None;
        }
        let join = self.joins.remove(&slot.join)?;
        let gathered = join.gather();
        Some((join.links, Ended::Success(gathered)))
    }

    fn settle(&mut self, settle: Settle, now_ms: u64) -> Settled {
        let Settle { lease, settlement } = settle;
        if !self.held(&lease) {
            return Settled::Stale;
        }
        let id = lease.id.as_str();
        // Committed from here on: metered in the same step, as the Redis script does.
        let metered = Metered::of(&settlement);
        let usage = &mut self.usage;
        usage.tasks = usage.tasks.saturating_add(metered.tasks);
        usage.attempts = usage.attempts.saturating_add(metered.attempts);
        usage.fuel = usage.fuel.saturating_add(metered.fuel);
        usage.cpu_us = usage.cpu_us.saturating_add(metered.cpu_us);
        usage.memory_kib_ms = usage.memory_kib_ms.saturating_add(metered.memory_kib_ms);
        match settlement {
            Settlement::Finish(attempt) => {
                let (state, error) = (attempt.state, attempt.error.clone());
                if let Some(task) = self.tasks.get_mut(id) {
                    task.attempts.push(attempt);
                }
                self.finish(id, state, error, now_ms);
            }
            Settlement::Retry { attempt, eta_ms } => {
                if let Some(task) = self.tasks.get_mut(id) {
                    task.state = State::Retry;
                    task.error = attempt.error.clone();
                    task.attempts.push(attempt);
                    task.attempt = task.attempt.saturating_add(1);
                    task.deliveries = 0;
                    // Progress belonged to the attempt that just ended.
                    task.progress = None;
                }
                // Same rule as enqueue: only a future eta waits in the delayed set.
                let slot = if eta_ms > now_ms {
                    Slot::Delayed { eta_ms }
                } else {
                    Slot::Ready
                };
                self.move_to(id, slot);
                self.event(id, State::Retry, now_ms);
            }
            Settlement::Release => {
                if let Some(task) = self.tasks.get_mut(id) {
                    task.deliveries = task.deliveries.saturating_sub(1);
                }
                self.requeue(id, now_ms);
            }
            Settlement::DeadLetter(failure) => self.bury(id, failure, now_ms),
        }
        Settled::Committed
    }

    /// Sends `id` to every terminations subscriber, dropping closed ones.
    fn broadcast_termination(&mut self, id: &str) {
        self.subscribers
            .retain(|subscriber| match subscriber.try_send(id.to_string()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        task = id,
                        "a worker's termination channel is full; it will see the request only at its next delivery"
                    );
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}

fn failure(kind: &str, message: String) -> TaskFailure {
    TaskFailure {
        kind: kind.to_string(),
        message,
    }
}

impl Broker for MemoryBroker {
    async fn enqueue(&self, tasks: Vec<NewTask>, now_ms: u64) -> Result<Vec<Enqueued>, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        tasks
            .into_iter()
            .map(|task| store.enqueue(task, now_ms))
            .collect()
    }

    async fn reserve(
        &self,
        worker: &str,
        queues: &[String],
        max: usize,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Delivery>, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        for queue in queues {
            store.promote(queue, now_ms);
        }
        // The namespace's concurrency cap counts every lease, of every worker; expired leases
        // not yet reaped count too, as their task may still be running.
        let max = match store.concurrency {
            Some(cap) => max.min((cap as usize).saturating_sub(store.index.leases.len())),
            None => max,
        };
        let mut deliveries = Vec::new();
        // With rate limits, messages that wait for a slot do not count toward `max`: bound
        // the work, as the script does.
        let examine_limit = if store.task_rates.is_empty() {
            max
        } else {
            max + task_rate::EXAMINE_EXTRA
        };
        let mut examined = 0;
        for queue in queues {
            while deliveries.len() < max && examined < examine_limit {
                let Some((_, id)) = store
                    .index
                    .ready
                    .get(queue)
                    .and_then(|ready| ready.first_key_value())
                else {
                    break;
                };
                let id = id.clone();
                examined += 1;
                let Some(task) = store.tasks.get(&id) else {
                    // Cannot happen (the indexes follow the tasks); dropping the entry keeps
                    // this loop finite if it ever did.
                    if let Some(ready) = store.index.ready.get_mut(queue) {
                        ready.pop_first();
                    }
                    continue;
                };
                if let Some(expires_ms) = task.message.expires_ms
                    && expires_ms < now_ms
                {
                    let error = failure(
                        KIND_EXPIRED,
                        format!("expired at {expires_ms} ms before it started"),
                    );
                    store.finish(&id, State::Revoked, Some(error), now_ms);
                    continue;
                }
                if !store.rate_allows(&id, now_ms) {
                    continue;
                }
                deliveries.extend(store.deliver(&id, worker, lease_ms, now_ms));
            }
        }
        Ok(deliveries)
    }

    async fn renew(
        &self,
        leases: &[Lease],
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        let until_ms = now_ms.saturating_add(lease_ms);
        Ok(leases
            .iter()
            .map(|lease| {
                let held = store.held(lease);
                if held {
                    store.move_to(
                        &lease.id,
                        Slot::Leased {
                            token: lease.token,
                            until_ms,
                        },
                    );
                }
                held
            })
            .collect())
    }

    async fn mark(&self, marks: &[Mark]) -> Result<(), Error> {
        let mut store = self.lock();
        for mark in marks {
            // Only a running state may be written under a lease; anything else would let a
            // progress report end or rewind a task.
            if !matches!(mark.state, State::Started | State::Progress) || !store.held(&mark.lease) {
                continue;
            }
            if let Some(task) = store.tasks.get_mut(&mark.lease.id) {
                task.state = mark.state;
                if let Some(progress) = &mark.progress {
                    task.progress = Some(progress.clone());
                }
            }
            store.event(&mark.lease.id, mark.state, mark.at_ms);
        }
        Ok(())
    }

    async fn settle(&self, settles: Vec<Settle>, now_ms: u64) -> Result<Vec<Settled>, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        Ok(settles
            .into_iter()
            .map(|settle| store.settle(settle, now_ms))
            .collect())
    }

    async fn reap(&self, now_ms: u64, limit: usize) -> Result<usize, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        let expired: Vec<String> = store
            .index
            .leases
            .range(..=(now_ms, u64::MAX))
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &expired {
            let Some(task) = store.tasks.get(id) else {
                continue;
            };
            let (deliveries, max) = (task.deliveries, task.message.max_deliveries);
            if deliveries >= max {
                let error = failure(
                    KIND_DEAD_LETTERED,
                    format!(
                        "delivered {deliveries} times without finishing (max_deliveries {max})"
                    ),
                );
                store.bury(id, error, now_ms);
            } else {
                store.requeue(id, now_ms);
            }
        }
        Ok(expired.len())
    }

    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> Result<(), Error> {
        let signals: Vec<Arc<Notify>> = {
            let mut store = self.lock();
            queues
                .iter()
                .map(|queue| store.index.work_signal(queue))
                .collect()
        };
        if signals.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(());
        }
        // Registered before the check below: a message made ready after the check wakes
        // these futures even though they are not polled yet.
        let notified = select_all(signals.iter().map(|signal| Box::pin(signal.notified())));
        let (ready, next_due_ms) = {
            let store = self.lock();
            let next_due_ms = queues
                .iter()
                .filter_map(|queue| store.index.delayed.get(queue)?.first_key_value())
                .map(|((eta_ms, _), _)| *eta_ms)
                .min();
            let ready = queues.iter().any(|queue| store.index.depth(queue) > 0);
            (ready, next_due_ms)
        };
        if !ready {
            // A delayed message (a booked rate-limit slot, an eta) is promoted by the next
            // reserve once due: return then, as the Redis broker does.
            let wait = match next_due_ms {
                Some(eta_ms) => timeout.min(
                    Duration::from_millis(eta_ms.saturating_sub(crate::message::now_ms()))
                        .max(MIN_DUE_WAIT),
                ),
                None => timeout,
            };
            // Timing out is an ordinary return.
            let _ = tokio::time::timeout(wait, notified).await;
        }
        Ok(())
    }

    async fn record(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        Ok(self.lock().record(id))
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<TaskRecord>, Error> {
        let finished = {
            let store = self.lock();
            match store.live(id) {
                None => return Ok(None),
                Some(task) if task.state.is_final() => return Ok(Some(task.record(id))),
                Some(task) => Arc::clone(&task.finished),
            }
        };
        // Registered before the second look: finishing in between still wakes it.
        let notified = finished.notified();
        let done = {
            let store = self.lock();
            match store.live(id) {
                None => return Ok(None),
                Some(task) => task.state.is_final(),
            }
        };
        if !done {
            // Timing out is an ordinary return: the record is returned as it is.
            let _ = tokio::time::timeout(timeout, notified).await;
        }
        Ok(self.lock().record(id))
    }

    async fn revoke(&self, id: &str, terminate: bool, now_ms: u64) -> Result<Revoked, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        let Some(task) = store.live(id) else {
            return Ok(Revoked::Unknown);
        };
        if task.state.is_final() {
            return Ok(Revoked::AlreadyFinal(task.state));
        }
        if matches!(task.slot, Slot::Leased { .. }) {
            if terminate {
                store.terminating.insert(id.to_string());
                store.broadcast_termination(id);
            }
            return Ok(Revoked::Running {
                terminating: store.terminating.contains(id),
            });
        }
        let error = failure(KIND_REVOKED, "revoked before it started".to_string());
        store.finish(id, State::Revoked, Some(error), now_ms);
        Ok(Revoked::Revoked)
    }

    async fn terminations(&self) -> Result<mpsc::Receiver<String>, Error> {
        let (sender, receiver) = mpsc::channel(TERMINATION_BUFFER);
        self.lock().subscribers.push(sender);
        Ok(receiver)
    }

    async fn terminating(&self, id: &str) -> Result<bool, Error> {
        Ok(self.lock().terminating.contains(id))
    }

    async fn purge(&self, queue: &str, now_ms: u64) -> Result<usize, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        let mut waiting: Vec<String> = Vec::new();
        if let Some(ready) = store.index.ready.get(queue) {
            waiting.extend(ready.values().cloned());
        }
        if let Some(delayed) = store.index.delayed.get(queue) {
            waiting.extend(delayed.values().cloned());
        }
        for id in &waiting {
            let error = failure(KIND_PURGED, format!("purged from queue `{queue}`"));
            store.finish(id, State::Revoked, Some(error), now_ms);
        }
        Ok(waiting.len())
    }

    async fn dead(&self, limit: usize) -> Result<Vec<TaskRecord>, Error> {
        let store = self.lock();
        Ok(store
            .index
            .dead
            .values()
            .rev()
            .take(limit)
            .filter_map(|id| store.record(id))
            .collect())
    }

    async fn retry_dead(&self, id: Option<&str>, now_ms: u64) -> Result<usize, Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        let ids: Vec<String> = match id {
            Some(id) => store
                .tasks
                .get(id)
                .filter(|task| matches!(task.slot, Slot::Dead { .. }))
                .map(|_| vec![id.to_string()])
                .unwrap_or_default(),
            None => store.index.dead.values().cloned().collect(),
        };
        for id in &ids {
            if let Some(task) = store.tasks.get_mut(id) {
                task.attempt = task.attempt.saturating_add(1);
                task.deliveries = 0;
                task.error = None;
                task.progress = None;
                task.finished_ms = None;
            }
            store.requeue(id, now_ms);
        }
        Ok(ids.len())
    }

    async fn purge_dead(&self) -> Result<usize, Error> {
        let mut store = self.lock();
        let dead = std::mem::take(&mut store.index.dead);
        for id in dead.values() {
            store.tasks.remove(id);
            store.terminating.remove(id);
        }
        Ok(dead.len())
    }

    async fn put_component(&self, upload: Upload) -> Result<ComponentRecord, Error> {
        let Upload {
            name,
            version,
            compressed,
        } = upload;
        let mut store = self.lock();
        // Content-addressed: the same digest is the same bytes, so the first copy stays.
        store
            .blobs
            .entry(version.digest.clone())
            .or_insert(compressed);
        let record = store
            .components
            .entry(name.clone())
            .or_insert_with(|| ComponentRecord {
                name,
                versions: Vec::new(),
            });
        if record.current().map(|current| &current.digest) != Some(&version.digest) {
            record
                .versions
                .retain(|known| known.digest != version.digest);
            record.versions.insert(0, version);
        }
        Ok(record.clone())
    }

    async fn components(&self) -> Result<Vec<ComponentRecord>, Error> {
        Ok(self.lock().components.values().cloned().collect())
    }

    async fn component(&self, name: &str) -> Result<Option<ComponentRecord>, Error> {
        Ok(self.lock().components.get(name).cloned())
    }

    async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().blobs.get(digest).cloned())
    }

    async fn depth(&self, queue: &str) -> Result<usize, Error> {
        Ok(self.lock().index.depth(queue))
    }

    async fn submit(&self, plan: Plan, now_ms: u64) -> Result<(), Error> {
        let mut store = self.lock();
        store.advance(now_ms);
        store.submit(plan, now_ms)
    }

    async fn set_rate_limit(&self, task: &str, rate: Option<Rate>) -> Result<(), Error> {
        let mut store = self.lock();
        match rate {
            Some(rate) => store.task_rates.insert(task.to_string(), rate),
            None => store.task_rates.remove(task),
        };
        // A changed limit starts from a fresh bucket, and the deferred backlog is looked at
        // again under it.
        store.undefer(task);
        Ok(())
    }

    async fn set_time_limit(&self, task: &str, limit_ms: Option<u64>) -> Result<(), Error> {
        let mut store = self.lock();
        match limit_ms {
            Some(ms) => store.task_time_limits.insert(task.to_string(), ms),
            None => store.task_time_limits.remove(task),
        };
        Ok(())
    }

    async fn task_policies(&self) -> Result<BTreeMap<String, TaskPolicy>, Error> {
        let store = self.lock();
        let mut policies: BTreeMap<String, TaskPolicy> = BTreeMap::new();
        for (task, rate) in &store.task_rates {
            policies.entry(task.clone()).or_default().rate_limit = Some(*rate);
        }
        for (task, ms) in &store.task_time_limits {
            policies.entry(task.clone()).or_default().time_limit_ms = Some(*ms);
        }
        Ok(policies)
    }

    async fn workflow(&self, id: &str) -> Result<Option<Tree>, Error> {
        Ok(self.lock().tree(id).cloned())
    }
}

impl Tenancy for MemoryBroker {
    fn namespaced(&self, namespace: &str) -> Result<MemoryBroker, Error> {
        // The same rule as Redis keys, so a namespace works on both brokers or on neither.
        if !super::redis::valid_namespace(namespace) {
            return Err(invalid_namespace(namespace));
        }
        Ok(MemoryBroker {
            universe: Arc::clone(&self.universe),
            store: self.universe.namespace(namespace),
        })
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        let namespace = namespace_of(&tenant.name);
        let store = self.namespaced(&namespace)?.store;
        self.universe
            .registry()
            .tenants
            .insert(tenant.name.clone(), tenant.clone());
        store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .concurrency = tenant.quotas.concurrency;
        Ok(())
    }

    async fn tenant(&self, name: &str) -> Result<Option<Tenant>, Error> {
        Ok(self.universe.registry().tenants.get(name).cloned())
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, Error> {
        Ok(self.universe.registry().tenants.values().cloned().collect())
    }

    async fn put_token(&self, hash: &str, record: &TokenRecord) -> Result<(), Error> {
        self.universe
            .registry()
            .tokens
            .insert(hash.to_string(), record.clone());
        Ok(())
    }

    async fn token(&self, hash: &str) -> Result<Option<TokenRecord>, Error> {
        Ok(self.universe.registry().tokens.get(hash).cloned())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        let mut tokens: Vec<TokenRecord> =
            self.universe.registry().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(tokens)
    }

    async fn revoke_token(&self, id: &str) -> Result<bool, Error> {
        let mut registry = self.universe.registry();
        let before = registry.tokens.len();
        registry.tokens.retain(|_, record| record.id != id);
        Ok(registry.tokens.len() < before)
    }

    async fn take_rate(
        &self,
        bucket: &str,
        rate: Rate,
        n: u32,
        now_ms: u64,
    ) -> Result<RateDecision, Error> {
        let mut store = self.lock();
        let now_us = now_ms.saturating_mul(1000);
        // What Redis's PEXPIRE does to idle buckets.
        store.rates.retain(|_, tat_us| *tat_us > now_us);
        let stored = store.rates.get(bucket).copied();
        Ok(match gcra(stored, rate, n, now_ms) {
            GcraStep::Allowed { tat_us, .. } => {
                store.rates.insert(bucket.to_string(), tat_us);
                RateDecision::Allowed
            }
            GcraStep::Limited { retry_after_ms } => RateDecision::Limited { retry_after_ms },
        })
    }

    async fn usage(&self) -> Result<Usage, Error> {
        Ok(self.lock().usage)
    }

    async fn enable_events(&self, cap: u64, ttl: Duration) -> Result<(), Error> {
        let mut store = self.lock();
        store.events.on_until = Some(Instant::now() + ttl);
        store.events.cap = cap.max(1);
        store.events.trim();
        Ok(())
    }

    async fn record_event(&self, event: &Event) -> Result<(), Error> {
        let mut store = self.lock();
        if store.events.is_on() {
            store.events.push(event.clone());
        }
        Ok(())
    }

    async fn events(&self, after: Option<String>) -> Result<mpsc::Receiver<Event>, Error> {
        let (notify, mut next) = {
            let mut store = self.lock();
            store.events.keep_on();
            let next = match after {
                // Cursors are `<seq>-0`; the one before the first event is 0.
                Some(cursor) => cursor
                    .split('-')
                    .next()
                    .and_then(|seq| seq.parse::<u64>().ok())
                    .unwrap_or(0)
                    .saturating_add(1),
                None => store.events.next,
            };
            (Arc::clone(&store.events.written), next)
        };
        let (sender, receiver) = mpsc::channel(EVENTS_BUFFER);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            while !sender.is_closed() {
                // Registered before the log is read: an event written after the read wakes it.
                let written = notify.notified();
                tokio::pin!(written);
                written.as_mut().enable();
                let batch = {
                    let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
                    store.events.keep_on();
                    store.events.after(next)
                };
                if batch.is_empty() {
                    let _ = tokio::time::timeout(EVENTS_REFRESH, written).await;
                    continue;
                }
                for (seq, event) in batch {
                    next = seq + 1;
                    if sender.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }
}

/// A namespace's capped event log: on while `on_until` is ahead.
#[derive(Debug)]
struct EventLog {
    on_until: Option<Instant>,
    cap: u64,
    /// (sequence number, event), oldest first; numbers start at 1.
    entries: VecDeque<(u64, Event)>,
    /// The number the next event gets.
    next: u64,
    /// Woken at every event, for the readers.
    written: Arc<Notify>,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog {
            on_until: None,
            cap: EVENT_LOG_CAP,
            entries: VecDeque::new(),
            next: 1,
            written: Arc::new(Notify::new()),
        }
    }
}

impl EventLog {
    fn is_on(&self) -> bool {
        self.on_until.is_some_and(|until| until > Instant::now())
    }

    /// What a reader does while it lives: on at the current cap, for [`EVENTS_ON_TTL`].
    fn keep_on(&mut self) {
        self.on_until = Some(Instant::now() + EVENTS_ON_TTL);
    }

    fn push(&mut self, mut event: Event) {
        event.cursor = format!("{}-0", self.next);
        self.entries.push_back((self.next, event));
        self.next += 1;
        self.trim();
        self.written.notify_waiters();
    }

    fn trim(&mut self) {
        while self.entries.len() as u64 > self.cap {
            self.entries.pop_front();
        }
    }

    /// Events numbered `first` or later (or the oldest kept, if those were trimmed), at most
    /// a batch.
    fn after(&self, first: u64) -> Vec<(u64, Event)> {
        let start = self.entries.partition_point(|(seq, _)| *seq < first);
        self.entries
            .range(start..)
            .take(EVENTS_BUFFER)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DEFAULT_MAX_DELIVERIES, DEFAULT_RESULT_EXPIRES_MS, LimitOverrides};
    use crate::registry::Version;

    const T0: u64 = 1_000_000;
    const LEASE_MS: u64 = 30_000;
    /// Long enough never to be reached by a correct wake-up; a lost one fails the test.
    const NO_LOST_WAKEUP: Duration = Duration::from_secs(10);

    fn message(id: &str) -> TaskMessage {
        TaskMessage {
            id: id.to_string(),
            component: "math".to_string(),
            digest: None,
            task: "add".to_string(),
            args: "[1, 2]".to_string(),
            queue: "default".to_string(),
            priority: 0,
            eta_ms: None,
            expires_ms: None,
            max_retries: None,
            retry_backoff: None,
            limits: LimitOverrides::default(),
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            result_expires_ms: DEFAULT_RESULT_EXPIRES_MS,
            created_ms: T0,
            batch: false,
        }
    }

    fn new(message: TaskMessage) -> NewTask {
        NewTask {
            message,
            idempotency_key: None,
        }
    }

    fn queues() -> Vec<String> {
        vec!["default".to_string()]
    }

    async fn put(broker: &MemoryBroker, messages: Vec<TaskMessage>) {
        broker
            .enqueue(messages.into_iter().map(new).collect(), T0)
            .await
            .unwrap();
    }

    async fn take(broker: &MemoryBroker, max: usize, now_ms: u64) -> Vec<Delivery> {
        broker
            .reserve("w1", &queues(), max, LEASE_MS, now_ms)
            .await
            .unwrap()
    }

    fn ids(deliveries: &[Delivery]) -> Vec<&str> {
        deliveries.iter().map(|d| d.id.as_str()).collect()
    }

    fn lease(delivery: &Delivery) -> Lease {
        Lease {
            id: delivery.id.clone(),
            token: delivery.token,
        }
    }

    fn attempt(number: u32, state: State) -> Attempt {
        Attempt {
            attempt: number,
            worker: "w1".to_string(),
            digest: None,
            received_ms: T0,
            started_ms: None,
            finished_ms: T0,
            state,
            output: Some("3".to_string()),
            error: None,
            duration_ms: None,
            fuel: None,
            cpu_ms: None,
            peak_memory: None,
            log: String::new(),
        }
    }

    async fn settle(broker: &MemoryBroker, delivery: &Delivery, settlement: Settlement) -> Settled {
        let settle = Settle {
            lease: lease(delivery),
            settlement,
        };
        broker.settle(vec![settle], T0).await.unwrap()[0]
    }

    async fn state(broker: &MemoryBroker, id: &str) -> Option<State> {
        broker.record(id).await.unwrap().map(|record| record.state)
    }

    #[tokio::test]
    async fn priority_first_then_fifo_and_release_keeps_the_place() {
        let broker = MemoryBroker::new();
        let with = |id: &str, priority| TaskMessage {
            priority,
            ..message(id)
        };
        put(
            &broker,
            vec![
                with("a", 0),
                with("b", 9),
                with("c", 0),
                with("d", 5),
                with("e", 200),
            ],
        )
        .await;
        assert_eq!(broker.depth("default").await.unwrap(), 5);
        let first = take(&broker, 2, T0).await;
        assert_eq!(
            ids(&first),
            ["b", "e"],
            "200 counts as 9, after the older 9"
        );
        assert_eq!(
            settle(&broker, &first[0], Settlement::Release).await,
            Settled::Committed
        );
        let rest = take(&broker, 10, T0).await;
        assert_eq!(ids(&rest), ["b", "d", "a", "c"]);
        assert_eq!(
            rest[0].deliveries, 1,
            "a release does not count as a delivery"
        );
        assert_eq!(broker.depth("default").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn eta_waits_in_the_delayed_set() {
        let broker = MemoryBroker::new();
        put(
            &broker,
            vec![TaskMessage {
                eta_ms: Some(T0 + 5_000),
                ..message("later")
            }],
        )
        .await;
        assert_eq!(broker.depth("default").await.unwrap(), 0);
        assert!(take(&broker, 1, T0 + 4_999).await.is_empty());
        assert_eq!(ids(&take(&broker, 1, T0 + 5_000).await), ["later"]);
    }

    #[tokio::test]
    async fn expired_messages_are_revoked_not_delivered() {
        let broker = MemoryBroker::new();
        put(
            &broker,
            vec![
                TaskMessage {
                    expires_ms: Some(T0 + 10),
                    ..message("stale")
                },
                message("fresh"),
            ],
        )
        .await;
        assert_eq!(ids(&take(&broker, 5, T0 + 11).await), ["fresh"]);
        let record = broker.record("stale").await.unwrap().unwrap();
        assert_eq!(record.state, State::Revoked);
        assert_eq!(record.error.unwrap().kind, KIND_EXPIRED);
    }

    #[tokio::test]
    async fn idempotency_keys_and_duplicate_ids() {
        let broker = MemoryBroker::new();
        let keyed = |id: &str| NewTask {
            message: message(id),
            idempotency_key: Some("k".to_string()),
        };
        let first = broker
            .enqueue(vec![keyed("a"), keyed("b")], T0)
            .await
            .unwrap();
        assert_eq!(
            first,
            [
                Enqueued {
                    id: "a".to_string(),
                    created: true
                },
                Enqueued {
                    id: "a".to_string(),
                    created: false
                },
            ]
        );
        assert_eq!(broker.record("b").await.unwrap(), None);

        let refused = broker
            .enqueue(
                vec![new(message("c")), new(message("a")), new(message("d"))],
                T0,
            )
            .await;
        assert!(matches!(refused, Err(Error::DuplicateId(id)) if id == "a"));
        assert!(
            broker.record("c").await.unwrap().is_some(),
            "before the duplicate: stored"
        );
        assert!(
            broker.record("d").await.unwrap().is_none(),
            "after it: not stored"
        );

        let later = T0 + IDEMPOTENCY_TTL_MS;
        let again = broker.enqueue(vec![keyed("e")], later).await.unwrap();
        assert_eq!(
            again,
            [Enqueued {
                id: "e".to_string(),
                created: true
            }]
        );
    }

    #[tokio::test]
    async fn a_reaped_lease_is_fenced_off() {
        let broker = MemoryBroker::new();
        put(&broker, vec![message("a")]).await;
        let old = take(&broker, 1, T0).await.remove(0);
        assert_eq!(broker.reap(T0 + LEASE_MS - 1, 10).await.unwrap(), 0);
        assert_eq!(broker.reap(T0 + LEASE_MS, 10).await.unwrap(), 1);
        assert_eq!(state(&broker, "a").await, Some(State::Pending));

        let new = take(&broker, 1, T0 + LEASE_MS).await.remove(0);
        assert_ne!(new.token, old.token);
        assert_eq!((new.deliveries, new.attempt), (2, 1));
        assert_eq!(
            broker
                .renew(&[lease(&old), lease(&new)], LEASE_MS, T0)
                .await
                .unwrap(),
            [false, true]
        );
        let late = settle(
            &broker,
            &old,
            Settlement::Finish(attempt(1, State::Success)),
        )
        .await;
        assert_eq!(late, Settled::Stale);
        let current = settle(
            &broker,
            &new,
            Settlement::Finish(attempt(1, State::Success)),
        )
        .await;
        assert_eq!(current, Settled::Committed);
        let record = broker.record("a").await.unwrap().unwrap();
        assert_eq!((record.state, record.output()), (State::Success, Some("3")));
    }

    #[tokio::test]
    async fn dead_lettered_after_max_deliveries_then_retried() {
        let broker = MemoryBroker::new();
        put(
            &broker,
            vec![TaskMessage {
                max_deliveries: 2,
                ..message("poison")
            }],
        )
        .await;
        let mut now = T0;
        for _ in 0..2 {
            assert_eq!(take(&broker, 1, now).await.len(), 1);
            now += LEASE_MS;
            assert_eq!(broker.reap(now, 10).await.unwrap(), 1);
        }
        let dead = broker.dead(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].state, State::Failure);
        let error = dead[0].error.clone().unwrap();
        assert_eq!(error.kind, KIND_DEAD_LETTERED);
        assert!(error.message.contains('2'), "{}", error.message);

        assert_eq!(broker.retry_dead(None, now).await.unwrap(), 1);
        assert!(broker.dead(10).await.unwrap().is_empty());
        let record = broker.record("poison").await.unwrap().unwrap();
        assert_eq!((record.state, record.deliveries), (State::Pending, 0));
        let again = take(&broker, 1, now).await.remove(0);
        assert_eq!((again.deliveries, again.attempt), (1, 2));
    }

    #[tokio::test]
    async fn retry_runs_as_the_next_attempt_after_its_eta() {
        let broker = MemoryBroker::new();
        put(&broker, vec![message("a")]).await;
        let first = take(&broker, 1, T0).await.remove(0);
        let retry = Settlement::Retry {
            attempt: attempt(1, State::Retry),
            eta_ms: T0 + 1_000,
        };
        assert_eq!(settle(&broker, &first, retry).await, Settled::Committed);
        assert_eq!(state(&broker, "a").await, Some(State::Retry));
        assert!(take(&broker, 1, T0 + 999).await.is_empty());
        let second = take(&broker, 1, T0 + 1_000).await.remove(0);
        assert_eq!((second.attempt, second.deliveries), (2, 1));
        let record = broker.record("a").await.unwrap().unwrap();
        assert_eq!(record.attempts.len(), 1);
    }

    #[tokio::test]
    async fn final_records_expire() {
        let broker = MemoryBroker::new();
        put(
            &broker,
            vec![TaskMessage {
                result_expires_ms: 100,
                ..message("a")
            }],
        )
        .await;
        assert_eq!(
            broker.revoke("a", false, T0).await.unwrap(),
            Revoked::Revoked
        );
        assert_eq!(
            broker.revoke("a", false, T0 + 99).await.unwrap(),
            Revoked::AlreadyFinal(State::Revoked)
        );
        assert_eq!(broker.reap(T0 + 100, 10).await.unwrap(), 0);
        assert_eq!(broker.record("a").await.unwrap(), None);
        assert_eq!(
            broker.revoke("a", false, T0 + 100).await.unwrap(),
            Revoked::Unknown
        );
        put(&broker, vec![message("a")]).await;
    }

    #[tokio::test]
    async fn wait_is_woken_by_settle() {
        let broker = MemoryBroker::new();
        assert_eq!(broker.wait("nobody", NO_LOST_WAKEUP).await.unwrap(), None);
        put(&broker, vec![message("a")]).await;
        let pending = broker.wait("a", Duration::from_millis(1)).await.unwrap();
        assert_eq!(pending.map(|record| record.state), Some(State::Pending));

        let waiter = tokio::spawn({
            let broker = broker.clone();
            async move { broker.wait("a", NO_LOST_WAKEUP * 6).await }
        });
        tokio::task::yield_now().await;
        let delivery = take(&broker, 1, T0).await.remove(0);
        settle(
            &broker,
            &delivery,
            Settlement::Finish(attempt(1, State::Success)),
        )
        .await;
        let record = tokio::time::timeout(NO_LOST_WAKEUP, waiter)
            .await
            .expect("wait was not woken")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(record.state, State::Success);
    }

    #[tokio::test]
    async fn wait_for_work_is_woken_by_enqueue() {
        let broker = MemoryBroker::new();
        let waiter = tokio::spawn({
            let broker = broker.clone();
            async move { broker.wait_for_work(&queues(), NO_LOST_WAKEUP * 6).await }
        });
        tokio::task::yield_now().await;
        put(&broker, vec![message("a")]).await;
        tokio::time::timeout(NO_LOST_WAKEUP, waiter)
            .await
            .expect("wait_for_work was not woken")
            .unwrap()
            .unwrap();
        // Work already waiting: no wait at all.
        tokio::time::timeout(
            NO_LOST_WAKEUP,
            broker.wait_for_work(&queues(), NO_LOST_WAKEUP * 6),
        )
        .await
        .expect("returned at once")
        .unwrap();
    }

    #[tokio::test]
    async fn terminate_reaches_subscribers_of_a_running_task() {
        let broker = MemoryBroker::new();
        let mut terminations = broker.terminations().await.unwrap();
        drop(broker.terminations().await.unwrap());
        put(&broker, vec![message("run"), message("wait")]).await;
        let running = take(&broker, 1, T0).await.remove(0);
        assert_eq!(
            broker.revoke("run", false, T0).await.unwrap(),
            Revoked::Running { terminating: false }
        );
        assert_eq!(
            broker.revoke("run", true, T0).await.unwrap(),
            Revoked::Running { terminating: true }
        );
        assert_eq!(terminations.recv().await.as_deref(), Some("run"));
        assert!(broker.terminating("run").await.unwrap());
        assert_eq!(
            broker.revoke("wait", true, T0).await.unwrap(),
            Revoked::Revoked
        );
        assert!(!broker.terminating("wait").await.unwrap());

        settle(
            &broker,
            &running,
            Settlement::Finish(attempt(1, State::Revoked)),
        )
        .await;
        assert!(!broker.terminating("run").await.unwrap());
        assert_eq!(state(&broker, "run").await, Some(State::Revoked));
        assert_eq!(
            broker.lock().subscribers.len(),
            1,
            "the closed subscriber is dropped"
        );
    }

    #[tokio::test]
    async fn purge_revokes_ready_and_delayed() {
        let broker = MemoryBroker::new();
        put(
            &broker,
            vec![
                message("a"),
                TaskMessage {
                    eta_ms: Some(T0 + 1),
                    ..message("b")
                },
            ],
        )
        .await;
        assert_eq!(broker.purge("default", T0).await.unwrap(), 2);
        let record = broker.record("b").await.unwrap().unwrap();
        assert_eq!(
            (record.state, record.error.unwrap().kind.as_str()),
            (State::Revoked, KIND_PURGED)
        );
        assert!(take(&broker, 5, T0 + 1).await.is_empty());
    }

    #[tokio::test]
    async fn redeploys_keep_one_entry_per_digest() {
        let broker = MemoryBroker::new();
        let upload = |digest: &str, deployed_ms| Upload {
            name: "math".to_string(),
            version: Version {
                digest: digest.to_string(),
                deployed_ms,
                tasks: Vec::new(),
                size: 3,
            },
            compressed: digest.as_bytes().to_vec(),
        };
        let digests = |record: &ComponentRecord| -> Vec<(String, u64)> {
            record
                .versions
                .iter()
                .map(|v| (v.digest.clone(), v.deployed_ms))
                .collect()
        };
        broker.put_component(upload("aa", 1)).await.unwrap();
        broker.put_component(upload("bb", 2)).await.unwrap();
        let same = broker.put_component(upload("bb", 3)).await.unwrap();
        assert_eq!(
            digests(&same),
            [("bb".to_string(), 2), ("aa".to_string(), 1)]
        );
        let back = broker.put_component(upload("aa", 4)).await.unwrap();
        assert_eq!(
            digests(&back),
            [("aa".to_string(), 4), ("bb".to_string(), 2)]
        );
        assert_eq!(broker.components().await.unwrap(), [back]);
        assert_eq!(
            broker.blob("bb").await.unwrap().as_deref(),
            Some(&b"bb"[..])
        );
        assert_eq!(broker.blob("cc").await.unwrap(), None);
    }
}
