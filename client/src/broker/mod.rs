//! The broker: where messages wait, how workers lease them, where results live, and the
//! component registry's storage. One contract, two implementations: [`redis::RedisBroker`]
//! (production: Lua scripts, one hash slot per namespace) and [`memory::MemoryBroker`]
//! (`wtq up`, fast tests). The behavioural test suite runs against both.
//!
//! # Delivery model
//! - At least once. A message is leased to a worker with a fencing token; the worker settles
//!   it (result stored and message acknowledged in one atomic step) only while the token
//!   still matches, so a worker whose lease was taken over cannot commit a late result.
//! - Leases are renewed while a task runs; [`Broker::reap`] returns expired leases to their
//!   queue, or dead-letters the message once an attempt was delivered `max_deliveries` times.
//! - ETA/countdown messages wait in a delayed set, outside any lease, and move to their queue
//!   when due; no worker holds a future task.
//! - Priority 9 runs before 0; equal priorities run in enqueue order.
//!
//! All times are Unix milliseconds passed in by the caller, so tests control the clock.

pub mod control;
pub mod memory;
pub mod redis;
pub mod schedule;
mod task_rate;
mod tenancy;

pub use control::Control;
pub use schedule::Schedules;
pub use tenancy::Tenancy;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::message::{Attempt, Progress, State, TaskFailure, TaskMessage, TaskRecord};
use crate::registry::{ComponentRecord, TaskPolicy, Upload};
use crate::tenancy::Rate;
use crate::workflow::{Plan, Tree};

/// How long an idempotency key keeps pointing at its first task.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

/// Errors of the broker itself (connection, storage). A task's failure is never one of these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Redis at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("Redis command failed: {0}")]
    Redis(String),
    #[error(
        "Redis at {url} evicts keys (maxmemory-policy {policy}); wtq would lose tasks: set `maxmemory-policy noeviction`"
    )]
    Evicting { url: String, policy: String },
    #[error("task id `{0}` is already in use; choose another --task-id")]
    DuplicateId(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid broker URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    /// The service did not answer (connection refused, timeout) or answered 503.
    #[error("cannot reach the wtq service at {url}: {message}")]
    ServiceUnreachable { url: String, message: String },
    /// 401 or 403 `forbidden`: the token is missing, unknown, revoked, or not for this route.
    #[error("the wtq service at {url} refused the request: {message}")]
    Denied { url: String, message: String },
    /// 429: the tenant's enqueue rate is used up for now.
    #[error("rate limited (retry in {}s): {message}", .retry_after.as_secs().max(1))]
    RateLimited {
        retry_after: Duration,
        message: String,
    },
    /// The service refused the request itself (400, 403 for a quota, 409, 413); `kind` is the
    /// body's stable error kind, `message` says what to do.
    #[error("{message}")]
    Rejected { kind: String, message: String },
    /// The service failed (5xx other than 503) or sent a reply this client cannot read.
    #[error("the wtq service at {url} failed: {message}")]
    Service { url: String, message: String },
}

/// A message to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub message: TaskMessage,
    /// A second enqueue with the same key (within [`IDEMPOTENCY_TTL_MS`]) returns the first
    /// task's id and stores nothing.
    pub idempotency_key: Option<String>,
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    /// False when an idempotency key matched an earlier task (whose id is `id`).
    pub created: bool,
}

/// A message leased to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    /// The fencing token of this lease; every later call about it must carry it.
    pub token: u64,
    /// The message, or why its stored body could not be decoded (the worker dead-letters it).
    pub message: Result<TaskMessage, String>,
    /// Deliveries of the current attempt, counting this one.
    pub deliveries: u32,
    /// The attempt this delivery runs (1 for the first).
    pub attempt: u32,
    /// A terminate was requested before this delivery (e.g. while its previous worker was
    /// dying): the worker must not run it, and ends it REVOKED.
    pub terminating: bool,
    pub received_ms: u64,
}

/// A lease as the worker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub token: u64,
}

/// A running task's progress, written under its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub lease: Lease,
    /// STARTED or PROGRESS.
    pub state: State,
    pub progress: Option<Progress>,
    pub at_ms: u64,
}

/// How a worker ends a lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Final: the attempt's state is SUCCESS, FAILURE or REVOKED. The record keeps it and
    /// expires `result_expires_ms` later; waiters are woken.
    Finish(Attempt),
    /// Run again as the next attempt, not before `eta_ms`; state RETRY, delivery count reset.
    Retry { attempt: Attempt, eta_ms: u64 },
    /// Give the message back untouched (warm shutdown): ready again at once, at its priority,
    /// and this delivery does not count toward `max_deliveries`.
    Release,
    /// The message cannot run (undecodable, unknown component): dead-letter it, state
    /// FAILURE with this reason.
    DeadLetter(TaskFailure),
}

/// One settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub lease: Lease,
    pub settlement: Settlement,
}

/// Whether a settlement took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Committed,
    /// The lease was no longer this worker's (expired and taken over, revoked...): nothing
    /// was written.
    Stale,
}

/// What a revoke did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// It had not started: it is REVOKED and will never run.
    Revoked,
    /// It is running: with `terminate`, its worker was asked to stop it (it ends REVOKED);
    /// without, it runs to completion.
    Running { terminating: bool },
    /// It had already finished in this state.
    AlreadyFinal(State),
    /// No such task (never existed, or its record expired).
    Unknown,
}

/// The broker contract. Every method is atomic with respect to the others.
pub trait Broker: Send + Sync + 'static {
    /// Stores and queues messages (in the delayed set when `eta_ms` is in the future), each
    /// with state PENDING. A message whose idempotency key is already known is not stored.
    /// An id already in use is refused with [`Error::DuplicateId`] (and nothing of the batch
    /// after it is stored).
    fn enqueue(
        &self,
        tasks: Vec<NewTask>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Enqueued>, Error>> + Send;

    /// Leases up to `max` messages to `worker` for `lease_ms`: first moves due delayed
    /// messages of `queues` to their queue, then takes the highest priority, oldest first,
    /// from the queues in the given order. Each becomes RECEIVED with a new fencing token and
    /// its delivery count increased. Messages past `expires_ms` become REVOKED (kind
    /// `expired`) instead and are not returned.
    fn reserve(
        &self,
        worker: &str,
        queues: &[String],
        max: usize,
        lease_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Delivery>, Error>> + Send;

    /// Extends leases still held (token matches) to `now_ms + lease_ms`; returns, per lease,
    /// whether it is still held.
    fn renew(
        &self,
        leases: &[Lease],
        lease_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<bool>, Error>> + Send;

    /// Records that held tasks started or made progress; stale leases are ignored.
    fn mark(&self, marks: &[Mark]) -> impl Future<Output = Result<(), Error>> + Send;

    /// Ends leases, each atomically with its checks; returns, per settlement, whether it
    /// took effect.
    fn settle(
        &self,
        settles: Vec<Settle>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Settled>, Error>> + Send;

    /// Returns up to `limit` expired leases to their queues (a new delivery will follow), or
    /// dead-letters the message (FAILURE, kind `dead_lettered`) when its attempt was already
    /// delivered `max_deliveries` times. Returns how many leases it reclaimed.
    fn reap(&self, now_ms: u64, limit: usize) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Returns when a message may be ready in one of `queues` (something was enqueued or
    /// released) or after `timeout`. Spurious returns are allowed.
    fn wait_for_work(
        &self,
        queues: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The task's record, if it exists.
    fn record(&self, id: &str) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send;

    /// Waits, without polling, until the task is final or `timeout` passes; returns its record
    /// then (final or not), or `None` if there is no such task.
    fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send;

    /// Revokes a task (see [`Revoked`]). A task not yet running becomes REVOKED (kind
    /// `revoked`) at once and its message is removed.
    fn revoke(
        &self,
        id: &str,
        terminate: bool,
        now_ms: u64,
    ) -> impl Future<Output = Result<Revoked, Error>> + Send;

    /// Ids whose running task should be terminated, as they are revoked (for workers).
    fn terminations(
        &self,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<String>, Error>> + Send;

    /// Whether a terminate was requested for this task (checked by a worker at delivery, in
    /// case the request came before it subscribed).
    fn terminating(&self, id: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Removes every waiting message (ready and delayed) of `queue`; their tasks become
    /// REVOKED (kind `purged`). Returns how many.
    fn purge(&self, queue: &str, now_ms: u64) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Dead-lettered tasks, most recent first.
    fn dead(&self, limit: usize) -> impl Future<Output = Result<Vec<TaskRecord>, Error>> + Send;

    /// Queues dead-lettered tasks again (all when `id` is `None`) as a fresh attempt with
    /// delivery count 0, state PENDING. Returns how many.
    fn retry_dead(
        &self,
        id: Option<&str>,
        now_ms: u64,
    ) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Deletes dead-lettered tasks and their records. Returns how many.
    fn purge_dead(&self) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Stores a component version (blob under its digest, stored once) and makes it the
    /// current version of its name; deploying the current digest again changes nothing.
    fn put_component(
        &self,
        upload: Upload,
    ) -> impl Future<Output = Result<ComponentRecord, Error>> + Send;

    /// Every registry name, sorted.
    fn components(&self) -> impl Future<Output = Result<Vec<ComponentRecord>, Error>> + Send;

    fn component(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, Error>> + Send;

    /// The gzip-compressed bytes of a stored component.
    fn blob(&self, digest: &str) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// Messages waiting in a queue (ready, not delayed).
    fn depth(&self, queue: &str) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Stores a workflow whole: its tree, its joins and its tasks, each PENDING, the parked
    /// ones waiting for their owners and the others queued. If the workflow's id or a task
    /// id is in use, nothing is stored ([`Error::DuplicateId`]).
    ///
    /// From then on, whenever a workflow task or join reaches a final state (settle, reap,
    /// revoke, purge, expiry), its [`Links`](crate::workflow::Links) run in the same atomic
    /// step: on success the `next` tasks start with the output (prepended to their
    /// arguments, or under their first parameter, or ignored) and the `errback` tasks are
    /// skipped (REVOKED, kind `skipped`); on failure the `next` tasks end in the same state
    /// (kind `upstream_failed` or `upstream_revoked`, naming the task that failed) and so on
    /// down their own links, and the `errback` tasks start with the failure object. The
    /// result (or failure) goes to the task's join: a join whose every member delivered
    /// starts its links with the list of results in member order (concatenated when it
    /// flattens), exactly once; a member's failure fails the join at once unless it
    /// collects failures. A parked task that was revoked is never started.
    fn submit(&self, plan: Plan, now_ms: u64) -> impl Future<Output = Result<(), Error>> + Send;

    /// A submitted workflow's tree, until it expires.
    fn workflow(&self, id: &str) -> impl Future<Output = Result<Option<Tree>, Error>> + Send;

    /// Sets (`None`: removes) the rate limit of `task` (`component.task`, any version): from
    /// then on `reserve`, whichever worker calls it, leases its messages at most `rate.count`
    /// per `rate.per_ms`, one interval apart (no burst beyond one). A message whose slot is
    /// less than a second (or one interval) ahead is booked: it waits in the delayed set until
    /// its slot and then runs without taking another; one further ahead waits there, taking
    /// no slot, until about when one could be booked for it (a backlog is spread one interval
    /// apart, so each message is looked at about twice). Other tasks are not held back.
    /// A changed limit starts from a fresh bucket; booked slots are kept, and messages waiting
    /// without a slot go back to their places in the queue at once, for the new limit.
    fn set_rate_limit(
        &self,
        task: &str,
        rate: Option<Rate>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sets (`None`: removes) the time limit of `task` (`component.task`), in ms, for every
    /// worker to apply in place of its default. Stored only: the broker does not enforce it.
    fn set_time_limit(
        &self,
        task: &str,
        limit_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Every task that has a rate or time limit set, by `component.task`.
    fn task_policies(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, TaskPolicy>, Error>> + Send;
}
