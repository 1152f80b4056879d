//! `wtq beat` end to end: two beat processes against one private Redis (one leads, the other
//! takes over when the leader is killed), `wtq schedule add|list|remove`, and the schedule
//! routes of `wtq up`, whose in-process beat fires what they store.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::service::{Service, http_client};
use crate::support::Wtq;

/// The lease of the test's beats: a dead leader's successor fires within this plus a third.
const LEASE_MS: u64 = 2000;

/// A `wtq beat` process, killed on drop.
struct Beat {
    child: Child,
    name: String,
}

impl Beat {
    fn start(cluster: &Cluster, name: &str, schedule: &std::path::Path) -> Beat {
        let log = cluster.wtq.cache_dir().join(format!("beat-{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_wtq"))
            .args(["beat", "--url", &cluster.url(), "-n", name, "--lease", "2s"])
            .arg("--schedule")
            .arg(schedule)
            .env("WTQ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("beat log file"))
            .spawn()
            .expect("wtq beat starts");
        Beat {
            child,
            name: name.to_string(),
        }
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder of the beat lease, if any.
fn leader(cluster: &Cluster) -> Option<String> {
    let value = cluster.redis.command(&["GET", "wtq:{default}:beat-leader"]);
    match value {
        crate::redis_server::Reply::Bulk(None) => None,
        value => value
            .text()
            .split_once(':')
            .map(|(_, holder)| holder.to_string()),
    }
}

/// Every enqueued task's (args JSON, ETA): the ETA is the tick the beat fired it for.
fn fired(cluster: &Cluster) -> Vec<(String, u64)> {
    cluster
        .redis
        .keys()
        .into_iter()
        .filter(|key| key.starts_with("wtq:{default}:task:"))
        .map(|key| {
            let message: Value =
                serde_json::from_str(&cluster.redis.command(&["HGET", &key, "msg"]).text())
                    .expect("message JSON");
            let args = message["args"]
                .as_str()
                .expect("args JSON text")
                .replace(' ', "");
            let eta = message["eta_ms"]
                .as_u64()
                .expect("a fired task has its tick as ETA");
            (args, eta)
        })
        .collect()
}

fn now_ms() -> u64 {
    wtq_client::message::now_ms()
}

#[test]
fn two_beats_fire_every_tick_once_and_the_survivor_takes_over() {
    let cluster = Cluster::start();
    cluster.deploy("math");
    let schedule = cluster.wtq.cache_dir().join("schedule.toml");
    std::fs::write(
        &schedule,
        r#"
        # Every 2 s, at even seconds; a missed tick: only the latest fires.
        [[schedule]]
        name = "interval"
        task = "math.add"
        args = [1, 2]
        every = "2s"

        # Every second (cron with seconds); missed ticks all fire.
        [[schedule]]
        name = "second"
        task = "math.add"
        args = [3, 4]
        cron = "* * * * * *"
        tz = "Europe/Paris"
        missed = "catch_up"
        catch_up_window = "1m"
        "#,
    )
    .expect("schedule file");
    let mut beats = vec![
        Beat::start(&cluster, "beat-a", &schedule),
        Beat::start(&cluster, "beat-b", &schedule),
    ];

    // One of them leads within a moment, and both entries start firing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(holder) = leader(&cluster) {
            break holder;
        }
        assert!(Instant::now() < deadline, "no beat took the lease");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(6));

    // kill -9 the leader mid-way: the other takes over within the lease time.
    let index = beats
        .iter()
        .position(|beat| beat.name == first)
        .expect("the leader is one of ours");
    let mut dead = beats.remove(index);
    let killed_ms = now_ms();
    dead.child.kill().expect("kill -9 the leader");
    dead.child.wait().expect("reaped");
    let deadline = Instant::now() + Duration::from_millis(LEASE_MS + 2000);
    let second = loop {
        match leader(&cluster) {
            Some(holder) if holder != first => break holder,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no other beat took over within the lease time"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(second, first);
    std::thread::sleep(Duration::from_secs(6));
    let stopped_ms = now_ms();
    drop(beats);

    let mut counts: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for tick in fired(&cluster) {
        *counts.entry(tick).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "ticks fired twice: {duplicates:?}");
    let ticks = |args: &str| -> Vec<u64> {
        counts
            .keys()
            .filter(|(a, _)| a == args)
            .map(|(_, tick)| *tick)
            .collect()
    };

    // The every-second entry catches up: no tick is missing from its first to its last,
    // across the handover, and the survivor went on to the end.
    let seconds = ticks("[3,4]");
    assert!(seconds.len() >= 10, "every-second ticks: {seconds:?}");
    for pair in seconds.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "a gap in {seconds:?}");
    }
    assert!(seconds[0] % 1000 == 0, "{seconds:?}");
    assert!(
        *seconds.last().expect("ticks") + 2000 >= stopped_ms,
        "the survivor stopped firing: last {seconds:?}, stopped at {stopped_ms}"
    );
    assert!(
        seconds
            .iter()
            .any(|tick| *tick > killed_ms + LEASE_MS + 1000),
        "nothing fired after the handover: {seconds:?} (killed at {killed_ms})"
    );

    // The 2 s interval skips missed ticks but the latest: at most one tick missing in a row.
    let intervals = ticks("[1,2]");
    assert!(intervals.len() >= 4, "interval ticks: {intervals:?}");
    for pair in intervals.windows(2) {
        assert!(pair[0] % 2000 == 0, "{intervals:?}");
        assert!(
            pair[1] - pair[0] <= 4000,
            "more than one tick missing: {intervals:?}"
        );
    }
}

#[test]
fn schedule_add_list_remove() {
    let cluster = Cluster::start();
    let run = cluster.cmd(&[
        "schedule",
        "add",
        "nightly",
        "--task",
        "math.add",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Paris",
        "--args",
        "[1, 2]",
        "--missed",
        "catch_up",
        "--overlap",
        "skip",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = cluster.cmd(&[
        "schedule", "add", "often", "--task", "math.add", "--every", "5m",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let run = cluster.cmd(&["schedule", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list = run.json();
    assert_eq!(list[0]["name"], "nightly");
    assert_eq!(
        list[0]["trigger"],
        json!({"cron": {"expr": "0 3 * * *", "tz": "Europe/Paris"}})
    );
    assert_eq!(list[0]["call"]["args"], json!([1, 2]));
    assert_eq!(list[0]["missed"], "catch_up");
    assert_eq!(list[0]["overlap"], "skip");
    assert_eq!(list[1]["trigger"], json!({"every_ms": 300_000}));
    let run = cluster.cmd(&["schedule", "list"]);
    assert!(
        run.stdout.contains("often  math.add  every"),
        "{}",
        run.stdout
    );

    // Refused before anything is stored: the reason names what is wrong.
    cluster
        .cmd(&[
            "schedule", "add", "bad", "--task", "math.add", "--cron", "* * *",
        ])
        .fails_with(2, "expected 5 fields");
    cluster
        .cmd(&[
            "schedule",
            "add",
            "bad",
            "--task",
            "math.add",
            "--cron",
            "* * * * *",
            "--tz",
            "Mars/Olympus",
        ])
        .fails_with(2, "unknown time zone");

    let run = cluster.cmd(&["schedule", "remove", "nightly"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    cluster
        .cmd(&["schedule", "remove", "nightly"])
        .fails_with(2, "no schedule `nightly`");
    let list = cluster.cmd(&["schedule", "list", "--json"]).json();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn wtq_up_serves_schedules_and_fires_them() {
    let wtq = Wtq::new();
    let service = Service::up(&wtq, &[]);
    let run = service.cmd(
        &wtq,
        None,
        &[
            "deploy",
            crate::support::guest("math").to_str().expect("utf-8"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let http = http_client();
    let url = |path: &str| format!("{}{path}", service.url);

    let entry = json!({
        "name": "tick",
        "call": {"task": "math.add", "args": [20, 22]},
        "trigger": {"every_ms": 1000}
    });
    let response = http
        .post(url("/v1/schedules"))
        .json(&entry)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    let bad = json!({"name": "bad", "call": {"task": "math.add"}, "trigger": {"every_ms": 5}});
    let response = http
        .post(url("/v1/schedules"))
        .json(&bad)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);

    // The in-process beat fires it, and the in-process worker runs it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let task = loop {
        let list: Value = http
            .get(url("/v1/schedules"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        assert_eq!(list[0]["name"], "tick", "{list}");
        if let Some(task) = list[0]["fired"]["task"].as_str() {
            break task.to_string();
        }
        assert!(Instant::now() < deadline, "never fired: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let record: Value = http
        .get(url(&format!("/v1/tasks/{task}/wait?timeout_ms=10000")))
        .send()
        .await
        .expect("wait")
        .json()
        .await
        .expect("JSON");
    assert_eq!(record["state"], "SUCCESS", "{record}");

    let response = http
        .delete(url("/v1/schedules/tick"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 200);
    let response = http
        .delete(url("/v1/schedules/tick"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 404);
}

/// Creates tenant `name` in the registry of the cluster's Redis; returns its namespace's URL.
async fn tenant(cluster: &Cluster, name: &str) -> String {
    use wtq_client::broker::Tenancy;
    use wtq_client::tenancy::{Quotas, Tenant, namespace_of};
    let root = wtq_client::connect(&cluster.url()).await.expect("connect");
    let tenant = Tenant {
        name: name.to_string(),
        created_ms: now_ms(),
        quotas: Quotas::default(),
    };
    root.put_tenant(&tenant).await.expect("put tenant");
    format!("{}?namespace={}", cluster.url(), namespace_of(name))
}

/// The tasks waiting in a namespace's default queue.
async fn waiting(url: &str) -> usize {
    use wtq_client::broker::Broker;
    let broker = wtq_client::connect(url).await.expect("connect");
    broker.depth("default").await.expect("depth")
}

#[tokio::test(flavor = "multi_thread")]
async fn beat_with_tenants_fires_every_tenants_stored_entries() {
    let cluster = Cluster::start();
    let acme = tenant(&cluster, "acme").await;
    let add = |url: &str, name: &str| {
        let path = crate::support::guest("math");
        let run = cluster
            .wtq
            .command(["deploy", path.to_str().expect("utf-8 path"), "--url", url]);
        assert_eq!(run.code, 0, "deploy: {}", run.stderr);
        let run = cluster.wtq.command([
            "schedule", "add", name, "--task", "math.add", "--args", "[1, 2]", "--every", "1s",
            "--url", url,
        ]);
        assert_eq!(run.code, 0, "schedule add: {}", run.stderr);
    };
    add(&acme, "acme-tick");
    let log = cluster.wtq.cache_dir().join("beat-tenants.log");
    let mut beat = Command::new(env!("CARGO_BIN_EXE_wtq"))
        .args(["beat", "--tenants", "--url", &cluster.url(), "-n", "b1"])
        .env("WTQ_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("beat log file"))
        .spawn()
        .expect("wtq beat starts");

    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting(&acme).await < 2 {
        assert!(Instant::now() < deadline, "acme's entry did not fire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A tenant created while the beat runs is picked up; the root namespace has nothing.
    let later = tenant(&cluster, "later").await;
    add(&later, "later-tick");
    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting(&later).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the later tenant's entry did not fire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(waiting(&cluster.url()).await, 0);
    let _ = beat.kill();
    let _ = beat.wait();
    cluster
        .cmd(&["beat", "--tenants", "--schedule", "x.toml"])
        .fails_with(2, "--schedule");
}
