//! The [`Control`] contract on both brokers: a broadcast reaches every listening worker of its
//! namespace and no other, the sender collects each reply once and stops as soon as every
//! worker that heard it answered, and the delayed sets can be listed for `inspect scheduled`.
//!
//! Run: `cargo test -p wtq-client --test control` (needs `redis-server` on PATH).

#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use serde_json::json;
use wtq_client::broker::control::{Command, ControlReply, ControlRequest, ReplyOutcome};
use wtq_client::broker::memory::MemoryBroker;
use wtq_client::broker::redis::RedisBroker;
use wtq_client::broker::{Broker, Control, NewTask, Tenancy};
use wtq_client::message::{
    DEFAULT_MAX_DELIVERIES, DEFAULT_RESULT_EXPIRES_MS, LimitOverrides, TaskMessage,
};

use redis_server::RedisServer;

/// A worker that answers every request addressed to it with its name, until dropped.
async fn answering<B: Control + Clone>(broker: &B, name: &str) -> tokio::task::JoinHandle<()> {
    let broker = broker.clone();
    let name = name.to_string();
    let (ready, listening) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let mut requests = broker.control_requests().await.expect("listen");
        let _ = ready.send(());
        while let Some(request) = requests.recv().await {
            if !request.is_for(&name) {
                continue;
            }
            let outcome = match request.command {
                Command::Ping => ReplyOutcome::Ok(json!("pong")),
                _ => ReplyOutcome::Error(format!("{name} cannot")),
            };
            let reply = ControlReply {
                request: request.id,
                worker: name.clone(),
                outcome,
            };
            broker.reply(&reply).await.expect("reply");
        }
    });
    tokio::time::timeout(Duration::from_secs(5), listening)
        .await
        .expect("the worker listens in time")
        .expect("the worker listens");
    handle
}

fn workers(replies: &[ControlReply]) -> Vec<&str> {
    replies.iter().map(|reply| reply.worker.as_str()).collect()
}

async fn broadcast_and_replies<B: Control + Tenancy + Clone>(broker: B) {
    let a = answering(&broker, "a").await;
    let b = answering(&broker, "b").await;
    let other = broker.namespaced("other").expect("namespace");
    let elsewhere = answering(&other, "c").await;

    // Everyone in the namespace answers, and the sender does not wait out its timeout.
    let started = Instant::now();
    let ping = ControlRequest::new(Command::Ping, vec![]);
    let replies = broker
        .broadcast(&ping, Duration::from_secs(10))
        .await
        .expect("broadcast");
    assert_eq!(workers(&replies), ["a", "b"]);
    assert!(replies.iter().all(|reply| reply.request == ping.id));
    assert_eq!(replies[0].outcome, ReplyOutcome::Ok(json!("pong")));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "returned once both answered: {:?}",
        started.elapsed()
    );

    // Addressed: only the named worker answers; a refusal is a reply too.
    let addressed = ControlRequest::new(Command::Stats, vec!["b".into()]);
    let replies = broker
        .broadcast(&addressed, Duration::from_secs(10))
        .await
        .expect("broadcast");
    assert_eq!(workers(&replies), ["b"]);
    assert_eq!(replies[0].outcome, ReplyOutcome::Error("b cannot".into()));

    // Nobody by that name: nothing, after the timeout.
    let nobody = ControlRequest::new(Command::Ping, vec!["z".into()]);
    let replies = broker
        .broadcast(&nobody, Duration::from_millis(200))
        .await
        .expect("broadcast");
    assert!(replies.is_empty());

    // A worker gone: the others still answer.
    a.abort();
    let _ = a.await;
    let replies = broker
        .broadcast(
            &ControlRequest::new(Command::Ping, vec![]),
            Duration::from_millis(500),
        )
        .await
        .expect("broadcast");
    assert_eq!(workers(&replies), ["b"]);

    let replies = other
        .broadcast(
            &ControlRequest::new(Command::Ping, vec![]),
            Duration::from_secs(10),
        )
        .await
        .expect("broadcast");
    assert_eq!(workers(&replies), ["c"]);
    b.abort();
    elsewhere.abort();
}

fn later(id: &str, eta_ms: u64) -> NewTask {
    NewTask {
        message: TaskMessage {
            id: id.into(),
            component: "math".into(),
            digest: None,
            task: "add".into(),
            args: "[1, 2]".into(),
            queue: "default".into(),
            priority: 0,
            eta_ms: Some(eta_ms),
            expires_ms: None,
            max_retries: None,
            retry_backoff: None,
            limits: LimitOverrides::default(),
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            result_expires_ms: DEFAULT_RESULT_EXPIRES_MS,
            created_ms: 1_000,
            batch: false,
        },
        idempotency_key: None,
    }
}

async fn delayed_sets_are_listed_soonest_first<B: Broker + Control>(broker: B) {
    broker
        .enqueue(
            vec![
                later("t3", 90_000),
                later("t1", 30_000),
                later("t2", 60_000),
            ],
            1_000,
        )
        .await
        .expect("enqueue");
    assert_eq!(
        broker.delayed("default", 2).await.expect("delayed"),
        [("t1".to_string(), 30_000), ("t2".to_string(), 60_000)]
    );
    assert!(broker.delayed("other", 10).await.expect("none").is_empty());
    assert!(broker.delayed("default", 0).await.expect("none").is_empty());
}

#[tokio::test]
async fn broadcast_and_replies_on_memory() {
    broadcast_and_replies(MemoryBroker::new()).await;
}

#[tokio::test]
async fn broadcast_and_replies_on_redis() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url(), "test")
        .await
        .expect("connect");
    broadcast_and_replies(broker).await;
}

#[tokio::test]
async fn delayed_sets_are_listed_on_memory() {
    delayed_sets_are_listed_soonest_first(MemoryBroker::new()).await;
}

#[tokio::test]
async fn delayed_sets_are_listed_on_redis() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url(), "test")
        .await
        .expect("connect");
    delayed_sets_are_listed_soonest_first(broker).await;
}
