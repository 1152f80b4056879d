//! Throughput of the Redis broker's hot path against a private `redis-server` (started on a
//! free port, killed at the end): enqueue in batches, then reserve + settle in batches, as one
//! worker process would. Prints tasks per second and Redis's own CPU time per task.
//!
//! Run: `cargo run --release -p wtq-client --example redis_bench [TASKS] [BATCH]`

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use wtq_client::broker::redis::RedisBroker;
use wtq_client::broker::{Broker, Delivery, Lease, NewTask, Settle, Settlement};
use wtq_client::message::{Attempt, LimitOverrides, State, TaskMessage, now_ms};

const DEFAULT_TASKS: usize = 200_000;
const DEFAULT_BATCH: usize = 256;
const LEASE_MS: u64 = 60_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_TASKS);
    let batch: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_BATCH);
    let server = redis_server::RedisServer::start();
    let broker = RedisBroker::connect(&server.url(), "bench")
        .await
        .expect("connecting to the private redis-server");
    let queues = vec!["default".to_string()];

    let cpu_before = redis_cpu(&server);
    let started = Instant::now();
    let mut next = 0;
    while next < tasks {
        let n = batch.min(tasks - next);
        let now = now_ms();
        let batch: Vec<NewTask> = (next..next + n)
            .map(|i| NewTask {
                message: message(&format!("task-{i:08}"), now),
                idempotency_key: None,
            })
            .collect();
        broker.enqueue(batch, now).await.expect("enqueue");
        next += n;
    }
    report(
        "enqueue",
        tasks,
        started.elapsed(),
        redis_cpu(&server) - cpu_before,
    );

    let cpu_before = redis_cpu(&server);
    let started = Instant::now();
    let mut done = 0;
    loop {
        let now = now_ms();
        let leased = broker
            .reserve("bench", &queues, batch, LEASE_MS, now)
            .await
            .expect("reserve");
        if leased.is_empty() {
            break;
        }
        done += leased.len();
        broker
            .settle(finish_all(leased), now)
            .await
            .expect("settle");
    }
    assert_eq!(done, tasks);
    report(
        "reserve + settle",
        tasks,
        started.elapsed(),
        redis_cpu(&server) - cpu_before,
    );

    // Steady state: the queue stays short, as when workers keep up with producers.
    server.command(&["CONFIG", "RESETSTAT"]);
    let cpu_before = redis_cpu(&server);
    let started = Instant::now();
    let mut next = 0;
    while next < tasks {
        let n = batch.min(tasks - next);
        let now = now_ms();
        let batch: Vec<NewTask> = (next..next + n)
            .map(|i| NewTask {
                message: message(&format!("steady-{i:08}"), now),
                idempotency_key: None,
            })
            .collect();
        broker.enqueue(batch, now).await.expect("enqueue");
        let leased = broker
            .reserve("bench", &queues, n, LEASE_MS, now)
            .await
            .expect("reserve");
        assert_eq!(leased.len(), n);
        broker
            .settle(finish_all(leased), now)
            .await
            .expect("settle");
        next += n;
    }
    report(
        "steady (all three)",
        tasks,
        started.elapsed(),
        redis_cpu(&server) - cpu_before,
    );
    if std::env::var_os("WTQ_BENCH_STATS").is_some() {
        println!("{}", server.command(&["INFO", "commandstats"]).text());
    }
}

fn finish_all(leased: Vec<Delivery>) -> Vec<Settle> {
    leased
        .into_iter()
        .map(|delivery| Settle {
            settlement: Settlement::Finish(attempt(delivery.attempt, delivery.received_ms)),
            lease: Lease {
                id: delivery.id,
                token: delivery.token,
            },
        })
        .collect()
}

fn report(what: &str, tasks: usize, elapsed: Duration, redis_cpu: f64) {
    println!(
        "{what:>18}: {tasks} tasks in {elapsed:.2?}: {:>9.0} tasks/s; Redis CPU {:.2} µs/task",
        tasks as f64 / elapsed.as_secs_f64(),
        redis_cpu * 1e6 / tasks as f64,
    );
}

/// Seconds of CPU the server used so far (`INFO cpu`: user + sys).
fn redis_cpu(server: &redis_server::RedisServer) -> f64 {
    let info = server.command(&["INFO", "cpu"]).text();
    info.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            matches!(name, "used_cpu_sys" | "used_cpu_user")
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

fn message(id: &str, now: u64) -> TaskMessage {
    TaskMessage {
        id: id.to_string(),
        component: "math".into(),
        digest: None,
        task: "add".into(),
        args: "[1, 2]".into(),
        queue: "default".into(),
        priority: 0,
        eta_ms: None,
        expires_ms: None,
        max_retries: None,
        retry_backoff: None,
        limits: LimitOverrides::default(),
        max_deliveries: 3,
        result_expires_ms: 3_600_000,
        created_ms: now,
        batch: false,
    }
}

fn attempt(number: u32, received_ms: u64) -> Attempt {
    Attempt {
        attempt: number,
        worker: "bench".into(),
        digest: Some("a".repeat(64)),
        received_ms,
        started_ms: Some(received_ms),
        finished_ms: received_ms,
        state: State::Success,
        output: Some("3".into()),
        error: None,
        duration_ms: Some(0.01),
        fuel: Some(1_000),
        cpu_ms: None,
        peak_memory: Some(65_536),
        log: String::new(),
    }
}
