//! The sandbox: runs one call of a task component under limits, in a fresh (or recycled)
//! wasmtime instance.
//!
//! Owns the engines (one per [`Metering`] mode, created on first use), the compiled-component
//! cache, instance recycling and every per-call limit. It does not know where components come
//! from (the registry) or where calls come from (the broker). Only this module speaks wasmtime.
//!
//! A batch call ([`CallRequest::batch`], Celery's `map`/`starmap`/`chunks`) makes one call per
//! argument list, one after another, in one instance and under one set of limits.
//!
//! Entry points: [`Sandbox::new`], [`Sandbox::load`], [`Component::call`].

pub mod bench;
mod bindings;
mod cache;
pub mod engine;
mod limits;
mod listing;
mod outcome;
mod state;
mod validate;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::units::{format_bytes, format_duration};
use bindings::{Task, TaskContext, TaskError, TaskPre};
pub use cache::CompileSource;
pub use engine::{Allocator, Metering};
pub use limits::*;
pub use outcome::{CallReport, FailureKind, Outcome, Progress};
use state::{HostState, MemoryLimitExceeded, truncate};
pub use validate::TASKS_EXPORT;

/// Default wasm stack: recursion deeper than this fails as `stack_overflow`.
pub const DEFAULT_MAX_WASM_STACK: usize = 1 << 20;
/// Default memory high-water mark: a recycled instance holding more than this after a call is
/// dropped instead of being kept warm.
pub const DEFAULT_RECYCLE_MEMORY: u64 = 64 << 20;
/// Default number of calls that may run at once in one process.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// Longest time limit a call may have; longer requests are cut to this (a deadline further
/// away is indistinguishable from none, and `Instant` arithmetic must not overflow).
pub const MAX_TIME_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Errors of the host side: loading a component, or infrastructure failing during a call.
/// A guest's failure is never one of these; it is an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "not a WebAssembly file (no `\\0asm` header); build the task with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build it with `--target wasm32-wasip2` or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "the component does not export {what} (it exports: {found}); export its tasks with `wtq_sdk::export!`"
    )]
    MissingExport { what: String, found: String },
    #[error(
        "the component imports `{0}`, which the host does not grant (granted: wtq:task/host and the WASI p2 cli, clocks, filesystem, io, random and sockets interfaces, with no files, network or environment)"
    )]
    DisallowedImport(String),
    #[error("listing the component's tasks failed: {0}")]
    List(String),
    #[error("compiled-artifact cache at {}: {error}", path.display())]
    Cache {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("creating the wasm engine: {0}")]
    Engine(String),
    #[error("instantiating the component: {0}")]
    Instantiate(String),
}

impl Error {
    fn compile(error: wasmtime::Error) -> Self {
        Error::Invalid(format!("{error:#}"))
    }
}

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Calls that may run at once; sizes the instance pool.
    pub concurrency: u32,
    /// Wasm stack size in bytes (engine-wide).
    pub max_wasm_stack: usize,
    /// Calls one instance may serve before it is dropped; 1 means a fresh instance per call.
    pub max_tasks_per_instance: u32,
    /// An instance holding more memory than this after a call is not reused.
    pub recycle_memory: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: default_cache_dir(),
            concurrency: DEFAULT_CONCURRENCY,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            max_tasks_per_instance: 1,
            recycle_memory: DEFAULT_RECYCLE_MEMORY,
        }
    }
}

/// `$XDG_CACHE_HOME/wtq` or `~/.cache/wtq`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wtq"))
}

pub use wtq_client::registry::TaskInfo;

/// One call to make.
#[derive(Debug, Clone, Default)]
pub struct CallRequest<'a> {
    /// Task name within the component, e.g. `add`.
    pub task: &'a str,
    /// JSON arguments: an array (positional) or an object (keyword); with `batch`, an array of
    /// those.
    pub args: &'a str,
    /// A map/starmap call: the task is called once per argument list of `args`, in order, in
    /// one instance, and the output is the JSON array of the outputs. The limits cover the
    /// batch as a whole (the output limit the combined output); the first item that does not
    /// succeed decides the outcome, its message prefixed with `item N: ` (0-based).
    pub batch: bool,
    pub task_id: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Empty outside the hosted service. Recycled instances never cross tenants.
    pub tenant: &'a str,
    pub limits: Limits,
    /// Stops the call (as `terminated`) within one epoch tick once it holds `true`, even while
    /// the guest is blocked in a host call.
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// Receives every progress report as the task makes it.
    pub progress: Option<tokio::sync::watch::Sender<Option<Progress>>>,
}

/// The engines and caches of one process. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

struct Shared {
    config: SandboxConfig,
    cache: Option<cache::ArtifactCache>,
    runtimes: Mutex<HashMap<Metering, Arc<Runtime>>>,
    /// Instances kept warm across all components, bounded so they cannot exhaust the pool.
    warm_instances: AtomicU32,
}

/// An engine and the linker that grants the host's imports on it.
struct Runtime {
    engine: wasmtime::Engine,
    allocator: Allocator,
    linker: Linker<HostState>,
}

impl Sandbox {
    /// Opens the artifact cache (running without one if it is unusable). Engines are created
    /// on first use.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, Error> {
        // A cache that cannot be used costs compile time, not correctness: run without it.
        let cache = config.cache_dir.as_deref().and_then(|dir| {
            cache::ArtifactCache::open(dir)
                .inspect_err(|error| {
                    tracing::warn!(%error, "compiled-artifact cache unusable; compiling every time")
                })
                .ok()
        });
        Ok(Sandbox {
            shared: Arc::new(Shared {
                config,
                cache,
                runtimes: Mutex::new(HashMap::new()),
                warm_instances: AtomicU32::new(0),
            }),
        })
    }

    /// The settings this sandbox was created with.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// The allocator the engine for `metering` uses (creating the engine if needed).
    pub fn allocator(&self, metering: Metering) -> Result<Allocator, Error> {
        Ok(self.shared.runtime(metering)?.allocator)
    }

    /// Validates `wasm` as a task component, compiles it for `metering` (through the cache)
    /// and asks it for its tasks. Compiling blocks the calling thread on a cache miss.
    pub async fn load(&self, wasm: Vec<u8>, metering: Metering) -> Result<Component, Error> {
        validate::header(&wasm)?;
        let digest = hex(&Sha256::digest(&wasm));
        let mut inner = ComponentInner {
            shared: self.shared.clone(),
            digest,
            wasm,
            tasks: Vec::new(),
            compile_source: CompileSource::Compiled,
            prepared: Default::default(),
        };
        let (prepared, source) = inner.prepare(metering)?;
        inner.tasks = listing::list(&prepared).await?;
        inner.compile_source = source;
        Ok(Component(Arc::new(inner)))
    }
}

impl Shared {
    fn runtime(&self, metering: Metering) -> Result<Arc<Runtime>, Error> {
        let mut runtimes = self.runtimes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(runtime) = runtimes.get(&metering) {
            return Ok(runtime.clone());
        }
        let slots = self.config.concurrency.max(1);
        let warm = if self.config.max_tasks_per_instance > 1 {
            slots
        } else {
            0
        };
        // One extra slot for the instance that lists a component's tasks during a load.
        let settings = engine::EngineSettings {
            metering,
            instance_slots: slots + warm + 1,
            max_wasm_stack: self.config.max_wasm_stack,
        };
        let (engine, allocator) =
            engine::build(settings).map_err(|error| Error::Engine(format!("{error:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| Task::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state))
            .map_err(|error| Error::Engine(format!("{error:#}")))?;
        let runtime = Arc::new(Runtime {
            engine,
            allocator,
            linker,
        });
        runtimes.insert(metering, runtime.clone());
        Ok(runtime)
    }
}

/// A validated, compiled task component. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Component(Arc<ComponentInner>);

struct ComponentInner {
    shared: Arc<Shared>,
    digest: String,
    /// Kept to compile for the other metering mode on demand.
    wasm: Vec<u8>,
    tasks: Vec<TaskInfo>,
    compile_source: CompileSource,
    /// One compiled form per metering mode, made on first use.
    prepared: [OnceLock<Arc<Prepared>>; 3],
}

/// A component compiled and linked for one engine, with its warm instances.
pub(crate) struct Prepared {
    metering: Metering,
    runtime: Arc<Runtime>,
    pre: TaskPre<HostState>,
    warm: Mutex<Vec<WarmInstance>>,
}

/// An instance kept for its next call (`max_tasks_per_instance` > 1).
struct WarmInstance {
    store: Store<HostState>,
    task: Task,
    tenant: String,
    calls: u32,
}

impl Component {
    /// The sha-256 of the component's bytes, in hex.
    pub fn digest(&self) -> &str {
        &self.0.digest
    }

    /// The tasks the component offers, in its own order.
    pub fn tasks(&self) -> &[TaskInfo] {
        &self.0.tasks
    }

    /// The task called `name`, if the component offers it.
    pub fn task(&self, name: &str) -> Option<&TaskInfo> {
        self.0.tasks.iter().find(|task| task.name == name)
    }

    /// Whether the load compiled the component or found it in the cache.
    pub fn compile_source(&self) -> &CompileSource {
        &self.0.compile_source
    }

    /// Runs one call. `Err` only for host failures; every guest behaviour, including every
    /// limit being hit, is an [`Outcome`] in the report.
    pub async fn call(&self, request: &CallRequest<'_>) -> Result<CallReport, Error> {
        let started = Instant::now();
        let limits = request.limits;
        if self.task(request.task).is_none() {
            let known: Vec<&str> = self.0.tasks.iter().map(|task| task.name.as_str()).collect();
            let message = format!(
                "unknown task `{}`; this component offers: {}",
                request.task,
                known.join(", ")
            );
            return Ok(CallReport::early(
                Outcome::Failure {
                    kind: FailureKind::UnknownTask,
                    message,
                },
                started,
            ));
        }
        if request.args.len() as u64 > limits.args {
            let message = format!(
                "arguments too large: {} of JSON, over the {} argument limit",
                format_bytes(request.args.len() as u64),
                format_bytes(limits.args)
            );
            return Ok(CallReport::early(
                Outcome::Failure {
                    kind: FailureKind::ArgsTooLarge,
                    message,
                },
                started,
            ));
        }
        let batch = if request.batch {
            match batch_items(request.args) {
                // Nothing to call: no instance is needed to return no outputs.
                Ok(items) if items.is_empty() => {
                    let output = "[]".to_string();
                    return Ok(CallReport::early(Outcome::Success { output }, started));
                }
                Ok(items) => Some(items),
                Err(message) => {
                    let kind = FailureKind::InvalidArgs;
                    let outcome = Outcome::Failure { kind, message };
                    return Ok(CallReport::early(outcome, started));
                }
            }
        } else {
            None
        };
        let (prepared, _) = self.0.prepare(limits.metering())?;
        run(&self.0.shared, &prepared, request, batch.as_deref()).await
    }
}

impl ComponentInner {
    /// The component compiled for `metering`, compiling it on first use. The compile runs
    /// outside any lock, so calls of an already-prepared mode never wait for it; two first
    /// calls racing may both compile, and the first to finish wins.
    fn prepare(&self, metering: Metering) -> Result<(Arc<Prepared>, CompileSource), Error> {
        let slot = &self.prepared[metering.index()];
        if let Some(ready) = slot.get() {
            return Ok((ready.clone(), CompileSource::Cached));
        }
        let runtime = self.shared.runtime(metering)?;
        let (component, source) = match &self.shared.cache {
            Some(cache) => cache.load(&runtime.engine, metering, &self.digest, &self.wasm)?,
            None => cache::compile(&runtime.engine, &self.wasm)?,
        };
        validate::interface(&runtime.engine, &component)?;
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .and_then(TaskPre::new)
            .map_err(|error| Error::Invalid(format!("{error:#}")))?;
        let ready = Arc::new(Prepared {
            metering,
            runtime,
            pre,
            warm: Mutex::new(Vec::new()),
        });
        Ok((slot.get_or_init(|| ready).clone(), source))
    }
}

impl Drop for ComponentInner {
    fn drop(&mut self) {
        for ready in self.prepared.iter().filter_map(OnceLock::get) {
            let warm = ready
                .warm
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u32;
            self.shared
                .warm_instances
                .fetch_sub(warm, Ordering::Relaxed);
        }
    }
}

/// The time limit fired inside wasm (at an epoch tick).
#[derive(Debug, thiserror::Error)]
#[error("time limit exceeded")]
pub(crate) struct TimeLimitExceeded;

/// How the instantiate + call step ended, before classification.
pub(crate) enum Step {
    Returned(Result<String, TaskError>),
    /// A batch's outputs so far came to this many bytes (with their brackets and commas), over
    /// the output limit.
    BatchOutputTooLarge(u64),
    Trapped(wasmtime::Error),
    TimedOut,
    Terminated,
}

/// Resolves once `cancel` holds `true`; never without a receiver or once its sender is gone.
async fn cancelled(cancel: Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(mut cancel) = cancel
        && cancel.wait_for(|stop| *stop).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await
}

/// The argument lists of a batch call, each as its own JSON text, or why `args` is not a batch.
fn batch_items(args: &str) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_str(args)
        .map_err(|error| format!("batch arguments are not JSON: {error}"))?;
    let serde_json::Value::Array(items) = value else {
        return Err(format!(
            "batch arguments must be a JSON array of argument lists, not {}",
            json_kind(&value)
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => Ok(item.to_string()),
            other => Err(format!(
                "item {index}: an argument list must be an array (positional) or an object (keyword), not {}",
                json_kind(&other)
            )),
        })
        .collect()
}

/// What a JSON value is, for messages.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Names the batch item an outcome came from; a success is left alone.
fn for_item(outcome: Outcome, index: usize) -> Outcome {
    match outcome {
        Outcome::Failure { kind, message } => Outcome::Failure {
            kind,
            message: format!("item {index}: {message}"),
        },
        Outcome::Retry { message, countdown } => Outcome::Retry {
            message: format!("item {index}: {message}"),
            countdown,
        },
        success @ Outcome::Success { .. } => success,
    }
}

/// Makes one call, or with `batch` one call per argument list, in one instance (fresh, or warm
/// for the same tenant) under the request's limits.
async fn run(
    shared: &Shared,
    prepared: &Prepared,
    request: &CallRequest<'_>,
    batch: Option<&[String]>,
) -> Result<CallReport, Error> {
    // The clock starts once the component is compiled: a compile is the host's cost, not the
    // task's.
    let started = Instant::now();
    let limits = request.limits;
    let time = limits.time.min(MAX_TIME_LIMIT);
    let deadline = started + time;
    let context = TaskContext {
        task_id: request.task_id.to_string(),
        task_name: request.task.to_string(),
        attempt: request.attempt,
        tenant: request.tenant.to_string(),
        deadline_unix_ms: unix_ms(SystemTime::now() + time),
    };
    let warm = take_warm(shared, prepared, request.tenant, limits.memory);
    let reused_instance = warm.is_some();
    let (mut store, instance, calls) = match warm {
        Some(mut warm) => {
            warm.store
                .data_mut()
                .reset(context, limits.memory, limits.log);
            warm.store.data_mut().progress_sink = request.progress.clone();
            arm(&mut warm.store, limits.fuel, deadline)?;
            (warm.store, Some(warm.task), warm.calls)
        }
        None => {
            let mut state = HostState::new(context, limits.memory, limits.log);
            state.progress_sink = request.progress.clone();
            (new_store(prepared, state, limits.fuel, deadline)?, None, 0)
        }
    };

    let mut instance_out = None;
    // The batch item being called when the step ended; `None` outside one (a single call, the
    // instantiation, a whole batch returned).
    let mut item = None;
    let mut cpu = thread_cpu_time().map(|_| Duration::ZERO);
    let step = {
        let store = &mut store;
        let instance_out = &mut instance_out;
        let item = &mut item;
        // Epoch ticks stop wasm that computes; this timeout stops wasm blocked in a host call
        // (a WASI sleep or poll), which epochs cannot interrupt.
        let call = async move {
            let task = match instance {
                Some(task) => task,
                None => match prepared.pre.instantiate_async(&mut *store).await {
                    Ok(task) => task,
                    Err(error) => return Step::Trapped(error),
                },
            };
            let tasks = task.wtq_task_tasks();
            let step = match batch {
                None => match tasks
                    .call_call(&mut *store, request.task, request.args)
                    .await
                {
                    Ok(returned) => Step::Returned(returned),
                    Err(error) => Step::Trapped(error),
                },
                Some(items) => 'batch: {
                    let mut outputs = String::from("[");
                    for (index, args) in items.iter().enumerate() {
                        *item = Some(index);
                        let output = match tasks.call_call(&mut *store, request.task, args).await {
                            Ok(Ok(output)) => output,
                            Ok(failed) => break 'batch Step::Returned(failed),
                            Err(error) => break 'batch Step::Trapped(error),
                        };
                        // Checked as the outputs grow, so a batch over its output limit stops
                        // at the item that crossed it and never holds much more than the limit.
                        let comma = usize::from(index > 0);
                        let size = (outputs.len() + comma + output.len() + 1) as u64;
                        if size > limits.output {
                            break 'batch Step::BatchOutputTooLarge(size);
                        }
                        // Not JSON: classified as this item's output (an `invalid_output`).
                        if serde_json::from_str::<serde::de::IgnoredAny>(&output).is_err() {
                            break 'batch Step::Returned(Ok(output));
                        }
                        if index > 0 {
                            outputs.push(',');
                        }
                        outputs.push_str(&output);
                    }
                    outputs.push(']');
                    *item = None;
                    Step::Returned(Ok(outputs))
                }
            };
            *instance_out = Some(task);
            step
        };
        let call = cpu_timed(call, &mut cpu);
        // A guest yields at every epoch tick, so a cancel is seen within one tick even while
        // it computes, and at once while it waits in a host call.
        tokio::select! {
            biased;
            () = cancelled(request.cancel.clone()) => Step::Terminated,
            timed = tokio::time::timeout_at(deadline.into(), call) => match timed {
                Ok(step) => step,
                Err(_) => Step::TimedOut,
            },
        }
    };

    if let Step::Trapped(error) = &step
        && error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    {
        return Err(Error::Instantiate(format!("{error:#}")));
    }
    let fuel = limits
        .fuel
        .map(|budget| budget.saturating_sub(store.get_fuel().unwrap_or(0)));
    let state = store.data_mut();
    let peak_memory = state.limiter.peak;
    let log = state.log.take();
    let progress = state.progress.take();
    let mut outcome = classify(step, &limits, shared.config.max_wasm_stack);
    if let Some(index) = item {
        outcome = for_item(outcome, index);
    }
    let poisoned = match &outcome {
        Outcome::Failure { kind, .. } => kind.poisons_instance(),
        _ => false,
    };
    if let Some(task) = instance_out
        && !poisoned
    {
        keep_warm(shared, prepared, store, task, request.tenant, calls + 1);
    }
    Ok(CallReport {
        outcome,
        duration: started.elapsed(),
        cpu,
        fuel,
        peak_memory,
        log,
        progress,
        reused_instance,
    })
}

fn take_warm(
    shared: &Shared,
    prepared: &Prepared,
    tenant: &str,
    memory_limit: u64,
) -> Option<WarmInstance> {
    if shared.config.max_tasks_per_instance <= 1 {
        return None;
    }
    let mut warm = prepared.warm.lock().unwrap_or_else(PoisonError::into_inner);
    let index = warm.iter().position(|instance| {
        instance.tenant == tenant && instance.store.data().limiter.current() <= memory_limit
    })?;
    shared.warm_instances.fetch_sub(1, Ordering::Relaxed);
    Some(warm.swap_remove(index))
}

fn keep_warm(
    shared: &Shared,
    prepared: &Prepared,
    store: Store<HostState>,
    task: Task,
    tenant: &str,
    calls: u32,
) {
    let config = &shared.config;
    if calls >= config.max_tasks_per_instance
        || store.data().limiter.current() > config.recycle_memory
    {
        return;
    }
    let kept = shared.warm_instances.fetch_add(1, Ordering::Relaxed);
    if kept >= config.concurrency {
        shared.warm_instances.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let instance = WarmInstance {
        store,
        task,
        tenant: tenant.to_string(),
        calls,
    };
    prepared
        .warm
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(instance);
}

pub(crate) fn classify(step: Step, limits: &Limits, max_wasm_stack: usize) -> Outcome {
    let failure = |kind, message: String| Outcome::Failure { kind, message };
    let time_limit = || {
        failure(
            FailureKind::TimeLimitExceeded,
            format!(
                "time limit exceeded: the task ran longer than its {} time limit",
                format_duration(limits.time.min(MAX_TIME_LIMIT))
            ),
        )
    };
    match step {
        Step::TimedOut => time_limit(),
        Step::Terminated => failure(
            FailureKind::Terminated,
            "terminated: the call was stopped on request".to_string(),
        ),

        Step::BatchOutputTooLarge(size) => failure(
            FailureKind::OutputTooLarge,
            format!(
                "output too large: the batch's outputs up to this item come to {} of JSON, over its {} output limit",
                format_bytes(size),
                format_bytes(limits.output)
            ),
        ),
        Step::Returned(Ok(output)) => {
            if output.len() as u64 > limits.output {
                return failure(
                    FailureKind::OutputTooLarge,
                    format!(
                        "output too large: the task returned {} of JSON, over its {} output limit",
                        format_bytes(output.len() as u64),
                        format_bytes(limits.output)
                    ),
                );
            }
            if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&output) {
                return failure(
                    FailureKind::InvalidOutput,
                    format!("the task returned an output that is not JSON: {error}"),
                );
            }
            Outcome::Success { output }
        }
        Step::Returned(Err(TaskError::Fail(message))) => {
            failure(FailureKind::TaskFailed, truncate(message, MAX_MESSAGE))
        }
        Step::Returned(Err(TaskError::InvalidArgs(message))) => {
            failure(FailureKind::InvalidArgs, truncate(message, MAX_MESSAGE))
        }
        Step::Returned(Err(TaskError::Retry(request))) => Outcome::Retry {
            message: truncate(request.message, MAX_MESSAGE),
            countdown: request.countdown_ms.map(Duration::from_millis),
        },
        Step::Trapped(error) => {
            if error.downcast_ref::<TimeLimitExceeded>().is_some() {
                return time_limit();
            }
            if let Some(exceeded) = error.downcast_ref::<MemoryLimitExceeded>() {
                return failure(
                    FailureKind::MemoryLimitExceeded,
                    format!(
                        "memory limit exceeded: the task asked for {} of linear memory and tables, over its {} memory limit",
                        format_bytes(exceeded.requested),
                        format_bytes(exceeded.limit)
                    ),
                );
            }
            match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => failure(
                    FailureKind::OutOfFuel,
                    format!(
                        "out of fuel: the task used up its budget of {} fuel",
                        limits.fuel.unwrap_or(0)
                    ),
                ),
                Some(Trap::StackOverflow) => failure(
                    FailureKind::StackOverflow,
                    format!(
                        "stack overflow: the task recursed past the {} wasm stack",
                        format_bytes(max_wasm_stack as u64)
                    ),
                ),
                Some(Trap::Interrupt) => time_limit(),
                Some(trap) => failure(FailureKind::Trap, format!("the task trapped: {trap}")),
                None => failure(FailureKind::Trap, format!("the task trapped: {error:#}")),
            }
        }
    }
}

/// A store for one instance of `prepared`, armed with its fuel budget and deadline.
pub(crate) fn new_store(
    prepared: &Prepared,
    state: HostState,
    fuel: Option<u64>,
    deadline: Instant,
) -> Result<Store<HostState>, Error> {
    let mut store = Store::new(&prepared.runtime.engine, state);
    store.limiter(|state| &mut state.limiter);
    arm(&mut store, fuel, deadline)?;
    Ok(store)
}

/// Sets a store's fuel budget and wall-clock deadline for its next call.
fn arm(store: &mut Store<HostState>, fuel: Option<u64>, deadline: Instant) -> Result<(), Error> {
    if let Some(budget) = fuel {
        store
            .set_fuel(budget)
            .map_err(|error| Error::Instantiate(format!("{error:#}")))?;
    }
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(TimeLimitExceeded.into())
        } else {
            // Yield at every tick: other calls on this thread get a turn, and the timeout
            // around the call gets a chance to fire.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    Ok(())
}

impl CallReport {
    /// A report for a call decided before reaching the guest.
    fn early(outcome: Outcome, started: Instant) -> CallReport {
        CallReport {
            outcome,
            duration: started.elapsed(),
            cpu: None,
            fuel: None,
            peak_memory: 0,
            log: String::new(),
            progress: None,
            reused_instance: false,
        }
    }
}

/// `call`, adding the CPU time its thread spends in each poll to `cpu` (left alone when the
/// platform has no per-thread CPU clock). Measured per poll because the future may move
/// between threads; time the thread spends on other tasks between polls is not counted.
fn cpu_timed<'a, F: Future + 'a>(
    call: F,
    cpu: &'a mut Option<Duration>,
) -> impl Future<Output = F::Output> + 'a {
    let mut call = Box::pin(call);
    std::future::poll_fn(move |context| {
        let before = thread_cpu_time();
        let polled = call.as_mut().poll(context);
        if let (Some(total), Some(before), Some(after)) = (cpu.as_mut(), before, thread_cpu_time())
        {
            *total += after.saturating_sub(before);
        }
        polled
    })
}

/// CPU time the calling thread has used, where the platform measures it per thread.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
