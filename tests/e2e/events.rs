//! `wtq events --json` as a process against a private Redis: a worker comes online, a task
//! retries once and then fails, and the tail prints the whole story in order.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// Kills the tail when the test ends, however it ends.
struct Tail(Child);

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wtq_events_json_shows_a_tasks_retries_and_its_worker() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wtq"))
        .args(["events", "--json", "--url", &cluster.url()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wtq events starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let _tail = Tail(child);
    // The tail says on stderr when it is live (the log is on and its reader placed): only then
    // does the worker start, so its worker-online is logged and seen.
    let mut stderr = BufReader::new(stderr);
    let mut first = String::new();
    stderr.read_line(&mut first).expect("stderr line");
    assert!(first.contains("tailing events"), "{first}");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });

    cluster.worker("w1", &[]);
    let run = cluster.cmd(&[
        "call",
        "chaos.fail",
        "[\"flaky\"]",
        "--max-retries",
        "1",
        "--retry-backoff",
        "100ms",
        "--no-retry-jitter",
        "--wait",
        "--json",
        "--timeout",
        "20s",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let id = run.json()["id"].as_str().expect("task id").to_string();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut events: Vec<serde_json::Value> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no task-failed for {id}; saw {events:#?}"));
        let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON per line");
        let done = event["type"] == "task-failed" && event["id"] == id.as_str();
        events.push(event);
        if done {
            break;
        }
    }
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "worker-online" && e["worker"] == "w1"),
        "{events:#?}"
    );
    let story: Vec<&serde_json::Value> = events.iter().filter(|e| e["id"] == id.as_str()).collect();
    let kinds: Vec<&str> = story
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        // A call this short ends before the worker's first STARTED write (100 ms).
        .filter(|kind| *kind != "task-started")
        .collect();
    assert_eq!(
        kinds,
        [
            "task-sent",
            "task-received",
            "task-retried",
            "task-received",
            "task-failed"
        ],
        "{story:#?}"
    );
    for event in &story {
        assert_eq!(event["task"], "chaos.fail", "{event}");
        assert!(event["state"].is_string(), "{event}");
    }
    let retried = story[2];
    assert_eq!(retried["attempt"], 1, "{retried}");
    assert_eq!(retried["worker"], "w1", "{retried}");
    assert!(retried["fuel"].as_u64().is_some(), "{retried}");
    assert!(retried["runtime_ms"].as_f64().is_some(), "{retried}");
    assert!(retried["digest"].as_str().is_some(), "{retried}");
    let failed = story[story.len() - 1];
    assert_eq!(failed["attempt"], 2, "{failed}");
    assert_eq!(failed["error"]["kind"], "task_failed", "{failed}");
}
