//! A worker's side of `wtq inspect` and `wtq control`: it hears every request broadcast to
//! its namespace, acts on those addressed to it (or to every worker), and replies. A
//! multi-tenant worker listens on its root namespace and answers for all its tenants' lanes;
//! what belongs to one tenant's namespace (its registry, its delayed tasks) it does not list.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use wtq_client::broker::control::{Command, ControlReply, ReplyOutcome};
use wtq_client::broker::{Broker, Control};

use super::autoscale::{Bounds, process_cpu_time};
use super::{Held, Lane, MAX_BACKOFF, Process, Stage, advance};

/// Longest arguments shown by `inspect active`/`reserved`; longer ones are cut.
const MAX_ARGS_SHOWN: usize = 1024;

/// What a listener answers for.
pub(super) enum Scope<B> {
    /// A single-namespace worker's one lane.
    One(Arc<Lane<B>>),
    /// A multi-tenant worker: the lanes it serves now (kept current by `run_tenants`).
    Tenants(Arc<Mutex<Vec<Arc<Lane<B>>>>>),
}

impl<B> Scope<B> {
    fn lanes(&self) -> Vec<Arc<Lane<B>>> {
        match self {
            Scope::One(lane) => vec![lane.clone()],
            Scope::Tenants(lanes) => lanes.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

/// Answers the control requests broadcast on `broker`'s namespace until aborted.
pub(super) async fn listen<B: Broker + Control + Clone>(
    process: Arc<Process>,
    broker: B,
    scope: Scope<B>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut requests = match broker.control_requests().await {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for control requests; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let name = &process.config.name;
        while let Some(request) = requests.recv().await {
            if !request.is_for(name) {
                continue;
            }
            tracing::info!(request = %request.id, command = ?request.command, "control request");
            let outcome = match answer(&process, &scope, &request.command).await {
                Ok(value) => ReplyOutcome::Ok(value),
                Err(message) => ReplyOutcome::Error(message),
            };
            let reply = ControlReply {
                request: request.id,
                worker: name.clone(),
                outcome,
            };
            if let Err(error) = broker.reply(&reply).await {
                tracing::warn!(%error, "cannot send a control reply");
            }
        }
    }
}

/// Carries out one command; `Err` is the reason it could not, for the reply.
async fn answer<B: Broker + Control + Clone>(
    process: &Process,
    scope: &Scope<B>,
    command: &Command,
) -> Result<Value, String> {
    let per_tenant = |what: &str| {
        format!(
            "{what} is per tenant and this worker serves every tenant (--tenants): read it with the tenant's own URL"
        )
    };
    match command {
        Command::Ping => Ok(json!("pong")),
        Command::Active => Ok(held(&scope.lanes(), true)),
        Command::Reserved => Ok(held(&scope.lanes(), false)),
        Command::Scheduled => match scope {
            Scope::One(lane) => scheduled(lane).await,
            Scope::Tenants(_) => Err(per_tenant("scheduled")),
        },
        Command::Stats => Ok(stats(process, scope)),
        Command::Registered => match scope {
            Scope::One(lane) => registered(lane).await,
            Scope::Tenants(_) => Err(per_tenant("registered")),
        },
        Command::Shutdown => {
            advance(&process.stop, Stage::Warm);
            Ok(json!({"shutdown": "warm"}))
        }
        Command::PoolGrow { n } => resize(process, process.pool.size().saturating_add(*n)),
        Command::PoolShrink { n } => {
            let size = process.pool.size();
            if *n >= size {
                return Err(format!(
                    "pool-shrink {n}: the pool has {size} slots and keeps at least 1"
                ));
            }
            resize(process, size - n)
        }
        Command::Autoscale { .. } if matches!(scope, Scope::Tenants(_)) => Err(
            "autoscale is not available on a --tenants worker yet; use pool-grow/pool-shrink"
                .to_string(),
        ),
        Command::Autoscale { max, min } => {
            let bounds = Bounds::new(*max, *min).ok_or_else(|| {
                format!("autoscale {max},{min}: use MAX,MIN with 1 <= MIN <= MAX")
            })?;
            let limit = process.pool.limit();
            if bounds.max > limit {
                return Err(format!(
                    "autoscale {bounds}: this worker has room for at most {limit} slots (start it with a higher --max-concurrency)"
                ));
            }
            *process
                .autoscale
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(bounds);
            Ok(json!({"autoscale": {"max": bounds.max, "min": bounds.min}}))
        }
        Command::AddConsumer { queue } => {
            if !wtq_client::registry::valid_name(queue) {
                return Err(format!(
                    "queue `{queue}`: use 1 to 128 ASCII letters, digits, `_` or `-`"
                ));
            }
            let mut queues = process
                .queues
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if !queues.contains(queue) {
                queues.push(queue.clone());
            }
            Ok(json!({"queues": *queues}))
        }
        Command::CancelConsumer { queue } => {
            let mut queues = process
                .queues
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if !queues.contains(queue) {
                return Err(format!(
                    "cancel-consumer {queue}: this worker does not consume it (it consumes {})",
                    queues.join(", ")
                ));
            }
            if queues.len() == 1 {
                return Err(format!(
                    "cancel-consumer {queue}: it is this worker's only queue; add another first, or shut the worker down"
                ));
            }
            queues.retain(|q| q != queue);
            Ok(json!({"queues": *queues}))
        }
        Command::PoliciesChanged => {
            for lane in scope.lanes() {
                lane.policies.changed();
            }
            Ok(json!("ok"))
        }
    }
}

/// Resizes the pool. With the autoscaler on, its bounds widen to the new size (as Celery's
/// `force_scale_up`/`down` do), or it would undo the resize within a second.
fn resize(process: &Process, target: usize) -> Result<Value, String> {
    let mut autoscale = process
        .autoscale
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let from = process.pool.size();
    let size = process
        .pool
        .resize(target)
        .map_err(|error| error.to_string())?;
    tracing::info!(from, to = size, "pool resized on request");
    match autoscale.as_mut() {
        Some(bounds) => {
            bounds.max = bounds.max.max(size);
            bounds.min = bounds.min.min(size);
            Ok(json!({
                "concurrency": size,
                "autoscale": {"max": bounds.max, "min": bounds.min},
            }))
        }
        None => Ok(json!({"concurrency": size})),
    }
}

/// The held deliveries that have started (`active`) or not (`reserved`), oldest first; with
/// their tenant on a multi-tenant worker.
fn held<B>(lanes: &[Arc<Lane<B>>], started: bool) -> Value {
    let guards: Vec<_> = lanes
        .iter()
        .map(|lane| {
            (
                lane.tenant.as_str(),
                lane.held.lock().unwrap_or_else(PoisonError::into_inner),
            )
        })
        .collect();
    let mut tasks: Vec<(&str, &String, &Held)> = guards
        .iter()
        .flat_map(|(tenant, held)| held.iter().map(move |(id, held)| (*tenant, id, held)))
        .filter(|(_, _, held)| held.started_ms.is_some() == started)
        .collect();
    tasks.sort_by_key(|(_, _, held)| (held.started_ms, held.delivery.received_ms));
    let tasks: Vec<Value> = tasks
        .into_iter()
        .map(|(tenant, id, held)| {
            let delivery = &held.delivery;
            // An undecodable message is dead-lettered at once; it shows without a task.
            let (task, mut args) = match &delivery.message {
                Ok(message) => (
                    format!("{}.{}", message.component, message.task),
                    message.args.clone(),
                ),
                Err(_) => (String::new(), String::new()),
            };
            if args.len() > MAX_ARGS_SHOWN {
                let mut cut = MAX_ARGS_SHOWN;
                while !args.is_char_boundary(cut) {
                    cut -= 1;
                }
                args.truncate(cut);
                args.push('…');
            }
            let mut task = json!({
                "id": id,
                "task": task,
                "args": args,
                "attempt": delivery.attempt,
                "received_ms": delivery.received_ms,
                "started_ms": held.started_ms,
            });
            if !tenant.is_empty() {
                task["tenant"] = json!(tenant);
            }
            task
        })
        .collect();
    Value::Array(tasks)
}

fn stats<B>(process: &Process, scope: &Scope<B>) -> Value {
    let summary = process.counts.summary();
    let autoscale = *process
        .autoscale
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let lanes = scope.lanes();
    let running: usize = lanes
        .iter()
        .map(|lane| {
            let held = lane.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.values()
                .filter(|held| held.started_ms.is_some())
                .count()
        })
        .sum();
    let reserved: usize = lanes.iter().map(|lane| lane.waiting()).sum();
    let tenants = match scope {
        Scope::One(_) => None,
        Scope::Tenants(_) => Some(lanes.len()),
    };
    json!({
        "name": process.config.name,
        "pid": std::process::id(),
        "uptime_s": process.started.elapsed().as_secs(),
        "queues": process.queues(),
        "pool": {
            "concurrency": process.pool.size(),
            "busy": process.pool.busy(),
            "max_concurrency": process.pool.limit(),
            "autoscale": autoscale.map(|bounds| json!({"max": bounds.max, "min": bounds.min})),
            "prefetch_multiplier": process.config.prefetch_multiplier,
        },
        "running": running,
        "reserved": reserved,
        "tenants": tenants,
        "total": {
            "succeeded": summary.succeeded,
            "failed": summary.failed,
            "retried": summary.retried,
            "revoked": summary.revoked,
            "handed_back": summary.released,
        },
        "cpu_s": process_cpu_time().map(|used| used.as_secs_f64()),
        "shutting_down": *process.stop.borrow() > Stage::Running,
    })
}

/// Most delayed messages listed per queue by `inspect scheduled`.
const MAX_SCHEDULED_SHOWN: usize = 100;

/// The messages waiting in the delayed sets of the worker's queues, soonest first per queue.
async fn scheduled<B: Broker + Control>(lane: &Lane<B>) -> Result<Value, String> {
    let mut tasks = Vec::new();
    for queue in lane.process.queues() {
        let delayed = lane
            .broker
            .delayed(&queue, MAX_SCHEDULED_SHOWN)
            .await
            .map_err(|error| format!("cannot read queue `{queue}`'s delayed set: {error}"))?;
        for (id, due_ms) in delayed {
            // Gone meanwhile (revoked, expired): not scheduled any more.
            let Ok(Some(record)) = lane.broker.record(&id).await else {
                continue;
            };
            let message = &record.message;
            tasks.push(json!({
                "id": id,
                "task": format!("{}.{}", message.component, message.task),
                "args": message.args,
                "queue": queue,
                "eta_ms": due_ms,
                "attempt": record.attempts.len() + 1,
            }));
        }
    }
    Ok(Value::Array(tasks))
}

/// Every task this worker can run (the registry's current versions), with the run-time
/// limits operators set.
async fn registered<B: Broker>(lane: &Lane<B>) -> Result<Value, String> {
    let components = lane
        .broker
        .components()
        .await
        .map_err(|error| format!("cannot read the registry: {error}"))?;
    let policies = lane
        .broker
        .task_policies()
        .await
        .map_err(|error| format!("cannot read task policies: {error}"))?;
    let mut tasks = Vec::new();
    for component in &components {
        let Some(current) = component.current() else {
            continue;
        };
        for task in &current.tasks {
            let address = format!("{}.{}", component.name, task.name);
            let policy = policies.get(&address);
            tasks.push(json!({
                "task": address,
                "params": task.params,
                "rate_limit": policy.and_then(|p| p.rate_limit).map(|rate| rate.to_string()),
                "time_limit_ms": policy.and_then(|p| p.time_limit_ms),
            }));
        }
    }
    Ok(Value::Array(tasks))
}
