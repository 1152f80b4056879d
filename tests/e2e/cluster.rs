//! A private Redis plus `wtq` processes against it: the test's little cluster.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wtq_client::message::{State, TaskRecord};
use wtq_client::{AnyBroker, Client};

use crate::redis_server::RedisServer;
use crate::support::{Run, Wtq, guest};

/// A Redis server, a compile cache, and helpers to run `wtq` against them.
pub struct Cluster {
    pub redis: RedisServer,
    pub wtq: Wtq,
    workers: Vec<Worker>,
}

/// A `wtq worker` process.
pub struct Worker {
    pub child: Child,
    pub name: String,
}

impl Cluster {
    pub fn start() -> Self {
        Cluster {
            redis: RedisServer::start(),
            wtq: Wtq::new(),
            workers: Vec::new(),
        }
    }

    pub fn durable() -> Self {
        Cluster {
            redis: RedisServer::start_durable(),
            wtq: Wtq::new(),
            workers: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        self.redis.url()
    }

    /// Runs a client command (`deploy`, `call`, ...) against this cluster.
    pub fn cmd(&self, args: &[&str]) -> Run {
        let mut all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        all.push("--url".into());
        all.push(self.url());
        self.wtq.command(all)
    }

    /// `wtq call ARGS…` that must succeed; returns the task id it printed.
    pub fn enqueue(&self, args: &[&str]) -> String {
        let mut call = vec!["call"];
        call.extend_from_slice(args);
        let run = self.cmd(&call);
        assert_eq!(run.code, 0, "wtq call {args:?}: {}", run.stderr);
        run.stdout.trim().to_string()
    }

    /// Deploys a guest example under its own name.
    pub fn deploy(&self, name: &str) -> String {
        let path = guest(name);
        let run = self.cmd(&["deploy", path.to_str().expect("utf-8 path")]);
        assert_eq!(run.code, 0, "deploy {name}: {}", run.stderr);
        let first = run.stdout.lines().next().expect("deploy prints the digest");
        first.split_whitespace().nth(2).expect("digest").to_string()
    }

    /// Starts a worker with extra flags; returns its index.
    pub fn worker(&mut self, name: &str, flags: &[&str]) -> usize {
        let child = Command::new(env!("CARGO_BIN_EXE_wtq"))
            .args(["worker", "--url", &self.redis.url(), "-n", name])
            .args(flags)
            .env("WTQ_CACHE_DIR", self.wtq.cache_dir())
            .env("WTQ_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path(name)).expect("worker log file"))
            .spawn()
            .expect("wtq worker starts");
        self.workers.push(Worker {
            child,
            name: name.to_string(),
        });
        self.workers.len() - 1
    }

    /// Where a worker's stderr goes (a file: a pipe nobody reads could fill and block it).
    fn log_path(&self, name: &str) -> std::path::PathBuf {
        self.wtq.cache_dir().join(format!("worker-{name}.log"))
    }

    pub fn pid(&self, worker: usize) -> String {
        self.workers[worker].child.id().to_string()
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`) to a worker.
    pub fn signal(&self, worker: usize, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid(worker)])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for a worker to exit; returns its exit code and stderr.
    pub fn wait_exit(&mut self, worker: usize, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let child = &mut self.workers[worker].child;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let log = self.log_path(&self.workers[worker].name);
                return (
                    status.code(),
                    std::fs::read_to_string(log).unwrap_or_default(),
                );
            }

            assert!(
                Instant::now() < deadline,
                "worker {} did not exit in {timeout:?}",
                self.workers[worker].name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A producer client over this cluster's Redis.
    pub async fn client(&self) -> Client<AnyBroker> {
        Client::with_broker(
            wtq_client::connect(&self.url())
                .await
                .expect("client connects"),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// Waits until every id is final; panics with the stragglers after `timeout`. Broker errors
/// are retried until the deadline, as a producer would while Redis restarts.
pub async fn all_final(
    client: &Client<AnyBroker>,
    ids: &[String],
    timeout: Duration,
) -> Vec<TaskRecord> {
    use wtq_client::broker::Broker;
    let deadline = Instant::now() + timeout;
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        let record = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.broker().wait(id, left).await {
                Ok(Some(record)) => break record,
                Ok(None) => panic!("task {id} vanished"),
                Err(error) if Instant::now() < deadline => {
                    eprintln!("retrying after a broker error: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("broker unavailable until the deadline: {error}"),
            }
        };
        assert!(
            record.state.is_final(),
            "task {id} still {} after {timeout:?}",
            record.state
        );
        records.push(record);
    }
    records
}

/// Enqueues `count` calls of `address` with `args` in one round trip; returns their ids.
pub async fn enqueue_many(
    client: &Client<AnyBroker>,
    address: &str,
    args: serde_json::Value,
    count: usize,
) -> Vec<String> {
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        tasks.push(
            client
                .call(address)
                .args(args.clone())
                .prepare()
                .await
                .expect("prepare"),
        );
    }
    let ids = tasks.iter().map(|task| task.message.id.clone()).collect();
    client.enqueue(tasks).await.expect("enqueue");
    ids
}

/// Asserts a record finished as SUCCESS with exactly one committed attempt.
pub fn committed_once(record: &TaskRecord) {
    assert_eq!(record.state, State::Success, "{record:?}");
    let finals = record
        .attempts
        .iter()
        .filter(|attempt| attempt.state.is_final())
        .count();
    assert_eq!(
        finals, 1,
        "exactly one committed result: {:?}",
        record.attempts
    );
}
