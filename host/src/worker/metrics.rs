//! The worker's Prometheus metrics and the `/metrics` endpoint that serves them
//! (`wtq worker --metrics ADDR`). Counting happens where the events happen (execution, settler,
//! reaper, component loads) with atomics only; tasks by final state are the worker's own
//! [`Counts`](super::Counts), not a second tally. Queue depth is read from the broker at scrape
//! time, so it is as fresh as the scrape and costs nothing between scrapes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wtq_client::broker::{Broker, Tenancy};
use wtq_client::tenancy::namespace_of;

use super::Process;
use crate::metrics::{BYTES, Counter, FUEL, Histogram, Kind, SECONDS, Text};
use crate::sandbox::{CallReport, CompileSource};

/// Longest a scrape waits for the broker's queue depths; past it, the depths are left out of
/// that scrape rather than holding the scraper (whose own timeout is typically 10 s).
const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the worker measures beside its [`Counts`](super::Counts).
pub(super) struct WorkerMetrics {
    runtime: Histogram,
    fuel: Histogram,
    memory: Histogram,
    queue_wait: Histogram,
    reclaimed: Counter,
    pub(super) dead_letters: Counter,
    recycles: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
}

impl WorkerMetrics {
    pub(super) fn new() -> WorkerMetrics {
        WorkerMetrics {
            runtime: Histogram::new(SECONDS),
            fuel: Histogram::new(FUEL),
            memory: Histogram::new(BYTES),
            queue_wait: Histogram::new(SECONDS),
            reclaimed: Counter::default(),
            dead_letters: Counter::default(),
            recycles: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        }
    }

    /// An attempt ran in the sandbox (whatever its outcome).
    pub(super) fn finished(&self, report: &CallReport) {
        self.runtime.observe(report.duration.as_secs_f64());
        if let Some(fuel) = report.fuel {
            self.fuel.observe(fuel as f64);
        }
        self.memory.observe(report.peak_memory as f64);
        if report.reused_instance {
            self.recycles.inc();
        }
    }

    /// A task started `wait_ms` after it was enqueued or became due.
    pub(super) fn started(&self, wait_ms: u64) {
        self.queue_wait.observe(wait_ms as f64 / 1e3);
    }

    pub(super) fn reclaimed(&self, leases: u64) {
        self.reclaimed.add(leases);
    }

    /// A component was loaded: from the artifact cache (a hit) or compiled (a miss).
    pub(super) fn loaded(&self, source: &CompileSource) {
        match source {
            CompileSource::Cached => self.cache_hits.inc(),
            CompileSource::Compiled | CompileSource::Recompiled => self.cache_misses.inc(),
        }
    }
}

/// Where a scrape reads queue depths: one namespace, or every tenant's.
pub(super) enum Depths<B> {
    One(B),
    Tenants(B),
}

/// One queue's depth: (tenant, queue, ready messages). The tenant is `None` outside the hosted
/// service, and then not shown as a label.
type Depth = (Option<String>, String, usize);

impl<B: Broker + Tenancy + Clone> Depths<B> {
    async fn read(&self, queues: &[String]) -> Vec<Depth> {
        let mut depths = Vec::new();
        match self {
            Depths::One(broker) => read_into(&mut depths, broker, None, queues).await,
            Depths::Tenants(root) => {
                let tenants = match root.tenants().await {
                    Ok(tenants) => tenants,
                    Err(error) => {
                        tracing::warn!(%error, "metrics: cannot list tenants for queue depths");
                        return depths;
                    }
                };
                for tenant in tenants {
                    match root.namespaced(&namespace_of(&tenant.name)) {
                        Ok(broker) => {
                            read_into(&mut depths, &broker, Some(&tenant.name), queues).await
                        }
                        Err(error) => {
                            tracing::warn!(tenant = %tenant.name, %error, "metrics: cannot read queue depths")
                        }
                    }
                }
            }
        }
        depths
    }
}

async fn read_into<B: Broker>(
    depths: &mut Vec<Depth>,
    broker: &B,
    tenant: Option<&str>,
    queues: &[String],
) {
    for queue in queues {
        match broker.depth(queue).await {
            Ok(depth) => depths.push((tenant.map(str::to_string), queue.clone(), depth)),
            Err(error) => tracing::warn!(%queue, %error, "metrics: cannot read queue depth"),
        }
    }
}

struct Scrape<B> {
    process: Arc<Process>,
    depths: Depths<B>,
}

/// Serves `GET /metrics` on `listener` (on the calling runtime: the worker's I/O runtime)
/// until the returned handle is aborted.
pub(super) fn serve<B>(
    listener: TcpListener,
    process: Arc<Process>,
    depths: Depths<B>,
) -> JoinHandle<()>
where
    B: Broker + Tenancy + Clone,
{
    let state = Arc::new(Scrape { process, depths });
    let router = axum::Router::new()
        .route("/metrics", get(scrape::<B>))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    })
}

async fn scrape<B: Broker + Tenancy + Clone>(
    State(scrape): State<Arc<Scrape<B>>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let queues = scrape.process.queues();
    let depths = tokio::time::timeout(DEPTH_TIMEOUT, scrape.depths.read(&queues))
        .await
        .unwrap_or_else(|_| {
            tracing::warn!("metrics: the broker did not answer for queue depths in time");
            Vec::new()
        });
    let body = render(&scrape.process, &depths);
    ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}

/// The exposition of everything the worker measures.
fn render(process: &Process, depths: &[Depth]) -> String {
    let summary = process.counts.summary();
    let metrics = &process.metrics;
    let mut text = Text::new();
    text.family(
        "wtq_tasks_total",
        Kind::Counter,
        "Task attempts this worker settled, by final state of the attempt (retry: another attempt follows; released: handed back; stale: refused as the lease was taken over).",
    );
    for (state, value) in [
        ("success", summary.succeeded),
        ("failure", summary.failed),
        ("retry", summary.retried),
        ("revoked", summary.revoked),
        ("released", summary.released),
        ("stale", summary.stale),
        ("unsettled", summary.unsettled),
    ] {
        text.sample("wtq_tasks_total", &[("state", state)], value as f64);
    }
    let histograms = [
        (
            "wtq_task_runtime_seconds",
            "Wall time of attempts run in the sandbox (instantiate and call).",
            &metrics.runtime,
        ),
        (
            "wtq_task_fuel",
            "Fuel consumed by metered attempts.",
            &metrics.fuel,
        ),
        (
            "wtq_task_memory_peak_bytes",
            "Highest linear memory plus tables of an attempt's instance.",
            &metrics.memory,
        ),
        (
            "wtq_task_queue_wait_seconds",
            "Time from enqueued (or due, with a countdown or ETA) to started.",
            &metrics.queue_wait,
        ),
    ];
    for (name, help, histogram) in histograms {
        text.family(name, Kind::Histogram, help)
            .histogram(name, &[], histogram);
    }
    let counters = [
        (
            "wtq_leases_reclaimed_total",
            "Expired leases (of any worker) this worker's reaper returned to their queues.",
            &metrics.reclaimed,
        ),
        (
            "wtq_dead_letters_total",
            "Messages this worker dead-lettered (undecodable).",
            &metrics.dead_letters,
        ),
        (
            "wtq_instance_recycles_total",
            "Attempts that ran in a warm (reused) instance.",
            &metrics.recycles,
        ),
    ];
    for (name, help, counter) in counters {
        text.family(name, Kind::Counter, help)
            .sample(name, &[], counter.get() as f64);
    }
    text.family(
        "wtq_compile_cache_total",
        Kind::Counter,
        "Component loads by whether the compiled artifact came from the cache (hit) or was compiled (miss).",
    )
    .sample(
        "wtq_compile_cache_total",
        &[("result", "hit")],
        metrics.cache_hits.get() as f64,
    )
    .sample(
        "wtq_compile_cache_total",
        &[("result", "miss")],
        metrics.cache_misses.get() as f64,
    );
    text.family(
        "wtq_worker_concurrency",
        Kind::Gauge,
        "Slots in the worker's pool (changed by the autoscaler and control pool-grow/shrink).",
    )
    .sample("wtq_worker_concurrency", &[], process.pool.size() as f64);
    text.family(
        "wtq_worker_busy_slots",
        Kind::Gauge,
        "Slots running a call right now.",
    )
    .sample("wtq_worker_busy_slots", &[], process.pool.busy() as f64);
    text.family(
        "wtq_queue_depth",
        Kind::Gauge,
        "Messages ready in each consumed queue, read from the broker at scrape time.",
    );
    for (tenant, queue, depth) in depths {
        match tenant {
            Some(tenant) => text.sample(
                "wtq_queue_depth",
                &[("tenant", tenant), ("queue", queue)],
                *depth as f64,
            ),
            None => text.sample("wtq_queue_depth", &[("queue", queue)], *depth as f64),
        };
    }
    text.finish()
}
