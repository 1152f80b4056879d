//! The producer API: connect with one URL, call tasks with Celery's options, read results.
//! The same calls work over a broker (`redis://`, `memory://`: calls are checked against the
//! registry here) and over the service (`http(s)://`: the service checks them); see
//! [`Producer`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let client = wtq_client::Client::connect("redis://127.0.0.1:6379").await?;
//! let result = client.call("math.add").args(serde_json::json!([2, 3])).send().await?;
//! let sum = result.get(Duration::from_secs(10)).await?;
//! assert_eq!(sum, serde_json::json!(5));
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde_json::Value;

use crate::api::EnqueueRequest;
use crate::broker::{self, Broker, Enqueued, NewTask, Revoked};
use crate::connect::Endpoint;
use crate::message::{
    Backoff, DEFAULT_MAX_DELIVERIES, DEFAULT_RESULT_EXPIRES_MS, LimitOverrides, MAX_DURATION,
    MAX_PRIORITY, State, TaskFailure, TaskMessage, TaskRecord, now_ms,
};
use crate::producer::{ComponentCache, Producer};
use crate::registry::{Address, AddressError, ComponentRecord, TaskInfo, valid_name};
use crate::workflow::{Node, Plan, WorkflowResult};

/// Largest JSON arguments accepted at enqueue (the workers' default argument limit).
pub const MAX_ARGS_BYTES: usize = 1 << 20;
/// The queue a call goes to unless it names one, as Celery's `celery` queue.
pub const DEFAULT_QUEUE: &str = "default";

/// Why a call could not be enqueued or a result read. Each message names the thing and the
/// value involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Broker(#[from] broker::Error),
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("unknown component `{name}`; deployed: {known}")]
    UnknownComponent { name: String, known: String },
    #[error("component `{component}` has no task `{task}`; it offers: {known}")]
    UnknownTask {
        component: String,
        task: String,
        known: String,
    },
    #[error("{0}")]
    Args(#[from] crate::args::ArgsError),
    #[error("arguments are {size} bytes of JSON, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    InvalidOption(String),
    /// A workflow node is wrong; `at` is its path in the document (`.chain[1].group[0]`).
    #[error("workflow node {at}: {source}")]
    Workflow {
        at: String,
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// What went wrong, under the workflow node that names where: it decides the error's
    /// kind (and exit code).
    pub fn cause(&self) -> &ClientError {
        let mut cause = self;
        while let ClientError::Workflow { source, .. } = cause {
            cause = source;
        }
        cause
    }
}

/// Connects producers to the queue: over a broker, or over the service's HTTP API.
#[derive(Clone)]
pub struct Client<P = Endpoint> {
    producer: P,
    components: ComponentCache,
}

impl Client<Endpoint> {
    /// Connects to what `url` names: the service (`http(s)://HOST:PORT`, no token) or a broker
    /// (`redis://host:port[?namespace=NAME]`, `rediss://`, `memory://`).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Client::connect_with_token(url, None).await
    }

    /// As [`Client::connect`], with the service's API token (ignored for a broker URL).
    pub async fn connect_with_token(url: &str, token: Option<&str>) -> Result<Self, ClientError> {
        Ok(Client::with_producer(Endpoint::connect(url, token).await?))
    }
}

impl<P: Producer> Client<P> {
    /// A client over an existing producer (a broker, [`crate::http::HttpApi`], an [`Endpoint`]).
    pub fn with_producer(producer: P) -> Self {
        Client {
            producer,
            components: ComponentCache::default(),
        }
    }

    /// Where the calls go.
    pub fn producer(&self) -> &P {
        &self.producer
    }

    /// Starts a call of `address` (`NAME.TASK` or `NAME@DIGEST.TASK`).
    pub fn call(&self, address: &str) -> Call<'_, P> {
        Call {
            client: self,
            address: address.to_string(),
            options: CallOptions::default(),
        }
    }

    /// A handle on the result of task `id`.
    pub fn result(&self, id: &str) -> AsyncResult<P> {
        AsyncResult::new(id.to_string(), self.producer.clone())
    }

    /// Checks a workflow document against the registry and submits it whole (its first
    /// tasks queued, the rest waiting for their inputs); `id` names it (a UUID if `None`).
    pub async fn submit(
        &self,
        workflow: &Node,
        id: Option<&str>,
    ) -> Result<WorkflowResult<P>, ClientError> {
        let reply = self
            .producer
            .submit_workflow(workflow, id.map(str::to_string), &self.components)
            .await?;
        Ok(WorkflowResult::new(
            reply.id,
            reply.tree,
            self.producer.clone(),
        ))
    }

    /// A handle on a submitted workflow, if it exists (its tree is kept for a week, or as
    /// long as its longest result expiry).
    pub async fn workflow(&self, id: &str) -> Result<Option<WorkflowResult<P>>, ClientError> {
        let tree = self.producer.workflow(id).await?;
        Ok(tree.map(|tree| WorkflowResult::new(id.to_string(), tree, self.producer.clone())))
    }

    /// Enqueues many calls in one round trip (over HTTP, one `POST /v1/tasks/batch` of at
    /// most 10,000); none is stored if one is refused. Returns their ids in request order.
    pub async fn enqueue_requests(
        &self,
        calls: Vec<EnqueueRequest>,
    ) -> Result<Vec<Enqueued>, ClientError> {
        self.producer.enqueue_calls(calls, &self.components).await
    }
}

impl<B: Broker + Clone> Client<B> {
    /// A client over an existing broker (e.g. the embedded one).
    pub fn with_broker(broker: B) -> Self {
        Client::with_producer(broker)
    }

    /// The broker underneath.
    pub fn broker(&self) -> &B {
        &self.producer
    }

    /// Checks a workflow against the registry and compiles it, without storing it (store it
    /// with [`Broker::submit`]).
    pub async fn plan(&self, workflow: &Node, id: Option<String>) -> Result<Plan, ClientError> {
        crate::workflow::plan(&self.producer, &self.components, workflow, id).await
    }

    /// Enqueues prepared messages in one round trip (see [`Call::prepare`]).
    pub async fn enqueue(&self, tasks: Vec<NewTask>) -> Result<Vec<AsyncResult<B>>, ClientError> {
        let enqueued = Broker::enqueue(&self.producer, tasks, now_ms()).await?;
        Ok(enqueued
            .into_iter()
            .map(|task| self.result(&task.id))
            .collect())
    }
}

/// The registry record of component `name`: from `cache` if fresh, else from the broker.
async fn component<B: Broker>(
    broker: &B,
    cache: &ComponentCache,
    name: &str,
) -> Result<ComponentRecord, ClientError> {
    if let Some(record) = cache.fresh(name) {
        return Ok(record);
    }
    if let Some(record) = Broker::component(broker, name).await? {
        cache.insert(record.clone());
        return Ok(record);
    }
    let known: Vec<String> = Broker::components(broker)
        .await?
        .into_iter()
        .map(|record| record.name)
        .collect();
    Err(ClientError::UnknownComponent {
        name: name.to_string(),
        known: if known.is_empty() {
            "none (use `wtq deploy`)".into()
        } else {
            known.join(", ")
        },
    })
}

/// Celery's call options (`apply_async`), all optional.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    pub queue: Option<String>,
    pub priority: Option<u8>,
    pub countdown: Option<Duration>,
    /// Not before this time (Unix ms).
    pub eta_ms: Option<u64>,
    pub expires: Option<Duration>,
    pub max_retries: Option<u32>,
    pub retry_backoff: Option<Backoff>,
    pub limits: LimitOverrides,
    pub task_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub max_deliveries: Option<u32>,
    pub result_expires: Option<Duration>,
}

/// A call being built: set options, then [`send`](Call::send).
pub struct Call<'a, P> {
    client: &'a Client<P>,
    address: String,
    options: CallOptions,
}

impl<P> Call<'_, P> {
    /// Positional arguments (a JSON array), or keyword arguments as a lone JSON object.
    pub fn args(mut self, args: Value) -> Self {
        self.options.args = Some(args);
        self
    }
    /// Keyword arguments (a JSON object), merged with positional ones by parameter name.
    pub fn kwargs(mut self, kwargs: Value) -> Self {
        self.options.kwargs = Some(kwargs);
        self
    }
    pub fn queue(mut self, queue: &str) -> Self {
        self.options.queue = Some(queue.to_string());
        self
    }
    /// 0 (default, lowest) to 9 (highest).
    pub fn priority(mut self, priority: u8) -> Self {
        self.options.priority = Some(priority);
        self
    }
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.options.countdown = Some(delay);
        self
    }
    /// Not before `eta_ms` (Unix ms).
    pub fn eta_ms(mut self, eta_ms: u64) -> Self {
        self.options.eta_ms = Some(eta_ms);
        self
    }
    pub fn expires(mut self, after: Duration) -> Self {
        self.options.expires = Some(after);
        self
    }
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.options.max_retries = Some(retries);
        self
    }
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.options.retry_backoff = Some(backoff);
        self
    }
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.options.limits.time_ms = Some(limit.as_millis() as u64);
        self
    }
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.options.limits.fuel = Some(fuel);
        self
    }
    pub fn memory(mut self, bytes: u64) -> Self {
        self.options.limits.memory = Some(bytes);
        self
    }
    pub fn task_id(mut self, id: &str) -> Self {
        self.options.task_id = Some(id.to_string());
        self
    }
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.options.idempotency_key = Some(key.to_string());
        self
    }
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.options.max_deliveries = Some(deliveries);
        self
    }
    pub fn result_expires(mut self, after: Duration) -> Self {
        self.options.result_expires = Some(after);
        self
    }
    /// Replaces every option at once.
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }
}

impl<B: Broker + Clone> Call<'_, B> {
    /// Checks the call against the registry and builds its message, without enqueueing it.
    pub async fn prepare(self) -> Result<NewTask, ClientError> {
        let client = self.client;
        prepare(
            &client.producer,
            &client.components,
            &self.address,
            self.options,
        )
        .await
    }
}

impl<P: Producer> Call<'_, P> {
    /// Enqueues the call and returns a handle on its result (for an idempotency key seen
    /// before, the handle of the first task).
    pub async fn send(self) -> Result<AsyncResult<P>, ClientError> {
        let client = self.client;
        let call = EnqueueRequest::new(&self.address, &self.options);
        let mut enqueued = client.enqueue_requests(vec![call]).await?;
        let task = enqueued.pop().ok_or_else(|| {
            ClientError::Broker(broker::Error::Corrupt("enqueue returned no id".into()))
        })?;
        Ok(client.result(&task.id))
    }
}

/// Checks a call of `address` against the broker's registry and builds its message.
pub(crate) async fn prepare<B: Broker>(
    broker: &B,
    components: &ComponentCache,
    address: &str,
    mut options: CallOptions,
) -> Result<NewTask, ClientError> {
    let resolved = resolve(broker, components, address).await?;
    let args = encode_args(&resolved.task, options.args.take(), options.kwargs.take())?;
    let idempotency_key = options.idempotency_key.take();
    let message = build(&resolved, args, options, now_ms())?;
    Ok(NewTask {
        message,
        idempotency_key,
    })
}

/// A task address checked against the registry.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub address: Address,
    /// The digest the address pins, if it pins one.
    pub pinned: Option<String>,
    pub task: TaskInfo,
}

/// Finds `address` in the registry: its component, the pinned or current version, the task.
pub(crate) async fn resolve<B: Broker>(
    broker: &B,
    components: &ComponentCache,
    address: &str,
) -> Result<Resolved, ClientError> {
    let address = Address::parse(address)?;
    let record = component(broker, components, &address.component).await?;
    let version = match &address.digest {
        Some(prefix) => record.pinned(prefix)?,
        None => record
            .current()
            .ok_or_else(|| ClientError::UnknownComponent {
                name: address.component.clone(),
                known: "it has no versions".into(),
            })?,
    };
    let Some(task) = version.tasks.iter().find(|task| task.name == address.task) else {
        let known: Vec<&str> = version
            .tasks
            .iter()
            .map(|task| task.name.as_str())
            .collect();
        return Err(ClientError::UnknownTask {
            component: address.component,
            task: address.task,
            known: known.join(", "),
        });
    };
    Ok(Resolved {
        pinned: address.digest.as_ref().map(|_| version.digest.clone()),
        task: task.clone(),
        address,
    })
}

/// The JSON arguments `task` receives; a lone JSON object as `args` is keyword arguments.
pub(crate) fn encode_args(
    task: &TaskInfo,
    args: Option<Value>,
    kwargs: Option<Value>,
) -> Result<String, ClientError> {
    let (positional, keywords) = match (args, kwargs) {
        (Some(object @ Value::Object(_)), None) => (None, Some(object)),
        other => other,
    };
    let args = crate::args::encode(task, positional, keywords)?;
    if args.len() > MAX_ARGS_BYTES {
        return Err(ClientError::TooLarge {
            size: args.len(),
            limit: MAX_ARGS_BYTES,
        });
    }
    Ok(args)
}

/// The message of a resolved call with encoded `args`, its options checked (`options.args`,
/// `kwargs` and `idempotency_key` are not read).
pub(crate) fn build(
    resolved: &Resolved,
    args: String,
    options: CallOptions,
    now: u64,
) -> Result<TaskMessage, ClientError> {
    let queue = options.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_string());
    if !valid_name(&queue) {
        return Err(ClientError::InvalidOption(format!(
            "queue `{queue}`: use 1 to 128 ASCII letters, digits, `_` or `-`"
        )));
    }
    let priority = options.priority.unwrap_or(0);
    if priority > MAX_PRIORITY {
        return Err(ClientError::InvalidOption(format!(
            "priority {priority} is out of range: use 0 (lowest) to {MAX_PRIORITY} (highest)"
        )));
    }
    if let Some(id) = &options.task_id
        && !valid_task_id(id)
    {
        return Err(ClientError::InvalidOption(format!(
            "task id `{id}`: use 1 to 128 printable characters without spaces"
        )));
    }
    for (name, value) in [
        ("countdown", options.countdown),
        ("expires", options.expires),
        ("result_expires", options.result_expires),
    ] {
        if value.is_some_and(|value| value > MAX_DURATION) {
            return Err(ClientError::InvalidOption(format!(
                "{name} of {value:?} is too long: at most 10 years"
            )));
        }
    }
    if options.result_expires.is_some_and(|after| after.is_zero()) {
        return Err(ClientError::InvalidOption(
            "result_expires must be more than 0".into(),
        ));
    }
    if options
        .eta_ms
        .is_some_and(|eta| eta > now + MAX_DURATION.as_millis() as u64)
    {
        return Err(ClientError::InvalidOption(
            "eta is more than 10 years away".into(),
        ));
    }
    let eta_ms = match (options.countdown, options.eta_ms) {
        (Some(_), Some(_)) => {
            return Err(ClientError::InvalidOption(
                "give either a countdown or an ETA, not both".into(),
            ));
        }
        (Some(delay), None) => Some(now + delay.as_millis() as u64),
        (None, eta) => eta,
    };
    Ok(TaskMessage {
        id: options
            .task_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        component: resolved.address.component.clone(),
        digest: resolved.pinned.clone(),
        task: resolved.address.task.clone(),
        args,
        queue,
        priority,
        eta_ms,
        expires_ms: options.expires.map(|after| now + after.as_millis() as u64),
        max_retries: options.max_retries,
        retry_backoff: options.retry_backoff,
        limits: options.limits,
        max_deliveries: options
            .max_deliveries
            .unwrap_or(DEFAULT_MAX_DELIVERIES)
            .max(1),
        result_expires_ms: options
            .result_expires
            .map_or(DEFAULT_RESULT_EXPIRES_MS, |after| after.as_millis() as u64),
        created_ms: now,
        batch: false,
    })
}

/// Whether `id` may name a task (`--task-id`): 1 to 128 printable characters, no spaces.
pub(crate) fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(|c| c.is_control() || c == ' ')
}

/// Why [`AsyncResult::get`] has no output.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("task {id} failed ({}): {}", .error.kind, .error.message)]
    Failed { id: String, error: TaskFailure },
    #[error("task {id} was revoked ({}): {}", .error.kind, .error.message)]
    Revoked { id: String, error: TaskFailure },
    #[error("task {id} did not finish within {timeout:?} (state {state})")]
    Timeout {
        id: String,
        timeout: Duration,
        state: State,
    },
    #[error("no task {id} (never enqueued, or its result expired)")]
    Unknown { id: String },
    #[error(transparent)]
    Broker(#[from] broker::Error),
}

/// A handle on a task's result, as Celery's `AsyncResult`.
#[derive(Clone)]
pub struct AsyncResult<P = Endpoint> {
    id: String,
    producer: P,
}

impl<P: Producer> AsyncResult<P> {
    pub(crate) fn new(id: String, producer: P) -> Self {
        AsyncResult { id, producer }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full record (state, attempts, errors, metrics), if the task exists.
    pub async fn record(&self) -> Result<Option<TaskRecord>, broker::Error> {
        self.producer.record(&self.id).await
    }

    /// The current state; PENDING for an unknown id, as in Celery.
    pub async fn state(&self) -> Result<State, broker::Error> {
        Ok(self
            .record()
            .await?
            .map_or(State::Pending, |record| record.state))
    }

    /// Whether the task finished (successfully or not).
    pub async fn ready(&self) -> Result<bool, broker::Error> {
        Ok(self.state().await?.is_final())
    }

    /// Whether the task finished successfully.
    pub async fn successful(&self) -> Result<bool, broker::Error> {
        Ok(self.state().await? == State::Success)
    }

    /// Waits (without polling; over HTTP, by long polls of at most a minute) up to `timeout` for the task and returns its output.
    pub async fn get(&self, timeout: Duration) -> Result<Value, ResultError> {
        let id = self.id.clone();
        let record = self.producer.wait(&self.id, timeout).await?;
        let record = record.ok_or_else(|| ResultError::Unknown { id: id.clone() })?;
        let error = || {
            record.error.clone().unwrap_or(TaskFailure {
                kind: "unknown".into(),
                message: "no error recorded".into(),
            })
        };
        match record.state {
            State::Success => {
                let output = record.output().unwrap_or("null");
                serde_json::from_str(output)
                    .map_err(|e| broker::Error::Corrupt(format!("output of task {id}: {e}")).into())
            }
            State::Failure => Err(ResultError::Failed { id, error: error() }),
            State::Revoked => Err(ResultError::Revoked { id, error: error() }),
            state => Err(ResultError::Timeout { id, timeout, state }),
        }
    }

    /// Revokes the task; with `terminate`, a running call is stopped at its next epoch tick.
    pub async fn revoke(&self, terminate: bool) -> Result<Revoked, broker::Error> {
        self.producer.revoke(&self.id, terminate).await
    }
}
