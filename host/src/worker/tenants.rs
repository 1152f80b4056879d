//! The multi-tenant worker ([`run_tenants`]): one fair lane per tenant of the registry, kept in
//! step with it. A new tenant is served within one refresh; a removed one stops fetching and
//! its running calls finish (drained warmly) before its lane goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wtq_client::broker::{Broker, Control, Tenancy};
use wtq_client::tenancy::{Tenant, namespace_of};

use super::control::{self, Scope};
use super::metrics::{self, Depths};
use super::{Lane, Parts, Process, Stage, Summary, WorkerConfig, fetch, reached, shut_down};
use crate::sandbox::Sandbox;

/// How often the tenant registry is read again: a new tenant is served within this time.
const TENANT_REFRESH: Duration = Duration::from_secs(2);
/// Most compute threads per CPU [`compute_threads`] suggests.
const MAX_THREADS_PER_CPU: usize = 8;

/// Threads for the compute runtime of [`run_tenants`]: one per slot (at least one per CPU, at
/// most [`MAX_THREADS_PER_CPU`] per CPU). A runtime thread polls a newly started call only
/// between a running guest's epoch slices, and only every few of them; with a thread per slot
/// a tenant's call starts on an idle thread at once instead of queueing behind another
/// tenant's CPU-bound calls, and the OS shares the CPUs among them.
pub fn compute_threads(concurrency: usize, cpus: usize) -> usize {
    let cpus = cpus.max(1);
    concurrency.clamp(cpus, cpus * MAX_THREADS_PER_CPU)
}

/// A lane serving one tenant, with its fetch loop.
struct Served<B> {
    lane: Arc<Lane<B>>,
    parts: Parts,
    /// Set to stop the fetch loop.
    stop: watch::Sender<bool>,
    fetching: JoinHandle<()>,
}

/// Runs a worker over every tenant in `root`'s tenant registry (each in its own namespace)
/// until `stop` reaches [`Stage::Warm`], then shuts down in stages. `config.concurrency` slots are shared by
/// all tenants, handed out in turn; each tenant's cap is enforced by the broker at reserve.
/// With `metrics`, it also serves Prometheus `GET /metrics` there (queue depths per tenant)
/// until it has shut down.
pub async fn run_tenants<B>(
    config: WorkerConfig,
    root: B,
    sandbox: Sandbox,
    compute: tokio::runtime::Handle,
    metrics: Option<tokio::net::TcpListener>,
    stop: watch::Sender<Stage>,
) -> Summary
where
    B: Broker + Tenancy + Control + Clone,
{
    let process = Process::new(config, compute, true, stop);
    let shutdown = reached(process.stop.subscribe(), Stage::Warm);
    let endpoint = metrics
        .map(|listener| metrics::serve(listener, process.clone(), Depths::Tenants(root.clone())));
    tracing::info!(
        worker = %process.config.name,
        queues = ?process.config.queues,
        concurrency = process.config.concurrency,
        "worker started for every tenant"
    );
    let mut serving: HashMap<String, Served<B>> = HashMap::new();
    let mut draining: Vec<Served<B>> = Vec::new();
    // Control requests come on the root namespace; they are answered for every lane.
    let lanes: Arc<Mutex<Vec<Arc<Lane<B>>>>> = Arc::default();
    let controller = tokio::spawn(control::listen(
        process.clone(),
        root.clone(),
        Scope::Tenants(lanes.clone()),
    ));
    tokio::pin!(shutdown);
    let mut refresh = tokio::time::interval(TENANT_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let listed = tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = refresh.tick() => tokio::select! {
                biased;
                () = &mut shutdown => break,
                listed = root.tenants() => listed,
            },
        };
        match listed {
            Ok(tenants) => follow(
                &process,
                &root,
                &sandbox,
                &tenants,
                &mut serving,
                &mut draining,
            ),
            Err(error) => tracing::warn!(%error, "cannot read the tenant registry; will retry"),
        }
        draining.retain(|served| {
            let done = served.fetching.is_finished() && served.lane.held_count() == 0;
            if done {
                served.parts.abort();
                tracing::info!(tenant = %served.lane.tenant, "removed tenant drained");
            }
            !done
        });
        *lanes.lock().unwrap_or_else(PoisonError::into_inner) = serving
            .values()
            .chain(&draining)
            .map(|served| served.lane.clone())
            .collect();
    }

    let mut all: Vec<Served<B>> = serving.into_values().chain(draining).collect();
    for served in &all {
        served.stop.send_replace(true);
    }
    for served in &mut all {
        // A fetch loop returns as soon as it sees the stop; one that panicked has nothing
        // left to hand back.
        let _ = (&mut served.fetching).await;
    }
    let lanes: Vec<Arc<Lane<B>>> = all.iter().map(|served| served.lane.clone()).collect();
    shut_down(&process, &lanes).await;
    for served in all {
        served.parts.abort();
    }
    controller.abort();
    if let Some(endpoint) = endpoint {
        endpoint.abort();
    }
    process.finish()
}

/// Starts a lane for every listed tenant not yet served, and stops fetching for served
/// tenants no longer listed (their lanes move to `draining`).
fn follow<B: Broker + Tenancy + Clone>(
    process: &Arc<Process>,
    root: &B,
    sandbox: &Sandbox,
    tenants: &[Tenant],
    serving: &mut HashMap<String, Served<B>>,
    draining: &mut Vec<Served<B>>,
) {
    for tenant in tenants {
        if serving.contains_key(&tenant.name) {
            continue;
        }
        let broker = match root.namespaced(&namespace_of(&tenant.name)) {
            Ok(broker) => broker,
            Err(error) => {
                tracing::warn!(tenant = %tenant.name, %error, "cannot serve tenant");
                continue;
            }
        };
        tracing::info!(tenant = %tenant.name, "serving tenant");
        let served = serve(process, broker, tenant.name.clone(), sandbox.clone());
        serving.insert(tenant.name.clone(), served);
    }
    let gone: Vec<String> = serving
        .keys()
        .filter(|name| !tenants.iter().any(|tenant| &tenant.name == *name))
        .cloned()
        .collect();
    for name in gone {
        if let Some(served) = serving.remove(&name) {
            tracing::info!(tenant = %name, "tenant removed; finishing its running tasks");
            served.stop.send_replace(true);
            draining.push(served);
        }
    }
}

/// A lane for `tenant` with its fetch loop running until its stop is set.
fn serve<B: Broker + Clone>(
    process: &Arc<Process>,
    broker: B,
    tenant: String,
    sandbox: Sandbox,
) -> Served<B> {
    let (lane, parts) = Lane::start(process, broker, tenant, sandbox);
    let (stop, mut stopped) = watch::channel(false);
    let fetching = tokio::spawn({
        let lane = lane.clone();
        async move {
            // Also resolves if the sender is gone: nobody could stop the loop any more.
            let stop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tokio::pin!(stop);
            fetch(&lane, &mut stop).await;
        }
    });
    Served {
        lane,
        parts,
        stop,
        fetching,
    }
}
