//! Per-task rate limits held by the broker: `wtq deploy --rate-limit add=10/s` holds across
//! three worker processes together (Celery's hold per worker), and other tasks of the same
//! queue are not held back behind the limited backlog.

use std::time::Duration;

use serde_json::json;
use wtq_client::message::{State, TaskRecord, now_ms};

use crate::cluster::{Cluster, all_final, enqueue_many};
use crate::support::guest;

/// The limit under test and the acceptance window: 300 ± 10% starts in 30 s.
const RATE_PER_S: u64 = 10;
const WINDOW_MS: u64 = 30_000;
const TOLERANCE: f64 = 0.10;
/// More calls than the window needs, so the workers stay busy past its end.
const CALLS: usize = 400;

fn started_ms(record: &TaskRecord) -> u64 {
    let attempt = record.attempts.last().expect("a finished attempt");
    attempt.started_ms.unwrap_or(attempt.received_ms)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_holds_across_three_workers() {
    let mut cluster = Cluster::start();
    let math = guest("math");
    let math = math.to_str().expect("utf-8 path");

    // A task the component does not export: one line, nothing deployed.
    let refused = cluster.cmd(&["deploy", math, "--rate-limit", "nope=1/s"]);
    refused.fails_with(5, "no task `nope`; its tasks: add, mul, xsum, fib");
    let listed = cluster.cmd(&["components"]);
    assert!(listed.stdout.contains("no components"), "{}", listed.stdout);
    // The service has no route for limits yet: refused before any upload.
    let hosted = cluster.wtq.command([
        "deploy",
        math,
        "--rate-limit",
        "10/s",
        "--url",
        "http://127.0.0.1:9",
    ]);
    hosted.fails_with(2, "redis:// URL");

    let deployed = cluster.cmd(&["deploy", math, "--rate-limit", "add=10/s"]);
    assert_eq!(deployed.code, 0, "deploy: {}", deployed.stderr);
    assert!(
        deployed
            .stdout
            .contains("math.add: rate limit 10/s, enforced across all workers"),
        "{}",
        deployed.stdout
    );

    for name in ["w1", "w2", "w3"] {
        cluster.worker(name, &["--concurrency", "2"]);
    }
    let client = cluster.client().await;
    // Warm up: the component compiled and cached, so no start waits for a compile.
    let warm = enqueue_many(&client, "math.mul", json!([1, 1]), 30).await;
    all_final(&client, &warm, Duration::from_secs(60)).await;

    let enqueued_ms = now_ms();
    let adds = enqueue_many(&client, "math.add", json!([1, 2]), CALLS).await;
    // Behind the whole limited backlog, in the same queue.
    let muls = enqueue_many(&client, "math.mul", json!([3, 4]), 20).await;

    let muls = all_final(&client, &muls, Duration::from_secs(30)).await;
    let adds = all_final(&client, &adds, Duration::from_secs(90)).await;
    for record in adds.iter().chain(&muls) {
        assert_eq!(record.state, State::Success, "{record:?}");
    }

    let mut starts: Vec<u64> = adds.iter().map(started_ms).collect();
    starts.sort_unstable();
    let first = starts[0];
    let in_window = starts
        .iter()
        .filter(|&&at| at >= first && at < first + WINDOW_MS)
        .count();
    // The busiest second anywhere (booked slots are exact; starts jitter by promotion).
    let busiest = starts
        .iter()
        .map(|&from| {
            starts
                .iter()
                .filter(|&&at| at >= from && at < from + 1000)
                .count()
        })
        .max()
        .unwrap_or(0);
    let workers: std::collections::BTreeSet<&str> = adds
        .iter()
        .filter_map(|record| record.worker.as_deref())
        .collect();
    let expected = RATE_PER_S * WINDOW_MS / 1000;
    eprintln!(
        "rate limit 10/s over 3 workers: {in_window} of {CALLS} started in the first {} s \
         (expected {expected} ± {}%), busiest second {busiest}, workers {workers:?}",
        WINDOW_MS / 1000,
        (TOLERANCE * 100.0) as u32
    );
    let slack = (expected as f64 * TOLERANCE) as usize;
    assert!(
        in_window.abs_diff(expected as usize) <= slack,
        "{in_window} started in {WINDOW_MS} ms, expected {expected} ± {slack}"
    );
    assert!(busiest <= 15, "{busiest} started within one second");
    assert_eq!(workers.len(), 3, "every worker ran some: {workers:?}");

    // The other task ran at once, not after the backlog (which takes about 40 s).
    let last_mul = muls.iter().map(started_ms).max().unwrap_or(0);
    assert!(
        last_mul < enqueued_ms + 10_000,
        "math.mul waited {} ms behind the limited backlog",
        last_mul.saturating_sub(enqueued_ms)
    );
}
