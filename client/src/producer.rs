//! What a producer needs from wherever tasks go: enqueue calls, read and wait for records,
//! revoke, purge, dead letters, the registry. Every [`Broker`] is a producer (calls are checked
//! against the registry here, in the client); so is [`crate::http::HttpApi`] (the service
//! checks them). [`crate::Client`] and [`crate::AsyncResult`] are generic over it.
//!
//! Unlike [`Broker`], nothing here takes the time: over HTTP the service's clock decides, over
//! a broker this process's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::api::{EnqueueRequest, WorkflowResponse};
use crate::broker::{Broker, Enqueued, Error, Revoked};
use crate::client::{ClientError, prepare};
use crate::message::{TaskRecord, now_ms};
use crate::registry::ComponentRecord;
use crate::workflow::{Node, Tree};

/// How long a component's registry record is reused before the registry is asked again: a
/// deploy reaches producers within this time, and a burst of calls costs one lookup.
const REGISTRY_TTL: Duration = Duration::from_secs(1);

/// Component records a producer that checks calls itself (a broker) reuses for up to a second.
/// A [`crate::Client`] holds one; producers that leave checks to the service ignore it.
#[derive(Clone, Default)]
pub struct ComponentCache {
    records: Arc<Mutex<HashMap<String, (Instant, ComponentRecord)>>>,
}

impl ComponentCache {
    /// The record of `name`, if it was fetched less than [`REGISTRY_TTL`] ago.
    pub(crate) fn fresh(&self, name: &str) -> Option<ComponentRecord> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        match records.get(name) {
            Some((at, record)) if at.elapsed() < REGISTRY_TTL => Some(record.clone()),
            _ => None,
        }
    }

    pub(crate) fn insert(&self, record: ComponentRecord) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(record.name.clone(), (Instant::now(), record));
    }
}

/// Where a producer's calls go: a broker, or the service over HTTP.
pub trait Producer: Clone + Send + Sync + 'static {
    /// Enqueues calls in one round trip, each checked against the registry first (none is
    /// stored if one is refused). For an idempotency key seen before, the first task's id
    /// with `created: false`.
    fn enqueue_calls(
        &self,
        calls: Vec<EnqueueRequest>,
        components: &ComponentCache,
    ) -> impl Future<Output = Result<Vec<Enqueued>, ClientError>> + Send;

    /// The task's record, if it exists.
    fn record(&self, id: &str) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send;

    /// Waits until the task is final or `timeout` passes; its record then (final or not), or
    /// `None` if there is no such task.
    fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send;

    /// Revokes a task; with `terminate`, a running call is stopped.
    fn revoke(
        &self,
        id: &str,
        terminate: bool,
    ) -> impl Future<Output = Result<Revoked, Error>> + Send;

    /// Removes every waiting message of `queue`; returns how many.
    fn purge(&self, queue: &str) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Dead-lettered tasks, most recent first.
    fn dead(&self, limit: usize) -> impl Future<Output = Result<Vec<TaskRecord>, Error>> + Send;

    /// Queues dead-lettered tasks again (all when `id` is `None`); returns how many (0 for an
    /// unknown id).
    fn retry_dead(&self, id: Option<&str>) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Deletes every dead-lettered task; returns how many.
    fn purge_dead(&self) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Every deployed component, sorted by name.
    fn components(&self) -> impl Future<Output = Result<Vec<ComponentRecord>, Error>> + Send;

    /// One component's versions, if it is deployed.
    fn component(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, Error>> + Send;

    /// Checks a workflow against the registry and stores it whole (its first tasks queued);
    /// `id` names it (a UUID if `None`). Returns its id and tree.
    fn submit_workflow(
        &self,
        workflow: &Node,
        id: Option<String>,
        components: &ComponentCache,
    ) -> impl Future<Output = Result<WorkflowResponse, ClientError>> + Send;

    /// A submitted workflow's tree, if it exists.
    fn workflow(&self, id: &str) -> impl Future<Output = Result<Option<Tree>, Error>> + Send;
}

// `fn … -> impl Future + Send` with `async move` bodies, as the trait declares, so the
// compiler checks each future is `Send`.
#[allow(clippy::manual_async_fn)]
impl<B: Broker + Clone> Producer for B {
    fn enqueue_calls(
        &self,
        calls: Vec<EnqueueRequest>,
        components: &ComponentCache,
    ) -> impl Future<Output = Result<Vec<Enqueued>, ClientError>> + Send {
        async move {
            let mut tasks = Vec::with_capacity(calls.len());
            for call in calls {
                let options = call.options();
                tasks.push(prepare(self, components, &call.task, options).await?);
            }
            Ok(Broker::enqueue(self, tasks, now_ms()).await?)
        }
    }

    fn record(&self, id: &str) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        Broker::record(self, id)
    }

    fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        Broker::wait(self, id, timeout)
    }

    fn revoke(
        &self,
        id: &str,
        terminate: bool,
    ) -> impl Future<Output = Result<Revoked, Error>> + Send {
        Broker::revoke(self, id, terminate, now_ms())
    }

    fn purge(&self, queue: &str) -> impl Future<Output = Result<usize, Error>> + Send {
        Broker::purge(self, queue, now_ms())
    }

    fn dead(&self, limit: usize) -> impl Future<Output = Result<Vec<TaskRecord>, Error>> + Send {
        Broker::dead(self, limit)
    }

    fn retry_dead(&self, id: Option<&str>) -> impl Future<Output = Result<usize, Error>> + Send {
        Broker::retry_dead(self, id, now_ms())
    }

    fn purge_dead(&self) -> impl Future<Output = Result<usize, Error>> + Send {
        Broker::purge_dead(self)
    }

    fn components(&self) -> impl Future<Output = Result<Vec<ComponentRecord>, Error>> + Send {
        Broker::components(self)
    }

    fn component(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, Error>> + Send {
        Broker::component(self, name)
    }

    fn submit_workflow(
        &self,
        workflow: &Node,
        id: Option<String>,
        components: &ComponentCache,
    ) -> impl Future<Output = Result<WorkflowResponse, ClientError>> + Send {
        async move {
            let plan = crate::workflow::plan(self, components, workflow, id).await?;
            let reply = WorkflowResponse {
                id: plan.id.clone(),
                tree: plan.tree.clone(),
            };
            Broker::submit(self, plan, now_ms()).await?;
            Ok(reply)
        }
    }

    fn workflow(&self, id: &str) -> impl Future<Output = Result<Option<Tree>, Error>> + Send {
        Broker::workflow(self, id)
    }
}
