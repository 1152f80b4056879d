//! `wtq bench queue`: enqueue N `math.add` tasks, drain them with one worker process (a fresh
//! sandbox instance, a lease and a stored result per task), then measure single round trips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wtq_client::broker::Broker;
use wtq_client::message::State;
use wtq_client::{AnyBroker, Client};

use super::{Failure, exit, say};
use crate::units::format_duration;

/// Tasks per enqueue call.
const ENQUEUE_BATCH: usize = 1000;

pub fn run(
    component: PathBuf,
    tasks: u32,
    round_trips: u32,
    concurrency: Option<u32>,
    url: &str,
) -> Result<u8, Failure> {
    let (url, namespace, runtime) = fresh_namespace(url)?;
    runtime.block_on(async {
        let broker = deploy_math(&url, &component).await?;
        let client = Client::with_broker(broker.clone());
        say(format!(
            "wtq bench queue: {tasks} math.add tasks in namespace {namespace}, one worker process"
        ));

        let template = client
            .call("math.add")
            .args(json!([20, 22]))
            .result_expires(Duration::from_secs(600))
            .prepare()
            .await
            .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
        let mut ids = Vec::with_capacity(tasks as usize);
        let started = Instant::now();
        let mut remaining = tasks as usize;
        while remaining > 0 {
            let batch: Vec<_> = (0..remaining.min(ENQUEUE_BATCH))
                .map(|_| {
                    let mut task = template.clone();
                    task.message.id = uuid::Uuid::new_v4().to_string();
                    ids.push(task.message.id.clone());
                    task
                })
                .collect();
            remaining -= batch.len();
            client
                .enqueue(batch)
                .await
                .map_err(|error| Failure::new(exit::UNAVAILABLE, error.to_string()))?;
        }
        let enqueue_time = started.elapsed();
        say(format!(
            "  enqueue      {:>9.0} tasks/s  ({} in {})",
            tasks as f64 / enqueue_time.as_secs_f64(),
            tasks,
            format_duration(enqueue_time)
        ));

        let mut worker = spawn_worker(&url, concurrency)?;
        let drained = drain(&broker, &ids).await;
        let rss = peak_rss(&worker);
        let latencies = match drained {
            Ok(span) => {
                say(format!(
                    "  end to end   {:>9.0} tasks/s  (first received to last finished: {})",
                    tasks as f64 / span.as_secs_f64(),
                    format_duration(span)
                ));
                round_trip(&client, round_trips).await
            }
            Err(failure) => Err(failure),
        };
        let _ = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status();
        let _ = worker.wait();
        let mut latencies = latencies?;
        latencies.sort();
        let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
        say(format!(
            "  round trip   p50 {}  p99 {}  ({round_trips} sequential calls)",
            format_duration(percentile(50)),
            format_duration(percentile(99))
        ));
        if let Some(rss) = rss {
            say(format!(
                "  worker RSS   {} peak",
                crate::units::format_bytes(rss)
            ));
        }
        Ok(exit::SUCCESS)
    })
}

/// A fresh namespace of `url` for one benchmark, and a runtime to run it on.
pub(super) fn fresh_namespace(
    url: &str,
) -> Result<(String, String, tokio::runtime::Runtime), Failure> {
    let namespace = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}namespace={namespace}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            Failure::new(
                exit::INTERNAL,
                format!("starting the async runtime: {error}"),
            )
        })?;
    Ok((url, namespace, runtime))
}

/// Connects to `url` and deploys the math example from `component` as `math`.
pub(super) async fn deploy_math(url: &str, component: &PathBuf) -> Result<AnyBroker, Failure> {
    let wasm = std::fs::read(component).map_err(|error| {
        Failure::new(
            exit::INVALID_COMPONENT,
            format!(
                "cannot read `{}`: {error}; build the examples first (cargo xtask guests)",
                component.display()
            ),
        )
    })?;
    let broker = wtq_client::connect(url)
        .await
        .map_err(super::queue::broker_failure)?;
    let sandbox = super::serve::validation_sandbox()?;
    crate::registry::deploy(
        &broker,
        &sandbox,
        "math",
        wasm,
        crate::registry::DEFAULT_MAX_UPLOAD,
    )
    .await
    .map_err(|error| Failure::new(exit::INVALID_COMPONENT, error.to_string()))?;
    Ok(broker)
}

pub(super) fn spawn_worker(url: &str, concurrency: Option<u32>) -> Result<Child, Failure> {
    let exe =
        std::env::current_exe().map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
    let mut command = Command::new(exe);
    // Through the environment, not argv: a password in the URL would show in `ps`.
    command
        .env("WTQ_URL", url)
        .args(["worker", "-n", "bench", "--prefetch-multiplier", "64"]);
    if let Some(concurrency) = concurrency {
        command.args(["-c", &concurrency.to_string()]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| Failure::new(exit::INTERNAL, format!("starting the worker: {error}")))
}

/// Waits for every task; returns the span from the first delivery to the last result.
pub(super) async fn drain(broker: &AnyBroker, ids: &[String]) -> Result<Duration, Failure> {
    let mut first_received = u64::MAX;
    let mut last_finished = 0;
    for id in ids {
        let record = broker
            .wait(id, Duration::from_secs(300))
            .await
            .map_err(|error| Failure::new(exit::UNAVAILABLE, error.to_string()))?;
        let record =
            record.ok_or_else(|| Failure::new(exit::INTERNAL, format!("task {id} vanished")))?;
        if record.state != State::Success {
            return Err(Failure::new(
                exit::INTERNAL,
                format!("task {id} ended {}: {:?}", record.state, record.error),
            ));
        }
        if let Some(attempt) = record.attempts.last() {
            first_received = first_received.min(attempt.received_ms);
            last_finished = last_finished.max(attempt.finished_ms);
        }
    }
    Ok(Duration::from_millis(
        last_finished.saturating_sub(first_received).max(1),
    ))
}

async fn round_trip(client: &Client<AnyBroker>, count: u32) -> Result<Vec<Duration>, Failure> {
    let mut latencies = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let started = Instant::now();
        let result = client
            .call("math.add")
            .args(json!([1, 2]))
            .send()
            .await
            .map_err(|error| Failure::new(exit::UNAVAILABLE, error.to_string()))?;
        result
            .get(Duration::from_secs(30))
            .await
            .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// The process's peak resident set (VmHWM), from /proc.
fn peak_rss(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
