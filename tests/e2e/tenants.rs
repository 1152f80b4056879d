//! The multi-tenant worker end to end: one `wtq worker --tenants` process serving tenants
//! created in Redis, each in its own namespace — the noisy neighbour stays within its cap and
//! barely delays the others, a tenant created later is picked up, calls see their tenant, and
//! guest CPU time is measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use serde_json::json;
use wtq_client::broker::Tenancy;
use wtq_client::message::{State, TaskRecord, now_ms};
use wtq_client::tenancy::{Quotas, Tenant, namespace_of};
use wtq_client::{AnyBroker, Client};

use crate::cluster::{Cluster, all_final, enqueue_many};
use crate::redis_server::RedisServer;
use crate::support::guest;

/// The noisy tenant's concurrency cap.
const NOISY_CAP: u32 = 2;
/// Calls the quiet tenant makes in each phase, one at a time.
const TRICKLE: usize = 30;
/// Pause between the quiet tenant's calls.
const TRICKLE_GAP: Duration = Duration::from_millis(30);

/// Creates tenant `name` in the registry and deploys `components` into its namespace; returns
/// a client over that namespace.
async fn tenant(
    cluster: &Cluster,
    root: &AnyBroker,
    name: &str,
    quotas: Quotas,
    components: &[&str],
) -> Client<AnyBroker> {
    let tenant = Tenant {
        name: name.to_string(),
        created_ms: now_ms(),
        quotas,
    };
    root.put_tenant(&tenant).await.expect("put tenant");
    let url = format!("{}?namespace={}", cluster.url(), namespace_of(name));
    for component in components {
        let path = guest(component);
        let run = cluster.wtq.command([
            "deploy",
            path.to_str().expect("utf-8 path"),
            "--url",
            url.as_str(),
        ]);
        assert_eq!(run.code, 0, "deploy {component} for {name}: {}", run.stderr);
    }
    Client::with_broker(
        root.namespaced(&namespace_of(name))
            .expect("valid namespace"),
    )
}

/// How long a task waited in its queue: from enqueue to the start of its (first) call.
fn wait_ms(record: &TaskRecord) -> i64 {
    let started = record
        .attempts
        .first()
        .and_then(|attempt| attempt.started_ms)
        .expect("a finished call has a start time");
    started as i64 - record.message.created_ms as i64
}

fn median(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Runs the quiet tenant's trickle: one quick call at a time; returns each one's queue wait.
async fn trickle(client: &Client<AnyBroker>) -> Vec<i64> {
    let mut waits = Vec::with_capacity(TRICKLE);
    for value in 0..TRICKLE {
        let ids = enqueue_many(client, "math.add", json!([value, 1]), 1).await;
        let records = all_final(client, &ids, Duration::from_secs(30)).await;
        assert_eq!(records[0].state, State::Success, "{:?}", records[0]);
        waits.push(wait_ms(&records[0]));
        tokio::time::sleep(TRICKLE_GAP).await;
    }
    waits
}

/// Watches how many of a namespace's tasks are leased (reserved or running), every few ms,
/// until stopped; keeps the most seen.
fn watch_leases(redis: &RedisServer, namespace: &str) -> (Arc<AtomicBool>, Arc<AtomicI64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let port = redis.port();
    let key = format!("wtq:{{{namespace}}}:leases");
    std::thread::spawn({
        let (stop, most) = (stop.clone(), most.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                let leased: i64 = RedisServer::command_on(port, &["ZCARD", &key])
                    .text()
                    .parse()
                    .expect("ZCARD is a number");
                most.fetch_max(leased, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    (stop, most)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "timing: run alone by `cargo xtask test` (cargo test -p wtq --test e2e -- --ignored)"]
async fn a_noisy_tenant_stays_within_its_cap_and_barely_delays_another() {
    let mut cluster = Cluster::start();
    let root = wtq_client::connect(&cluster.url()).await.expect("connect");
    let capped = Quotas {
        concurrency: Some(NOISY_CAP),
        ..Quotas::default()
    };
    let noisy = tenant(&cluster, &root, "noisy", capped, &["chaos"]).await;
    let quiet = tenant(&cluster, &root, "quiet", Quotas::default(), &["math"]).await;
    cluster.worker("shared", &["--tenants", "-c", "4"]);

    // Warm up (the worker loads each component once), then the quiet tenant alone.
    trickle(&quiet).await;
    let idle = trickle(&quiet).await;

    // The noisy tenant floods: far more CPU-bound calls than its cap, each spinning until its
    // 200 ms time limit stops it.
    let (stop, most) = watch_leases(&cluster.redis, &namespace_of("noisy"));
    let mut flood = Vec::with_capacity(2000);
    for _ in 0..2000 {
        flood.push(
            noisy
                .call("chaos.spin")
                .time_limit(Duration::from_millis(200))
                .prepare()
                .await
                .expect("prepare"),
        );
    }
    noisy.enqueue(flood).await.expect("enqueue the flood");
    let saturated = std::time::Instant::now() + Duration::from_secs(30);
    while most.load(Ordering::Relaxed) < i64::from(NOISY_CAP) {
        assert!(
            std::time::Instant::now() < saturated,
            "the noisy tenant never reached its cap"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loaded = trickle(&quiet).await;
    stop.store(true, Ordering::Relaxed);

    let (idle_median, loaded_median) = (median(idle.clone()), median(loaded.clone()));
    eprintln!(
        "quiet tenant's queue wait, median: {idle_median} ms alone, {loaded_median} ms beside the flood (idle {idle:?}, loaded {loaded:?})"
    );
    let most = most.load(Ordering::Relaxed);
    eprintln!("noisy tenant's most leased at once: {most}");
    assert!(
        most <= i64::from(NOISY_CAP),
        "the noisy tenant held {most} leases at once, over its cap of {NOISY_CAP}"
    );
    // Millisecond timestamps: a 1 ms floor keeps a 0 ms idle median from demanding 0 ms.
    assert!(
        loaded_median <= 2 * idle_median.max(1),
        "the quiet tenant waited {loaded_median} ms (median) beside the flood, over twice its {idle_median} ms alone"
    );

    // The flood ran (and was metered): CPU time measured per call, summed per tenant.
    let mut spun = None;
    for _ in 0..200 {
        let usage = noisy.broker().usage().await.expect("usage");
        if usage.tasks > 0 {
            spun = Some(usage);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let usage = spun.expect("the noisy tenant's usage counts its finished tasks");
    assert!(usage.cpu_us > 0, "spinning tasks use CPU time: {usage:?}");
    let quiet_usage = quiet.broker().usage().await.expect("usage");
    assert!(quiet_usage.tasks >= 3 * TRICKLE as u64, "{quiet_usage:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_created_after_the_worker_started_is_served() {
    let mut cluster = Cluster::start();
    let root = wtq_client::connect(&cluster.url()).await.expect("connect");
    let first = tenant(&cluster, &root, "first", Quotas::default(), &["chaos"]).await;
    cluster.worker("shared", &["--tenants", "-c", "2"]);
    let ids = enqueue_many(&first, "chaos.context", json!([]), 1).await;
    let records = all_final(&first, &ids, Duration::from_secs(30)).await;
    assert_eq!(records[0].state, State::Success, "{:?}", records[0]);

    let late = tenant(&cluster, &root, "late", Quotas::default(), &["chaos"]).await;
    let ids = enqueue_many(&late, "chaos.context", json!([]), 1).await;
    let records = all_final(&late, &ids, Duration::from_secs(30)).await;
    let record = &records[0];
    assert_eq!(record.state, State::Success, "{record:?}");
    let context: serde_json::Value =
        serde_json::from_str(record.output().expect("output")).expect("JSON output");
    assert_eq!(
        context["tenant"], "late",
        "the guest sees its tenant: {context}"
    );
    assert_eq!(context["task_id"], ids[0].as_str(), "{context}");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_cpu_time_is_recorded_with_each_attempt() {
    let mut cluster = Cluster::start();
    let root = wtq_client::connect(&cluster.url()).await.expect("connect");
    let client = tenant(&cluster, &root, "meter", Quotas::default(), &["chaos"]).await;
    cluster.worker("shared", &["--tenants", "-c", "2"]);
    let spin = client
        .call("chaos.spin")
        .time_limit(Duration::from_millis(300))
        .send()
        .await
        .expect("send");
    let sleep = client
        .call("chaos.sleep")
        .args(json!([300]))
        .send()
        .await
        .expect("send");
    let ids = [spin.id().to_string(), sleep.id().to_string()];
    let records = all_final(&client, &ids, Duration::from_secs(30)).await;
    let cpu_ms = |record: &TaskRecord| {
        record.attempts[0]
            .cpu_ms
            .unwrap_or_else(|| panic!("no CPU time measured: {record:?}"))
    };
    let (spun, slept) = (cpu_ms(&records[0]), cpu_ms(&records[1]));
    eprintln!("CPU time: {spun:.1} ms spinning for 300 ms, {slept:.1} ms sleeping for 300 ms");
    // How much CPU the spin gets depends on what else the machine runs; never more than its
    // wall time, and always more than a sleep's.
    let wall = records[0].attempts[0].duration_ms.expect("duration");
    assert!(
        spun > slept && spun <= wall + 5.0,
        "a 300 ms spin used {spun} ms of CPU in {wall} ms, a 300 ms sleep {slept} ms"
    );
    assert!(slept < 100.0, "a 300 ms sleep used {slept} ms of CPU");
}
