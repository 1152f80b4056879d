//! `wtq inspect` and `wtq control` against real `wtq worker` processes on a private Redis,
//! the autoscaler observed through `inspect stats`, and the shutdown stages driven by signals.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wtq_client::message::State;

use crate::cluster::{Cluster, all_final, enqueue_many};

/// Polls `check` (a blocking look from outside, e.g. a `wtq` command) until it holds.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `wtq inspect|control ARGS --json` that must succeed: worker name → reply.
fn ask(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let run = cluster.cmd(&all);
    assert_eq!(run.code, 0, "wtq {args:?}: {}", run.stderr);
    run.json()
}

/// `wtq inspect|control ARGS --json`: the replies, or `None` when nobody answered.
fn try_ask(cluster: &Cluster, args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let run = cluster.cmd(&all);
    (run.code == 0).then(|| run.json())
}

/// The pool size `inspect stats` reports for `worker`.
fn concurrency(cluster: &Cluster, worker: &str) -> u64 {
    let stats = ask(cluster, &["inspect", "stats", "-d", worker]);
    stats[worker]["pool"]["concurrency"]
        .as_u64()
        .unwrap_or_else(|| panic!("stats of {worker}: {stats}"))
}

/// The ids `inspect active` lists for `worker`.
fn active(cluster: &Cluster, worker: &str) -> Vec<String> {
    let replies = ask(cluster, &["inspect", "active", "-d", worker]);
    replies[worker]
        .as_array()
        .unwrap_or_else(|| panic!("active of {worker}: {replies}"))
        .iter()
        .map(|task| task["id"].as_str().expect("id").to_string())
        .collect()
}

async fn state(cluster: &Cluster, id: &str) -> State {
    cluster
        .client()
        .await
        .result(id)
        .record()
        .await
        .expect("record")
        .expect("exists")
        .state
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_and_control_reach_live_workers_by_name() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker("w1", &["-c", "1", "--max-concurrency", "4", "-Q", "solo"]);
    let w2 = cluster.worker("w2", &["-c", "1"]);

    // Both answer a ping (once they are up), and only those named answer.
    eventually("both workers to answer", Duration::from_secs(20), || {
        try_ask(&cluster, &["inspect", "ping"]) == Some(json!({"w1": "pong", "w2": "pong"}))
    });
    let one = ask(&cluster, &["inspect", "ping", "-d", "w2"]);
    assert_eq!(one, json!({"w2": "pong"}));
    let lines = cluster.cmd(&["inspect", "ping"]);
    assert!(
        lines.stdout.contains("-> w1: OK\n    pong") && lines.stdout.contains("-> w2: OK"),
        "{}",
        lines.stdout
    );
    cluster
        .cmd(&["inspect", "ping", "-d", "nobody", "--timeout", "300ms"])
        .fails_with(69, "worker nobody replied within 300");

    // A running chaos.sleep shows as active on the worker that runs it, with its arguments.
    let sleeper = cluster.enqueue(&["chaos.sleep", "[4000]", "-Q", "solo"]);
    eventually("the sleep to start", Duration::from_secs(20), || {
        active(&cluster, "w1").contains(&sleeper)
    });
    let listed = ask(&cluster, &["inspect", "active"]);
    assert_eq!(listed["w2"], json!([]), "w2 runs nothing");
    let task = &listed["w1"][0];
    assert_eq!(task["task"], "chaos.sleep");
    assert_eq!(task["args"], "[4000]");
    assert_eq!(task["attempt"], 1);
    let lines = cluster.cmd(&["inspect", "active", "-d", "w1"]);
    assert!(
        lines
            .stdout
            .contains(&format!("* {sleeper}  chaos.sleep([4000])  started ")),
        "{}",
        lines.stdout
    );

    // One slot: a second sleep waits, prefetched, as `reserved`.
    let waiting = cluster.enqueue(&["chaos.sleep", "[3000]", "-Q", "solo"]);
    eventually(
        "the second sleep to be reserved",
        Duration::from_secs(10),
        || {
            let reserved = ask(&cluster, &["inspect", "reserved", "-d", "w1"]);
            reserved["w1"][0]["id"] == json!(waiting)
        },
    );

    // pool-grow: three sleeps run at once on w1.
    let grown = ask(&cluster, &["control", "pool-grow", "2", "-d", "w1"]);
    assert_eq!(grown, json!({"w1": {"concurrency": 3}}));
    assert_eq!(concurrency(&cluster, "w1"), 3);
    let third = cluster.enqueue(&["chaos.sleep", "[3000]", "-Q", "solo"]);
    eventually(
        "three sleeps running on w1",
        Duration::from_secs(10),
        || {
            let running = active(&cluster, "w1");
            [&sleeper, &waiting, &third]
                .iter()
                .all(|id| running.contains(id))
        },
    );
    cluster
        .cmd(&["control", "pool-grow", "5", "-d", "w1"])
        .fails_with(2, "1 of 1 workers refused the request");
    let refused = cluster.cmd(&["control", "pool-grow", "5", "-d", "w1"]);
    assert!(
        refused.stdout.contains(
            "-> w1: ERROR the pool cannot grow to 8 slots: this worker has room for at most 4"
        ),
        "{}",
        refused.stdout
    );
    let shrunk = ask(&cluster, &["control", "pool-shrink", "-d", "w1"]);
    assert_eq!(shrunk, json!({"w1": {"concurrency": 2}}));

    // Consumers: w1 takes on queue `extra` and runs what is sent there.
    let added = ask(&cluster, &["control", "add-consumer", "extra", "-d", "w1"]);
    assert_eq!(added, json!({"w1": {"queues": ["solo", "extra"]}}));
    let extra = cluster.enqueue(&["chaos.sleep", "[10]", "-Q", "extra"]);
    let client = cluster.client().await;
    let done = all_final(&client, &[extra], Duration::from_secs(20)).await;
    assert_eq!(done[0].state, State::Success);
    assert_eq!(done[0].worker.as_deref(), Some("w1"));
    let cancelled = ask(
        &cluster,
        &["control", "cancel-consumer", "extra", "-d", "w1"],
    );
    assert_eq!(cancelled, json!({"w1": {"queues": ["solo"]}}));
    let stats = ask(&cluster, &["inspect", "stats", "-d", "w1"]);
    assert_eq!(stats["w1"]["queues"], json!(["solo"]));
    assert_eq!(stats["w1"]["pool"]["max_concurrency"], 4);

    // `control shutdown -d w2` stops exactly w2, warmly; w1 keeps serving.
    let stopped = ask(&cluster, &["control", "shutdown", "-d", "w2"]);
    assert_eq!(stopped, json!({"w2": {"shutdown": "warm"}}));
    let (code, log) = cluster.wait_exit(w2, Duration::from_secs(10));
    assert_eq!(code, Some(0), "a warm shutdown exits 0: {log}");
    let pings = ask(&cluster, &["inspect", "ping", "--timeout", "2s"]);
    assert_eq!(pings, json!({"w1": "pong"}));
    let all = [sleeper, waiting, third];
    for record in all_final(&client, &all, Duration::from_secs(30)).await {
        assert_eq!(record.state, State::Success, "{record:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn autoscale_grows_under_a_backlog_and_shrinks_when_idle() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker(
        "auto",
        &["--autoscale", "4,1", "--autoscale-keepalive", "1s"],
    );
    eventually("the worker to answer", Duration::from_secs(20), || {
        try_ask(&cluster, &["inspect", "ping", "-d", "auto"]).is_some()
    });
    assert_eq!(concurrency(&cluster, "auto"), 1, "starts at MIN");

    let client = cluster.client().await;
    let ids = enqueue_many(&client, "chaos.sleep", json!([1500]), 16).await;
    let mut most_running = 0;
    eventually("the pool to grow to MAX", Duration::from_secs(20), || {
        most_running = most_running.max(active(&cluster, "auto").len());
        concurrency(&cluster, "auto") == 4
    });
    eventually("four sleeps at once", Duration::from_secs(10), || {
        most_running = most_running.max(active(&cluster, "auto").len());
        most_running == 4
    });
    all_final(&client, &ids, Duration::from_secs(60)).await;
    eventually(
        "the idle pool to shrink to MIN",
        Duration::from_secs(10),
        || concurrency(&cluster, "auto") == 1,
    );

    // New bounds at run time.
    let set = ask(&cluster, &["control", "autoscale", "3,2", "-d", "auto"]);
    assert_eq!(set, json!({"auto": {"autoscale": {"max": 3, "min": 2}}}));
    eventually(
        "the pool to come up to the new MIN",
        Duration::from_secs(10),
        || concurrency(&cluster, "auto") == 2,
    );
    cluster
        .cmd(&["control", "autoscale", "9,2", "-d", "auto"])
        .fails_with(2, "refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn time_limits_and_scheduled_tasks_through_control_and_inspect() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker("w1", &["-c", "2"]);
    eventually("the worker to answer", Duration::from_secs(20), || {
        try_ask(&cluster, &["inspect", "ping"]).is_some()
    });

    let set = cluster.cmd(&["control", "time-limit", "chaos.sleep", "0.3"]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    let registered = ask(&cluster, &["inspect", "registered"]);
    let sleep = registered["w1"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|task| task["task"] == "chaos.sleep")
        .cloned()
        .expect("chaos.sleep is registered");
    assert_eq!(sleep["time_limit_ms"], 300);
    let slow = cluster.enqueue(&["chaos.sleep", "[3000]"]);
    let client = cluster.client().await;
    let record = &all_final(&client, &[slow], Duration::from_secs(20)).await[0];
    assert_eq!(record.state, State::Failure);
    assert_eq!(
        record.error.as_ref().map(|error| error.kind.as_str()),
        Some("time_limit_exceeded")
    );
    // A call's own limit still wins.
    let own = cluster.enqueue(&["chaos.sleep", "[600]", "--time-limit", "5s"]);
    let record = &all_final(&client, &[own], Duration::from_secs(20)).await[0];
    assert_eq!(record.state, State::Success, "{record:?}");
    let removed = cluster.cmd(&["control", "time-limit", "chaos.sleep", "none"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    cluster
        .cmd(&["control", "time-limit", "chaos.nope", "1"])
        .fails_with(5, "component `chaos` has no task `nope`");

    // A countdown waits in the broker, shown by `inspect scheduled`.
    let later = cluster.enqueue(&["chaos.sleep", "[1]", "--countdown", "60s"]);
    let scheduled = ask(&cluster, &["inspect", "scheduled"]);
    let entry = &scheduled["w1"][0];
    assert_eq!(entry["id"], json!(later));
    assert_eq!(entry["task"], "chaos.sleep");
    assert!(entry["eta_ms"].as_u64().expect("eta") > wtq_client::message::now_ms() + 50_000);
    let lines = cluster.cmd(&["inspect", "scheduled"]);
    assert!(lines.stdout.contains("  eta in "), "{}", lines.stdout);
}

/// Waits until `id` is STARTED.
async fn started(cluster: &Cluster, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(cluster, id).await != State::Started {
        assert!(Instant::now() < deadline, "{id} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_turns_a_warm_shutdown_cold() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let worker = cluster.worker("w1", &["-c", "2", "--shutdown-timeout", "60s"]);
    let long = cluster.enqueue(&["chaos.sleep", "[30000]"]);
    started(&cluster, &long).await;

    // `control shutdown` is warm, and a SIGTERM after it is still only the first signal:
    // the worker keeps waiting for its running task (up to a minute).
    ask(&cluster, &["control", "shutdown", "-d", "w1"]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(state(&cluster, &long).await, State::Started);
    cluster.signal(worker, "TERM");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(state(&cluster, &long).await, State::Started);
    let signalled = Instant::now();
    cluster.signal(worker, "TERM");
    let (code, log) = cluster.wait_exit(worker, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "a cold shutdown is prompt: {:?}",
        signalled.elapsed()
    );
    assert!(log.contains("SIGTERM: cold shutdown"), "{log}");
    let record = cluster
        .client()
        .await
        .result(&long)
        .record()
        .await
        .expect("record")
        .expect("exists");
    assert_eq!(record.state, State::Pending, "handed back: {record:?}");

    // SIGQUIT is cold at once; the task is handed back again and runs on the next worker.
    let next = cluster.worker("w2", &["-c", "1", "--shutdown-timeout", "60s"]);
    started(&cluster, &long).await;
    cluster.signal(next, "QUIT");
    let (code, log) = cluster.wait_exit(next, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("SIGQUIT: cold shutdown"), "{log}");
    assert_eq!(state(&cluster, &long).await, State::Pending);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serving_every_tenant_answers_for_all_of_them() {
    use wtq_client::broker::Tenancy;
    use wtq_client::tenancy::{Quotas, Tenant, namespace_of};
    let mut cluster = Cluster::start();
    let root = wtq_client::connect(&cluster.url()).await.expect("connect");
    let tenant = Tenant {
        name: "acme".into(),
        created_ms: wtq_client::message::now_ms(),
        quotas: Quotas::default(),
    };
    root.put_tenant(&tenant).await.expect("put tenant");
    let acme = format!("{}?namespace={}", cluster.url(), namespace_of("acme"));
    let path = crate::support::guest("chaos");
    let deploy =
        cluster
            .wtq
            .command(["deploy", path.to_str().expect("utf-8 path"), "--url", &acme]);
    assert_eq!(deploy.code, 0, "{}", deploy.stderr);
    let worker = cluster.worker("multi", &["--tenants", "-c", "2", "--max-concurrency", "3"]);
    let call = cluster
        .wtq
        .command(["call", "chaos.sleep", "[4000]", "--url", &acme]);
    assert_eq!(call.code, 0, "{}", call.stderr);
    let id = call.stdout.trim().to_string();

    eventually(
        "the tenant's sleep to show as active",
        Duration::from_secs(20),
        || {
            try_ask(&cluster, &["inspect", "active"]).is_some_and(|active| {
                active["multi"]
                    .as_array()
                    .is_some_and(|tasks| tasks.iter().any(|task| task["id"] == json!(id)))
            })
        },
    );
    let active = ask(&cluster, &["inspect", "active"]);
    assert_eq!(active["multi"][0]["tenant"], "acme");
    let stats = ask(&cluster, &["inspect", "stats"]);
    assert_eq!(stats["multi"]["tenants"], 1);
    assert_eq!(stats["multi"]["running"], 1);
    let grown = ask(&cluster, &["control", "pool-grow"]);
    assert_eq!(grown, json!({"multi": {"concurrency": 3}}));
    let refused = cluster.cmd(&["inspect", "registered"]);
    assert_eq!(refused.code, 2, "{}", refused.stdout);
    assert!(
        refused.stdout.contains("registered is per tenant"),
        "{}",
        refused.stdout
    );
    ask(&cluster, &["control", "shutdown", "-d", "multi"]);
    let (code, log) = cluster.wait_exit(worker, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
}
