//! The Redis broker's own tests: pure helpers, and what only this broker can show against a
//! private `redis-server` (a raw garbage body, reconnection, the pub/sub listener). The
//! contract itself is exercised by the behavioural suite in `client/tests/broker.rs`.

#[path = "../../../tests/support/redis_server.rs"]
mod redis_server;

use super::*;
use crate::message::{Attempt, LimitOverrides, TaskMessage};
use redis_server::RedisServer;

const T0: u64 = 1_700_000_000_000;
const LEASE_MS: u64 = 30_000;
/// A bound on anything that should happen at once (a wake-up, a reconnection).
const PROMPTLY: Duration = Duration::from_secs(2);

#[test]
fn passwords_are_hidden() {
    let check = |url: &str, expected: &str| assert_eq!(redact(url), expected, "{url}");
    check("redis://127.0.0.1:6379", "redis://127.0.0.1:6379");
    check("redis://:secret@host:6379/2", "redis://:***@host:6379/2");
    check("rediss://user:secret@host", "rediss://user:***@host");
    check("redis://user@host", "redis://user@host");
    check("redis://host/path@x", "redis://host/path@x");
    check("not a url", "not a url");
}

#[test]
fn settlements_become_script_arguments() {
    let attempt = attempt("a", State::Failure);
    let (kind, operand, json, error) = settle_args(&Settlement::Finish(attempt.clone()));
    assert_eq!((kind, operand.as_str()), ("F", "FAILURE"));
    assert_eq!(
        serde_json::from_str::<Attempt>(&json).ok(),
        Some(attempt.clone())
    );
    assert!(error.contains("\"kind\":\"failed\""), "{error}");
    let retry = Settlement::Retry {
        attempt,
        eta_ms: 42,
    };
    assert_eq!(settle_args(&retry).0, "R");
    assert_eq!(settle_args(&retry).1, "42");
    assert_eq!(
        settle_args(&Settlement::Release),
        ("L", String::new(), String::new(), String::new())
    );
    let dead = Settlement::DeadLetter(TaskFailure {
        kind: "malformed_message".into(),
        message: "x".into(),
    });
    assert_eq!(settle_args(&dead).0, "D");
}

#[test]
fn a_garbage_body_is_delivered_as_an_error() {
    let reply = vec![
        Value::BulkString(b"a".to_vec()),
        Value::Int(7),
        Value::BulkString(b"{not json".to_vec()),
        Value::Int(1),
        Value::Int(2),
        Value::Int(1),
    ];
    let delivery = deliveries(reply, T0).expect("parses").pop().expect("one");
    assert_eq!((delivery.id.as_str(), delivery.token), ("a", 7));
    assert_eq!((delivery.deliveries, delivery.attempt), (1, 2));
    assert!(delivery.terminating);
    assert!(delivery.message.is_err());
    assert!(deliveries(vec![Value::BulkString(b"a".to_vec())], T0).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_namespaces_are_refused() {
    for (url, namespace) in [
        ("http://127.0.0.1:1", "test"),
        ("127.0.0.1:6379", "test"),
        ("redis://127.0.0.1:1", "bad namespace"),
        ("redis://127.0.0.1:1", ""),
    ] {
        let result = RedisBroker::connect(url, namespace).await;
        assert!(
            matches!(result, Err(Error::Url { .. })),
            "{url} {namespace:?}: {:?}",
            result.map(|_| "a broker")
        );
    }
}

/// A message whose stored body is garbage (written by hand, or by an incompatible producer)
/// reaches the worker as an error, and the worker can dead-letter it: it never crashes reserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_message_is_delivered_as_an_error_and_can_be_dead_lettered() {
    let server = RedisServer::start();
    let broker = connect(&server).await;
    broker
        .enqueue(vec![new(message("bad")), new(message("good"))], T0)
        .await
        .expect("enqueue");
    server.command(&["HSET", "wtq:{test}:task:bad", "msg", "\u{1}garbage"]);
    // A ready id without any record, as a hand-written ZADD would leave.
    server.command(&["ZADD", "wtq:{test}:ready:default", "0", "ghost"]);

    let leased = broker
        .reserve("w", &["default".to_string()], 10, LEASE_MS, T0)
        .await
        .expect("reserve");
    let ids: Vec<&str> = leased.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["bad", "good"], "the id without a record is dropped");
    assert!(leased[0].message.is_err());
    assert_eq!(leased[1].message, Ok(message("good")));

    let settled = broker
        .settle(
            vec![Settle {
                lease: Lease {
                    id: "bad".into(),
                    token: leased[0].token,
                },
                settlement: Settlement::DeadLetter(TaskFailure {
                    kind: "malformed_message".into(),
                    message: "garbage".into(),
                }),
            }],
            T0 + 1,
        )
        .await
        .expect("settle");
    assert_eq!(settled, [Settled::Committed]);
    // The record stays readable, with the raw body as its arguments, so it can be inspected
    // where it was dead-lettered.
    let record = broker.record("bad").await.expect("record").expect("exists");
    assert_eq!(record.state, State::Failure);
    assert_eq!(record.message.args, "\u{1}garbage");
    let dead = broker.dead(10).await.expect("dead");
    assert_eq!(
        dead.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["bad"]
    );
    assert_eq!(broker.purge_dead().await.expect("purge dead"), 1);
    assert_eq!(broker.depth("default").await.expect("depth"), 0);
}

/// After Redis restarts, commands resume by themselves, and the pub/sub listener reconnects:
/// `wait` is woken by a finish that happens after the restart, and terminations still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_survive_a_redis_restart() {
    let mut server = RedisServer::start_durable();
    let broker = connect(&server).await;
    let mut terminations = broker.terminations().await.expect("terminations");
    broker
        .enqueue(vec![new(message("a")), new(message("b"))], T0)
        .await
        .expect("enqueue");
    let leased = broker
        .reserve("w", &["default".to_string()], 2, LEASE_MS, T0)
        .await
        .expect("reserve");

    server.restart();
    // The first call may meet the dead connection; later ones succeed once it is back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.depth("default").await.is_err() {
        assert!(Instant::now() < deadline, "commands did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let waiter = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let record = broker.wait("a", Duration::from_secs(30)).await;
            (record, started.elapsed())
        })
    };
    // Give the listener time to notice the restart and resubscribe, as a real waiter would
    // have; the wait must not depend on it, but this is the case being tested.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settle = Settle {
        lease: Lease {
            id: "a".into(),
            token: leased[0].token,
        },
        settlement: Settlement::Finish(attempt("a", State::Success)),
    };
    assert_eq!(
        broker.settle(vec![settle], T0 + 1).await.expect("settle"),
        [Settled::Committed]
    );
    let (record, elapsed) = tokio::time::timeout(PROMPTLY * 2, waiter)
        .await
        .expect("the waiter returns")
        .expect("waiter task");
    let record = record.expect("wait").expect("a record");
    assert_eq!(record.state, State::Success);
    assert!(
        elapsed < PROMPTLY + Duration::from_millis(300),
        "woke after {elapsed:?}"
    );

    assert_eq!(
        broker.revoke("b", true, T0 + 2).await.expect("revoke"),
        Revoked::Running { terminating: true }
    );
    let arrived = tokio::time::timeout(PROMPTLY, async {
        while let Some(id) = terminations.recv().await {
            if id == "b" {
                return true;
            }
        }
        false
    })
    .await
    .expect("the termination request arrives");
    assert!(arrived, "the terminations channel closed");
}

/// `wait_for_work` sleeps until the next delayed message is due rather than its whole timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_work_wakes_when_a_delayed_message_is_due() {
    let server = RedisServer::start();
    let broker = connect(&server).await;
    let now = crate::message::now_ms();
    let later = TaskMessage {
        eta_ms: Some(now + 300),
        ..message("later")
    };
    broker
        .enqueue(vec![new(later)], now)
        .await
        .expect("enqueue");
    let started = Instant::now();
    // Spurious returns are allowed; what matters is that the message is taken soon after its
    // eta, not after the 30 s timeout.
    loop {
        broker
            .wait_for_work(&["default".to_string()], Duration::from_secs(30))
            .await
            .expect("wait_for_work");
        let leased = broker
            .reserve(
                "w",
                &["default".to_string()],
                1,
                LEASE_MS,
                crate::message::now_ms(),
            )
            .await
            .expect("reserve");
        if !leased.is_empty() {
            break;
        }
        assert!(started.elapsed() < PROMPTLY, "not woken by the eta");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < PROMPTLY, "woke after {elapsed:?}");
}

/// Idle subscriptions are dropped: a finished `wait` does not leave its channel subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_unsubscribes_idle_channels() {
    let server = RedisServer::start();
    let broker = connect(&server).await;
    broker
        .enqueue(vec![new(message("a"))], T0)
        .await
        .expect("enqueue");
    let record = broker
        .wait("a", Duration::from_millis(50))
        .await
        .expect("wait");
    assert_eq!(record.map(|r| r.state), Some(State::Pending));
    let channels = || match server.command(&["PUBSUB", "NUMSUB", "wtq:{test}:done:a"]) {
        redis_server::Reply::Array(Some(parts)) => parts[1].text(),
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    };
    assert_eq!(channels(), "1", "subscribed while waiting");
    let deadline = Instant::now() + Duration::from_secs(15);
    while channels() != "0" {
        assert!(Instant::now() < deadline, "still subscribed after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(server: &RedisServer) -> RedisBroker {
    RedisBroker::connect(&server.url(), "test")
        .await
        .unwrap_or_else(|error| panic!("connecting to {}: {error}", server.url()))
}

fn message(id: &str) -> TaskMessage {
    TaskMessage {
        id: id.into(),
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
        result_expires_ms: 60_000,
        created_ms: T0,
        batch: false,
    }
}

fn new(message: TaskMessage) -> NewTask {
    NewTask {
        message,
        idempotency_key: None,
    }
}

fn attempt(id: &str, state: State) -> Attempt {
    Attempt {
        attempt: 1,
        worker: format!("worker of {id}"),
        digest: None,
        received_ms: T0,
        started_ms: Some(T0),
        finished_ms: T0 + 1,
        state,
        output: (state == State::Success).then(|| "3".into()),
        error: (state != State::Success).then(|| TaskFailure {
            kind: "failed".into(),
            message: "boom".into(),
        }),
        duration_ms: None,
        fuel: None,
        cpu_ms: None,
        peak_memory: None,
        log: String::new(),
    }
}

/// `rediss://` is TLS: to a port where nothing listens it fails fast like `redis://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_to_a_closed_port_is_unreachable() {
    let started = std::time::Instant::now();
    let result = RedisBroker::connect("rediss://127.0.0.1:1", "test").await;
    assert!(
        matches!(result, Err(Error::Unreachable { .. })),
        "{:?}",
        result.map(|_| "a broker")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
