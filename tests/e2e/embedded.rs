//! The whole queue in one process on the embedded broker, driven through the Rust client: what
//! `wtq up` and a Rust application's tests do.

use std::time::Duration;

use serde_json::json;
use wtq::sandbox::{Limits, Sandbox, SandboxConfig};
use wtq::worker::{Stage, WorkerConfig, advance, run};
use wtq_client::broker::Revoked;
use wtq_client::broker::memory::MemoryBroker;
use wtq_client::message::State;
use wtq_client::{Client, ResultError};

use crate::support::guest_bytes;

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_runs_the_whole_queue_in_one_process() {
    let broker = MemoryBroker::new();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        concurrency: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    wtq::registry::deploy(
        &broker,
        &sandbox,
        "math",
        guest_bytes("math"),
        wtq::registry::DEFAULT_MAX_UPLOAD,
    )
    .await
    .expect("deploy");
    let config = WorkerConfig {
        name: "embedded".into(),
        queues: vec!["default".into()],
        concurrency: 2,
        max_concurrency: 2,
        autoscale: None,
        autoscale_keepalive: wtq::worker::DEFAULT_AUTOSCALE_KEEPALIVE,
        prefetch_multiplier: 4,
        lease: Duration::from_secs(30),
        shutdown_timeout: Duration::from_secs(5),
        limits: Limits::default(),
        reap_interval: Duration::from_secs(1),
        task_events: false,
    };
    let (stop, _) = tokio::sync::watch::channel(Stage::Running);
    let compute = tokio::runtime::Handle::current();
    let worker = tokio::spawn(run(
        config,
        broker.clone(),
        sandbox,
        compute,
        None,
        stop.clone(),
    ));

    let client = Client::with_broker(broker.clone());
    let sum = client
        .call("math.add")
        .args(json!([2]))
        .kwargs(json!({"y": 3}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        sum.get(Duration::from_secs(20)).await.expect("result"),
        json!(5)
    );
    assert!(sum.ready().await.expect("ready") && sum.successful().await.expect("successful"));
    assert_eq!(sum.state().await.expect("state"), State::Success);

    let overflow = client
        .call("math.mul")
        .args(json!([i64::MAX, 2]))
        .send()
        .await
        .expect("send");
    match overflow.get(Duration::from_secs(20)).await {
        Err(ResultError::Failed { error, .. }) => assert_eq!(error.kind, "task_failed"),
        other => panic!("expected the overflow to fail: {other:?}"),
    }

    let later = client
        .call("math.add")
        .args(json!([1, 1]))
        .countdown(Duration::from_secs(60))
        .send()
        .await
        .expect("send");
    assert_eq!(later.revoke(false).await.expect("revoke"), Revoked::Revoked);
    assert!(matches!(
        later.get(Duration::from_secs(1)).await,
        Err(ResultError::Revoked { .. })
    ));

    advance(&stop, Stage::Warm);
    let summary = worker.await.expect("worker ends");
    assert_eq!((summary.succeeded, summary.failed), (1, 1));
}
