//! The [`Schedules`] contract on both brokers: stored entries, per-entry state, and the beat
//! lease with its fencing (one holder at a time, a stale holder's writes refused, takeover
//! after expiry or resignation, namespaces apart).
//!
//! Run: `cargo test -p wtq-client --test schedule` (needs `redis-server` on PATH).

#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use wtq_client::api::EnqueueRequest;
use wtq_client::broker::memory::MemoryBroker;
use wtq_client::broker::redis::RedisBroker;
use wtq_client::broker::{Schedules, Tenancy};
use wtq_client::schedule::{Fired, Missed, Overlap, ScheduleEntry, Trigger};

use redis_server::RedisServer;

fn entry(name: &str, every_ms: u64) -> ScheduleEntry {
    ScheduleEntry {
        name: name.into(),
        call: EnqueueRequest {
            task: "math.add".into(),
            args: Some(serde_json::json!([1, 2])),
            ..EnqueueRequest::default()
        },
        trigger: Trigger::EveryMs(every_ms),
        missed: Missed::CatchUp,
        catch_up_window_ms: Some(60_000),
        overlap: Overlap::Skip,
    }
}

/// Entries and their state: stored, replaced, listed by name, removed together.
async fn entries_and_state<B: Schedules + Tenancy>(broker: B) {
    broker.put_schedule(&entry("b", 2000)).await.expect("put");
    broker.put_schedule(&entry("a", 1000)).await.expect("put");
    broker
        .put_schedule(&entry("b", 3000))
        .await
        .expect("replace");
    let list = broker.schedules().await.expect("list");
    assert_eq!(list, [entry("a", 1000), entry("b", 3000)]);

    let token = broker
        .lead("me", None, 60_000, 1000)
        .await
        .expect("lead")
        .expect("nobody else holds it");
    let fired = Fired {
        tick_ms: 5000,
        task: Some("t1".into()),
    };
    assert!(
        broker
            .record_fired("b", &fired, "me", token, 1001)
            .await
            .expect("write")
    );
    assert_eq!(broker.fired().await.expect("fired")["b"], fired);

    assert!(broker.remove_schedule("b").await.expect("remove"));
    assert!(!broker.remove_schedule("b").await.expect("remove again"));
    assert!(!broker.fired().await.expect("fired").contains_key("b"));
    // Another namespace sees none of it.
    let other = broker.namespaced("other").expect("namespace");
    assert!(other.schedules().await.expect("list").is_empty());
    assert_eq!(
        other.lead("you", None, 60_000, 1002).await.expect("lead"),
        Some(1)
    );
}

/// One holder at a time; the holder renews; resigning hands over at once; a holder whose
/// tenure ended cannot write.
async fn one_leader_at_a_time<B: Schedules>(broker: B) {
    let a = broker.lead("a", None, 60_000, 0).await.expect("lead");
    assert!(a.is_some());
    assert_eq!(broker.lead("b", None, 60_000, 1).await.expect("lead"), None);
    assert_eq!(broker.lead("a", a, 60_000, 2).await.expect("renew"), a);
    // Without its token (a restarted `a`), it is another tenure and waits too.
    assert_eq!(broker.lead("a", None, 60_000, 3).await.expect("lead"), None);
    let a = a.expect("token");
    broker
        .resign("b", a)
        .await
        .expect("a stranger's resign changes nothing");
    assert_eq!(broker.lead("b", None, 60_000, 4).await.expect("lead"), None);
    broker.resign("a", a).await.expect("resign");
    let b = broker
        .lead("b", None, 60_000, 5)
        .await
        .expect("lead")
        .expect("free");
    assert!(b > a, "a new tenure has a new token");
    let fired = Fired {
        tick_ms: 7,
        task: None,
    };
    assert!(
        !broker
            .record_fired("x", &fired, "a", a, 6)
            .await
            .expect("fenced")
    );
    assert!(
        broker
            .record_fired("x", &fired, "b", b, 7)
            .await
            .expect("write")
    );
}

#[tokio::test]
async fn entries_and_state_on_memory() {
    entries_and_state(MemoryBroker::new()).await;
}

#[tokio::test]
async fn entries_and_state_on_redis() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url(), "test")
        .await
        .expect("connect");
    entries_and_state(broker).await;
}

#[tokio::test]
async fn one_leader_at_a_time_on_memory() {
    one_leader_at_a_time(MemoryBroker::new()).await;
}

#[tokio::test]
async fn one_leader_at_a_time_on_redis() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url(), "test")
        .await
        .expect("connect");
    one_leader_at_a_time(broker).await;
}

/// Redis expires the lease on its own clock: a holder that stops renewing loses it within the
/// lease time, and its late writes are refused.
#[tokio::test]
async fn a_silent_holder_loses_the_lease_on_redis() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url(), "test")
        .await
        .expect("connect");
    let a = broker
        .lead("a", None, 200, 0)
        .await
        .expect("lead")
        .expect("free");
    assert_eq!(broker.lead("b", None, 200, 0).await.expect("lead"), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = broker
        .lead("b", None, 200, 0)
        .await
        .expect("lead")
        .expect("expired");
    assert_ne!(a, b);
    let fired = Fired {
        tick_ms: 1,
        task: None,
    };
    assert!(
        !broker
            .record_fired("x", &fired, "a", a, 0)
            .await
            .expect("fenced")
    );
    assert_eq!(
        broker.lead("a", Some(a), 200, 0).await.expect("renew"),
        None
    );
}
