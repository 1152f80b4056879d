//! The queue end to end: deploy, call, workers as real processes, results — and the faults a
//! production queue meets (killed, frozen and stopped workers, a restarted Redis).

use std::time::{Duration, Instant};

use serde_json::json;
use wtq_client::broker::Broker;
use wtq_client::message::State;

use crate::cluster::{Cluster, all_final, committed_once, enqueue_many};
use crate::support::guest;

/// Waits until `check` holds, polling a status the test observes from outside.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn state(cluster: &Cluster, id: &str) -> Option<State> {
    let client = cluster.client().await;
    client
        .result(id)
        .record()
        .await
        .expect("record")
        .map(|record| record.state)
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_call_and_read_the_result() {
    let mut cluster = Cluster::start();
    cluster.deploy("math");
    cluster.deploy("text");
    cluster.worker("w1", &["-c", "2"]);
    let run = cluster.cmd(&["call", "math.add", "[2,3]", "--wait", "--timeout", "20s"]);
    assert_eq!((run.code, run.stdout.trim()), (0, "5"), "{}", run.stderr);
    let run = cluster.cmd(&["call", "text.word_count", r#"["one two three"]"#, "--wait"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&run.stdout).expect("JSON")["words"],
        3
    );

    let id = cluster.enqueue(&["math.mul", "[6,7]"]);
    assert_eq!(id.len(), 36, "call prints only the task id: {id}");
    let run = cluster.cmd(&["result", &id, "--wait", "--timeout", "20s"]);
    assert_eq!((run.code, run.stdout.trim()), (0, "42"), "{}", run.stderr);
    let status = cluster.cmd(&["status", &id]);
    assert!(
        status.stdout.contains("SUCCESS") && status.stdout.contains("math.mul"),
        "{}",
        status.stdout
    );
    let record = cluster.cmd(&["status", &id, "--json"]).json();
    let attempt = &record["attempts"][0];
    assert_eq!(attempt["worker"], "w1");
    assert!(
        attempt["fuel"].as_u64().is_some_and(|fuel| fuel > 0),
        "{attempt}"
    );
    assert!(
        attempt["digest"]
            .as_str()
            .is_some_and(|digest| digest.len() == 64)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_tasks_keep_their_digest_across_redeploys() {
    let mut cluster = Cluster::start();
    let first = cluster.deploy("math");
    // A new version of `math` that no longer has `add`.
    let text = guest("text");
    let run = cluster.cmd(&["deploy", text.to_str().expect("utf-8"), "--name", "math"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let refused = cluster.cmd(&["call", "math.add", "[1,2]"]);
    refused.fails_with(5, "component `math` has no task `add`");
    assert!(
        refused.stderr.contains("word_count"),
        "lists the known tasks: {}",
        refused.stderr
    );

    cluster.worker("w1", &[]);
    let pinned = format!("math@{}.add", &first[..8]);
    let run = cluster.cmd(&[
        "call",
        &pinned,
        "[1,2]",
        "--wait",
        "--json",
        "--timeout",
        "20s",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["attempts"][0]["digest"], first.as_str());
    let listing = cluster.cmd(&["components"]).stdout;
    assert!(
        listing.contains(&format!("previous {}", &first[..12])),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn countdown_and_eta_are_respected() {
    let mut cluster = Cluster::start();
    cluster.deploy("math");
    cluster.worker("w1", &[]);
    let started = Instant::now();
    let id = cluster.enqueue(&["math.add", "[1,1]", "--countdown", "1s"]);
    let eta = wtq::units::format_rfc3339(wtq_client::message::now_ms() + 2000);
    let later = cluster.enqueue(&["math.add", "[2,2]", "--eta", &eta]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        state(&cluster, &id).await,
        Some(State::Pending),
        "not before its countdown"
    );
    let run = cluster.cmd(&["result", &id, "--wait", "--timeout", "20s"]);
    assert_eq!(run.stdout.trim(), "2");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let run = cluster.cmd(&["result", &later, "--wait", "--timeout", "20s", "--json"]);
    let record = run.json();
    let eta = record["message"]["eta_ms"].as_u64().expect("eta");
    let received = record["attempts"][0]["received_ms"]
        .as_u64()
        .expect("received");
    assert!(
        received >= eta,
        "delivered {} ms before its ETA",
        eta - received
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_task_is_revoked_and_never_runs() {
    let mut cluster = Cluster::start();
    cluster.deploy("math");
    let id = cluster.enqueue(&["math.add", "[1,1]", "--expires", "300ms"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.worker("w1", &[]);
    let run = cluster.cmd(&["result", &id, "--wait", "--timeout", "20s"]);
    run.fails_with(17, "was revoked (expired)");
    let record = cluster.cmd(&["status", &id, "--json"]).json();
    assert_eq!(record["attempts"], json!([]), "it never ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn higher_priorities_run_first_and_queues_route() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let mut low = Vec::new();
    for i in 0..3 {
        low.push(cluster.enqueue(&["chaos.echo", &format!("[{i}]")]));
    }
    let high = cluster.enqueue(&["chaos.echo", "[\"urgent\"]", "--priority", "9"]);
    let elsewhere = cluster.enqueue(&["chaos.echo", "[1]", "-Q", "reports"]);
    cluster.worker("w1", &["-c", "1", "--prefetch-multiplier", "1"]);
    let client = cluster.client().await;
    let mut ids = vec![high.clone()];
    ids.extend(low.iter().cloned());
    let records = all_final(&client, &ids, Duration::from_secs(20)).await;
    let received: Vec<u64> = records
        .iter()
        .map(|record| record.attempts[0].received_ms)
        .collect();
    assert!(
        received[0] <= received[1],
        "priority 9 before the older priority 0: {received:?}"
    );
    assert!(
        received[1] <= received[2] && received[2] <= received[3],
        "FIFO within a priority"
    );
    assert_eq!(
        state(&cluster, &elsewhere).await,
        Some(State::Pending),
        "a worker of `default` never takes `reports`"
    );
    cluster.worker("w2", &["-Q", "reports"]);
    all_final(&client, &[elsewhere], Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_with_backoff_then_fail() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker("w1", &[]);
    let run = cluster.cmd(&[
        "call",
        "chaos.fail",
        "[\"flaky\"]",
        "--max-retries",
        "2",
        "--retry-backoff",
        "200ms",
        "--no-retry-jitter",
        "--wait",
        "--json",
        "--timeout",
        "20s",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let record = run.json();
    assert_eq!(record["state"], "FAILURE");
    let attempts = record["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "the first run and two retries");
    let states: Vec<&str> = attempts
        .iter()
        .map(|a| a["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["RETRY", "RETRY", "FAILURE"]);
    let gap = |i: usize| {
        attempts[i + 1]["received_ms"].as_u64().unwrap_or(0)
            - attempts[i]["finished_ms"].as_u64().unwrap_or(0)
    };
    assert!(
        gap(0) >= 200 && gap(1) >= 400,
        "exponential backoff: {} ms then {} ms",
        gap(0),
        gap(1)
    );

    // A task asking to be retried gets Celery's default of 3 retries.
    let run = cluster.cmd(&[
        "call",
        "chaos.retry",
        "[50]",
        "--wait",
        "--json",
        "--timeout",
        "20s",
    ]);
    let record = run.json();
    assert_eq!(record["attempts"].as_array().map(Vec::len), Some(4));
    assert_eq!(record["error"]["kind"], "retries_exhausted");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_task_limits_ids_and_result_expiry_travel_with_the_call() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker("w1", &["-c", "3"]);
    let cases = [
        (
            vec!["chaos.spin", "--time-limit", "300ms"],
            "time_limit_exceeded",
        ),
        (vec!["chaos.spin", "--fuel", "1000000"], "out_of_fuel"),
        (
            vec!["chaos.alloc", "[64]", "--memory", "32MiB"],
            "memory_limit_exceeded",
        ),
    ];
    for (call, kind) in cases {
        let mut args = vec!["call"];
        args.extend(call.iter().copied());
        args.extend(["--wait", "--json", "--timeout", "20s"]);
        let run = cluster.cmd(&args);
        assert_eq!(run.code, 1, "{call:?}: {}", run.stderr);
        assert_eq!(run.json()["error"]["kind"], kind, "{call:?}");
    }
    let run = cluster.cmd(&[
        "call",
        "chaos.echo",
        "[1]",
        "--task-id",
        "order-7",
        "--result-expires",
        "1s",
    ]);
    assert_eq!(run.stdout.trim(), "order-7", "the chosen id");
    let run = cluster.cmd(&["result", "order-7", "--wait", "--timeout", "20s"]);
    assert_eq!(run.stdout.trim(), "1");
    cluster
        .cmd(&["call", "chaos.echo", "[2]", "--task-id", "order-7"])
        .fails_with(5, "task id `order-7` is already in use");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster
        .cmd(&["result", "order-7"])
        .fails_with(19, "no task order-7");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_enqueues_once() {
    let cluster = Cluster::start();
    cluster.deploy("math");
    let first = cluster.cmd(&["call", "math.add", "[1,2]", "--idempotency-key", "order-42"]);
    let second = cluster.cmd(&["call", "math.add", "[1,2]", "--idempotency-key", "order-42"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        first.stdout, second.stdout,
        "the second call returns the first task's id"
    );
    let client = cluster.client().await;
    assert_eq!(client.broker().depth("default").await.expect("depth"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_with_terminate_stops_a_spinning_task_within_100ms() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker("w1", &[]);
    let id = cluster.enqueue(&["chaos.spin", "--time-limit", "60s"]);
    eventually("the task to start", Duration::from_secs(20), || async {
        state(&cluster, &id).await == Some(State::Started)
    })
    .await;
    let client = cluster.client().await;
    let revoked_at = wtq_client::message::now_ms();
    let revoked = client.result(&id).revoke(true).await.expect("revoke");
    assert_eq!(
        revoked,
        wtq_client::broker::Revoked::Running { terminating: true }
    );
    let record = client
        .broker()
        .wait(&id, Duration::from_secs(5))
        .await
        .expect("wait")
        .expect("record");
    assert_eq!(record.state, State::Revoked);
    assert_eq!(record.error.map(|e| e.kind).as_deref(), Some("terminated"));
    // From the revoke to the moment the worker had stopped the call.
    let took = record.attempts[0].finished_ms.saturating_sub(revoked_at);
    assert!(took < 100, "stopped {took} ms after the revoke");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminate_outlives_the_worker_that_held_the_task() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let flags = ["--lease", "1s", "--reap-interval", "200ms"];
    let doomed = cluster.worker("doomed", &flags);
    let id = cluster.enqueue(&["chaos.sleep", "[3000]"]);
    eventually("the task to start", Duration::from_secs(20), || async {
        state(&cluster, &id).await == Some(State::Started)
    })
    .await;
    cluster.signal(doomed, "KILL");
    let run = cluster.cmd(&["revoke", &id, "--terminate"]);
    assert_eq!(run.stdout.trim(), format!("terminating {id}"));
    cluster.worker("next", &flags);
    let client = cluster.client().await;
    let record = client
        .broker()
        .wait(&id, Duration::from_secs(20))
        .await
        .expect("wait")
        .expect("record");
    assert_eq!(
        record.state,
        State::Revoked,
        "the next worker must not run it: {record:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_short_tasks_and_hands_back_the_rest_at_once() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let worker = cluster.worker(
        "w1",
        &["-c", "4", "--shutdown-timeout", "1s", "--lease", "60s"],
    );
    let short: Vec<String> = (0..2)
        .map(|_| cluster.enqueue(&["chaos.sleep", "[300]"]))
        .collect();
    let long: Vec<String> = (0..2)
        .map(|_| cluster.enqueue(&["chaos.sleep", "[30000]"]))
        .collect();
    for id in short.iter().chain(&long) {
        eventually("every task to start", Duration::from_secs(20), || async {
            matches!(
                state(&cluster, id).await,
                Some(State::Started | State::Success)
            )
        })
        .await;
    }
    let signalled = Instant::now();
    cluster.signal(worker, "TERM");
    let (code, stderr) = cluster.wait_exit(worker, Duration::from_secs(10));
    assert_eq!(code, Some(0), "warm shutdown exits 0: {stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "exited after {:?}",
        signalled.elapsed()
    );
    let client = cluster.client().await;
    for id in &short {
        assert_eq!(
            state(&cluster, id).await,
            Some(State::Success),
            "finished in time and acknowledged"
        );
    }
    for id in &long {
        let record = client
            .result(id)
            .record()
            .await
            .expect("record")
            .expect("exists");
        assert_eq!(
            record.state,
            State::Pending,
            "back in the queue, not waiting for a lease to expire"
        );
        assert_eq!(
            record.deliveries, 0,
            "a hand-back does not count as a delivery"
        );
    }
    assert_eq!(client.broker().depth("default").await.expect("depth"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_spinning_on_every_slot_for_three_leases_keeps_its_leases() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker(
        "w1",
        &["-c", "2", "--lease", "1s", "--reap-interval", "200ms"],
    );
    cluster.worker(
        "w2",
        &[
            "-c",
            "2",
            "--lease",
            "1s",
            "--reap-interval",
            "200ms",
            "-Q",
            "default",
        ],
    );
    let ids: Vec<String> = (0..4)
        .map(|_| cluster.enqueue(&["chaos.spin", "--time-limit", "3500ms"]))
        .collect();
    let client = cluster.client().await;
    let records = all_final(&client, &ids, Duration::from_secs(30)).await;
    for record in records {
        assert_eq!(record.deliveries, 1, "no lease expired: {record:?}");
        assert_eq!(record.attempts.len(), 1);
        assert_eq!(
            record.error.map(|e| e.kind).as_deref(),
            Some("time_limit_exceeded")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_loses_no_task_and_none_commits_twice() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let client = cluster.client().await;
    let ids = enqueue_many(&client, "chaos.sleep", json!([20]), 5000).await;
    let flags = ["-c", "64", "--lease", "1s", "--reap-interval", "200ms"];
    let victim = cluster.worker("victim", &flags);
    cluster.worker("survivor", &flags);
    eventually(
        "the victim to be mid-way",
        Duration::from_secs(30),
        || async { client.broker().depth("default").await.expect("depth") < 3500 },
    )
    .await;
    cluster.signal(victim, "KILL");
    let records = all_final(&client, &ids, Duration::from_secs(90)).await;
    for record in &records {
        committed_once(record);
    }
    // The attempts are stored by number, so a second commit of one would only overwrite it:
    // Redis also counts the commits.
    for id in &ids {
        let key = format!("wtq:{{default}}:task:{id}");
        let commits = cluster.redis.command(&["HGET", &key, "commits"]).text();
        assert_eq!(commits, "1", "task {id} committed {commits} times");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_worker_cannot_commit_its_late_results() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let flags = ["-c", "4", "--lease", "1s", "--reap-interval", "200ms"];
    let frozen = cluster.worker("frozen", &flags);
    let ids: Vec<String> = (0..4)
        .map(|_| cluster.enqueue(&["chaos.sleep", "[1500]"]))
        .collect();
    for id in &ids {
        eventually(
            "the frozen worker to hold every task",
            Duration::from_secs(20),
            || async { state(&cluster, id).await == Some(State::Started) },
        )
        .await;
    }
    cluster.signal(frozen, "STOP");
    cluster.worker("rescuer", &flags);
    let client = cluster.client().await;
    let records = all_final(&client, &ids, Duration::from_secs(30)).await;
    cluster.signal(frozen, "CONT");
    // Give the resumed worker time to try to settle its stale leases.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &ids {
        let record = client
            .result(id)
            .record()
            .await
            .expect("record")
            .expect("exists");
        committed_once(&record);
        assert_eq!(
            record.attempts[0].worker, "rescuer",
            "the result is the rescuer's"
        );
    }
    assert_eq!(records.len(), 4);
    cluster.signal(frozen, "TERM");
    let (_, stderr) = cluster.wait_exit(frozen, Duration::from_secs(10));
    assert!(
        stderr.contains("4 refused as stale"),
        "the frozen worker's late results were refused: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_is_dead_lettered_after_max_deliveries() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    let id = cluster.enqueue(&["chaos.sleep", "[60000]", "--max-deliveries", "2"]);
    let flags = ["--lease", "1s", "--reap-interval", "200ms"];
    let client = cluster.client().await;
    for delivery in 1..=2u32 {
        let worker = cluster.worker(&format!("crashing-{delivery}"), &flags);
        eventually(
            "the message to be delivered",
            Duration::from_secs(20),
            || async {
                let record = client
                    .result(&id)
                    .record()
                    .await
                    .expect("record")
                    .expect("exists");
                record.deliveries == delivery && record.state == State::Started
            },
        )
        .await;
        cluster.signal(worker, "KILL");
    }
    cluster.worker("reaper", &flags);
    let record = client
        .broker()
        .wait(&id, Duration::from_secs(20))
        .await
        .expect("wait")
        .expect("record");
    assert_eq!(record.state, State::Failure);
    assert_eq!(
        record.error.as_ref().map(|e| e.kind.as_str()),
        Some("dead_lettered")
    );
    assert_eq!(record.deliveries, 2, "exactly --max-deliveries deliveries");
    let listed = cluster.cmd(&["dead", "list"]).stdout;
    assert!(listed.contains(&id), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_with_aof_loses_no_acknowledged_enqueue() {
    let mut cluster = Cluster::durable();
    cluster.deploy("chaos");
    let client = cluster.client().await;
    let ids = enqueue_many(&client, "chaos.sleep", json!([10]), 300).await;
    cluster.worker("w1", &["-c", "4"]);
    eventually("work to be under way", Duration::from_secs(20), || async {
        client.broker().depth("default").await.expect("depth") < 280
    })
    .await;
    cluster.redis.restart();
    let records = all_final(&client, &ids, Duration::from_secs(60)).await;
    for record in &records {
        assert_eq!(record.state, State::Success, "{record:?}");
    }
}

#[test]
fn rediss_talks_to_redis_over_verified_tls() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = |name: &str| {
        dir.path()
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_string()
    };
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    // A private CA and a server certificate for 127.0.0.1.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=wtq test CA",
        "-keyout",
        &file("ca.key"),
        "-out",
        &file("ca.crt"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &file("server.key"),
        "-out",
        &file("server.csr"),
    ]);
    std::fs::write(file("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &file("server.csr"),
        "-CA",
        &file("ca.crt"),
        "-CAkey",
        &file("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &file("ext.cnf"),
        "-out",
        &file("server.crt"),
    ]);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port()
        .to_string();
    let _redis = crate::redis_server::RedisServer::start_with(
        crate::redis_server::Options::ephemeral().with(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &file("server.crt"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "no",
        ]),
    );
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let wtq = crate::support::Wtq::new();
    let math = guest("math");
    let deploy = ["deploy", math.to_str().expect("utf-8"), "--url", &url];
    let run = wtq.command_with_env(deploy, &[("SSL_CERT_FILE", &file("ca.crt"))]);
    assert_eq!(
        run.code, 0,
        "deploy over TLS with the CA trusted: {}",
        run.stderr
    );
    let run = wtq.command_with_env(
        ["components", "--url", &url],
        &[("SSL_CERT_FILE", &file("ca.crt"))],
    );
    assert!(run.stdout.starts_with("math "), "{}", run.stdout);
    // An unknown issuer is refused, not trusted.
    wtq.command(["components", "--url", &url])
        .fails_with(69, "certificate");
}

mod bad_input {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn garbage_placed_in_a_queue_by_hand_is_dead_lettered_and_the_worker_carries_on() {
        let mut cluster = Cluster::start();
        cluster.deploy("math");
        // What an operator might write by hand: a body that is not a task message, and an id
        // with no body at all.
        let task = "wtq:{default}:task:junk";
        cluster.redis.command(&[
            "HSET",
            task,
            "msg",
            "{not json",
            "state",
            "PENDING",
            "queue",
            "default",
            "score",
            "1",
            "max_deliveries",
            "3",
            "result_ttl",
            "60000",
        ]);
        cluster
            .redis
            .command(&["ZADD", "wtq:{default}:ready:default", "1", "junk"]);
        cluster
            .redis
            .command(&["ZADD", "wtq:{default}:ready:default", "2", "ghost"]);
        cluster.worker("w1", &[]);
        let client = cluster.client().await;
        let record = client
            .broker()
            .wait("junk", Duration::from_secs(20))
            .await
            .expect("wait")
            .expect("record");
        assert_eq!(record.state, State::Failure);
        assert_eq!(
            record.error.map(|e| e.kind).as_deref(),
            Some("malformed_message")
        );
        let listed = cluster.cmd(&["dead", "list"]).stdout;
        assert!(
            listed.contains("junk") && listed.contains("malformed_message"),
            "{listed}"
        );
        let run = cluster.cmd(&["call", "math.add", "[1,2]", "--wait", "--timeout", "20s"]);
        assert_eq!(
            run.stdout.trim(),
            "3",
            "the worker carries on: {}",
            run.stderr
        );
    }

    #[test]
    fn an_unreachable_redis_fails_fast() {
        let wtq = crate::support::Wtq::new();
        for command in [
            vec!["call", "math.add", "[1,2]"],
            vec!["worker"],
            vec!["result", "x"],
        ] {
            let mut args: Vec<&str> = command.clone();
            args.extend(["--url", "redis://127.0.0.1:1"]);
            let run = wtq.command(&args);
            run.fails_with(69, "cannot reach Redis at redis://127.0.0.1:1");
            assert!(
                run.elapsed < Duration::from_secs(2),
                "{command:?} took {:?}",
                run.elapsed
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn calls_the_registry_cannot_serve_are_refused() {
        let cluster = Cluster::start();
        cluster.deploy("math");
        cluster
            .cmd(&["call", "maths.add", "[1,2]"])
            .fails_with(5, "unknown component `maths`; deployed: math");
        cluster
            .cmd(&["call", "math.div", "[1,2]"])
            .fails_with(5, "has no task `div`; it offers: add, mul, xsum, fib");
        cluster
            .cmd(&["call", "math.add", "[1,"])
            .fails_with(2, "malformed JSON");
        cluster
            .cmd(&["call", "math.add", "[1,2,3]"])
            .fails_with(5, "takes 2 arguments but 3");
        cluster
            .cmd(&["call", "math"])
            .fails_with(5, "invalid task address `math`");
        // Too large for a command-line argument (the OS caps one at 128 KiB): from a file.
        let dir = tempfile::tempdir().expect("temporary directory");
        let big = dir.path().join("big.json");
        std::fs::write(&big, format!("[\"{}\", 1]", "x".repeat(1_100_000))).expect("write");
        let from_file = format!("@{}", big.display());
        cluster
            .cmd(&["call", "math.add", &from_file])
            .fails_with(15, "over the limit");
        cluster
            .cmd(&["result", "no-such-id"])
            .fails_with(19, "no task no-such-id");
        cluster
            .cmd(&[
                "call",
                "math.add",
                "[1,2]",
                "--result-expires",
                "3000000000000h",
            ])
            .fails_with(2, "too long: at most 10 years");
        cluster
            .cmd(&["result", "x", "--wait", "--timeout", "4000000000000000h"])
            .fails_with(2, "too long");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn deploys_of_bad_files_store_nothing() {
        let cluster = Cluster::start();
        let dir = tempfile::tempdir().expect("temporary directory");
        let text = dir.path().join("notes.wasm");
        std::fs::write(&text, "hello").expect("write");
        cluster
            .cmd(&["deploy", text.to_str().expect("utf-8")])
            .fails_with(6, "not a WebAssembly file");
        let math = guest("math");
        cluster
            .cmd(&[
                "deploy",
                math.to_str().expect("utf-8"),
                "--max-size",
                "1KiB",
            ])
            .fails_with(6, "over the upload limit");
        assert!(
            cluster
                .cmd(&["components"])
                .stdout
                .contains("no components deployed")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_shows_the_tasks_progress_on_stderr() {
    let mut cluster = Cluster::start();
    cluster.deploy("chaos");
    cluster.worker("w1", &["-c", "2"]);
    let run = cluster.cmd(&[
        "call",
        "chaos.progress",
        "[5, 150]",
        "--wait",
        "--timeout",
        "30s",
        "--progress",
    ]);
    assert_eq!((run.code, run.stdout.trim()), (0, "5"), "{}", run.stderr);
    // Steps of 150 ms are seen while the task runs (the worker writes progress every 100 ms).
    assert!(
        run.stderr.contains("[######") && run.stderr.contains("/5  step "),
        "{:?}",
        run.stderr
    );

    let id = cluster.enqueue(&["chaos.progress", "[3, 150]"]);
    let run = cluster.cmd(&["result", &id, "--wait", "--progress"]);
    assert_eq!((run.code, run.stdout.trim()), (0, "3"), "{}", run.stderr);
    assert!(run.stderr.contains("/3  step "), "{:?}", run.stderr);
    // Without a terminal and without --progress, stderr stays quiet.
    let run = cluster.cmd(&["result", &id, "--wait"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));
}
