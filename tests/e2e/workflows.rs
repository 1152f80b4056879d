//! Workflows end to end: documents submitted with `wtq workflow submit` and the Rust builder,
//! run by real workers over a private Redis; chords under a killed worker, failures and their
//! callbacks, every nested form, revoking a whole workflow.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wtq_client::broker::Broker;
use wtq_client::message::State;
use wtq_client::workflow::{Node, chain, chord, group, task};
use wtq_client::{AnyBroker, Client};

use crate::cluster::Cluster;
use crate::redis_server::Reply;

/// A cluster with `math` and `chaos` deployed and one worker.
fn cluster() -> Cluster {
    let mut cluster = Cluster::start();
    cluster.deploy("math");
    cluster.deploy("chaos");
    cluster.worker("w1", &["-c", "4"]);
    cluster
}

/// `wtq workflow submit - --wait` with `document` on standard input.
fn submit_and_wait(cluster: &Cluster, document: &Value) -> crate::support::Run {
    let file = cluster.wtq.cache_dir().join("workflow.json");
    std::fs::write(&file, document.to_string()).expect("document written");
    cluster.cmd(&[
        "workflow",
        "submit",
        file.to_str().expect("utf-8 path"),
        "--wait",
        "--timeout",
        "60s",
    ])
}

async fn result_of(client: &Client<AnyBroker>, workflow: &Node) -> Value {
    let submitted = client.submit(workflow, None).await.expect("submit");
    submitted
        .get(Duration::from_secs(60))
        .await
        .unwrap_or_else(|error| panic!("workflow {}: {error}", submitted.id()))
}

fn add(x: i64, y: i64) -> Node {
    task("math.add").args(json!([x, y])).into()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chord_sums_its_header_and_a_chain_passes_each_result_on() {
    let cluster = cluster();
    let header: Vec<Value> = (0..10)
        .map(|i| json!({"task": "math.add", "args": [i, i]}))
        .collect();
    let document = json!({"chord": {"header": header, "body": {"task": "math.xsum"}}});
    let run = submit_and_wait(&cluster, &document);
    assert_eq!((run.code, run.stdout.trim()), (0, "90"), "{}", run.stderr);

    // chain(add(4, 9), mul(2), add(8)): ((4 + 9) * 2) + 8.
    let document = json!({"chain": [
        {"task": "math.add", "args": [4, 9]},
        {"task": "math.mul", "args": [2]},
        {"task": "math.add", "args": [8]},
    ]});
    let run = submit_and_wait(&cluster, &document);
    assert_eq!((run.code, run.stdout.trim()), (0, "34"), "{}", run.stderr);

    // The same through the Rust builder; then `wtq result` shows the tree and each state.
    let client = cluster.client().await;
    let workflow = chain([
        task("math.add").args(json!([4, 9])),
        task("math.mul").args(json!([2])),
        task("math.add").args(json!([8])),
    ]);
    let submitted = client
        .submit(&workflow, Some("my-chain"))
        .await
        .expect("submit");
    assert_eq!(
        submitted
            .get(Duration::from_secs(30))
            .await
            .expect("result"),
        json!(34)
    );
    let shown = cluster.cmd(&["result", "my-chain"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let lines: Vec<&str> = shown.stdout.lines().collect();
    assert_eq!(lines[0], "workflow my-chain");
    assert_eq!(lines[1].trim(), "chain of 3");
    for (line, (task, value)) in
        lines[2..5]
            .iter()
            .zip([("math.add", "13"), ("math.mul", "26"), ("math.add", "34")])
    {
        assert!(
            line.trim().starts_with(task) && line.ends_with(&format!("SUCCESS = {value}")),
            "{line}"
        );
    }
    assert_eq!(lines.last(), Some(&"result: 34"));
    let tree = cluster.cmd(&["result", "my-chain", "--json"]).json();
    assert_eq!(tree["result"], 34);
    assert_eq!(
        tree["states"].as_object().map(|states| states.len()),
        Some(3)
    );

    // A second workflow with the same id is refused, and nothing of it runs.
    let again = client.submit(&workflow, Some("my-chain")).await;
    assert!(
        again.is_err_and(|error| error.to_string().contains("my-chain")),
        "a duplicate workflow id is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_header_member_fails_the_chord_naming_it_and_link_error_fires_once() {
    let cluster = cluster();
    let document = json!({"chord": {
        "header": [
            {"task": "math.add", "args": [1, 1]},
            {"task": "chaos.fail", "args": ["boom"]},
            {"task": "chaos.fail", "args": ["bang"]},
            {"task": "math.add", "args": [2, 2]},
        ],
        "body": {"task": "math.xsum", "link_error": [{"task": "chaos.echo"}]}
    }});
    let run = submit_and_wait(&cluster, &document);
    run.fails_with(1, "chord header member");
    assert!(run.stderr.contains("chaos.fail"), "{}", run.stderr);

    let client = cluster.client().await;
    let workflow = chord(
        [
            add(1, 1),
            task("chaos.fail").args(json!(["boom"])).into(),
            add(2, 2),
        ],
        Node::from(task("math.xsum")).link_error(task("chaos.echo").task_id("errback")),
    );
    let submitted = client.submit(&workflow, None).await.expect("submit");
    let error = submitted
        .get(Duration::from_secs(30))
        .await
        .expect_err("the chord fails")
        .to_string();
    assert!(
        error.contains("upstream_failed") && error.contains("chord header member 1, chaos.fail"),
        "{error}"
    );
    // The errback runs once, with the failure of the member that failed.
    let errback = client.result("errback");
    let failure = errback
        .get(Duration::from_secs(30))
        .await
        .expect("errback ran");
    assert_eq!(failure["kind"], "task_failed");
    assert_eq!(failure["message"], "boom");
    assert_eq!(failure["task"], "chaos.fail");
    let record = errback.record().await.expect("record").expect("exists");
    assert_eq!(record.attempts.len(), 1, "{:?}", record.attempts);

    // allow_failures: the callback receives the failure in the member's place.
    let workflow = chord(
        [add(1, 1), task("chaos.fail").args(json!(["boom"])).into()],
        task("chaos.echo"),
    )
    .allow_failures();
    let list = result_of(&client, &workflow).await;
    assert_eq!(list[0], json!(2));
    assert_eq!(list[1]["error"]["message"], "boom");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_nested_form_runs() {
    let cluster = cluster();
    let client = cluster.client().await;

    // A group followed by a task in a chain becomes a chord.
    let node = chain([group([add(1, 1), add(2, 2)]), task("math.xsum").into()]);
    assert_eq!(result_of(&client, &node).await, json!(6));

    // A chain of groups: each task of the second group receives the first group's list.
    let node = chain([
        group([add(1, 1), add(2, 2)]),
        group([task("math.xsum"), task("math.xsum")]),
    ]);
    assert_eq!(result_of(&client, &node).await, json!([6, 6]));

    // A group of chains: results in group order, not completion order.
    let slow_first = chain([
        task("chaos.sleep").args(json!([300])),
        task("math.add").args(json!([1])),
    ]);
    let node = group([
        slow_first,
        chain([add(2, 2), task("math.mul").args(json!([3])).into()]),
    ]);
    let submitted = client.submit(&node, None).await.expect("submit");
    assert!(
        !submitted.ready().await.expect("ready"),
        "the sleeper is still going"
    );
    let joined = submitted.get(Duration::from_secs(60)).await.expect("join");
    assert_eq!(joined, json!([301, 12]));
    assert!(submitted.ready().await.expect("ready"));
    assert_eq!(submitted.completed_count().await.expect("count"), 2);

    // A chord inside a chain, fed by the step before it and feeding the step after it.
    let node = chain([
        add(1, 1),
        chord(
            [
                task("math.add").args(json!([1])),
                task("math.add").args(json!([2])),
            ],
            task("math.xsum"),
        ),
        task("math.mul").args(json!([10])).into(),
    ]);
    assert_eq!(result_of(&client, &node).await, json!(70));

    // A chord whose header holds a group and a chain, and an immutable step.
    let node = chain([
        chord(
            [
                group([add(1, 0), add(2, 0)]),
                chain([add(3, 0), task("math.add").args(json!([4])).into()]),
            ],
            task("chaos.echo"),
        ),
        task("math.add").args(json!([5, 5])).immutable().into(),
    ]);
    assert_eq!(result_of(&client, &node).await, json!(10));
    let node = chord(
        [
            group([add(1, 0), add(2, 0)]),
            chain([add(3, 0), task("math.add").args(json!([4])).into()]),
        ],
        task("chaos.echo"),
    );
    assert_eq!(result_of(&client, &node).await, json!([[1, 2], 7]));

    // link: a callback receives the result; the workflow's own result is unchanged.
    let node = Node::from(task("math.add").args(json!([2, 3])))
        .link(task("math.mul").args(json!([10])).task_id("linked"));
    assert_eq!(result_of(&client, &node).await, json!(5));
    let linked = client.result("linked").get(Duration::from_secs(30)).await;
    assert_eq!(linked.expect("link ran"), json!(50));
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_workflow_revokes_every_member_not_yet_finished() {
    let mut cluster = Cluster::start();
    cluster.deploy("math");
    cluster.deploy("chaos");
    let client = cluster.client().await;
    let workflow = chain([
        Node::from(task("chaos.sleep").args(json!([20_000])).task_id("sleeper")),
        chord(
            [
                task("math.add").args(json!([1])),
                task("math.add").args(json!([2])),
            ],
            task("math.xsum"),
        ),
        task("math.add").args(json!([1])).into(),
    ]);
    let submitted = client
        .submit(&workflow, Some("doomed"))
        .await
        .expect("submit");
    cluster.worker("w1", &["-c", "2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.result("sleeper").state().await.expect("state") != State::Started {
        assert!(Instant::now() < deadline, "the first step never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = cluster.cmd(&["revoke", "doomed", "--terminate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("of workflow doomed"), "{}", run.stdout);
    let started = Instant::now();
    let error = submitted
        .get(Duration::from_secs(10))
        .await
        .expect_err("revoked");
    assert!(error.to_string().contains("revoked"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the sleeper was terminated"
    );
    let records = submitted.records().await.expect("records");
    assert_eq!(records.len(), 5);
    for record in records.values() {
        assert_eq!(
            record.state,
            State::Revoked,
            "{} {:?}",
            record.id,
            record.error
        );
        assert!(
            record
                .attempts
                .iter()
                .all(|attempt| attempt.state != State::Success),
            "nothing ran after the revoke"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chord_of_10000_fires_its_callback_once_while_a_worker_is_killed() {
    let mut cluster = Cluster::start();
    cluster.deploy("math");
    let client = cluster.client().await;
    let workflow = chord(
        (0..10_000).map(|i| task("math.add").args(json!([i, i]))),
        task("math.xsum").task_id("callback"),
    );
    let flags = ["-c", "16", "--lease", "1s", "--reap-interval", "200ms"];
    let victim = cluster.worker("victim", &flags);
    let submitted = client.submit(&workflow, None).await.expect("submit");
    let deadline = Instant::now() + Duration::from_secs(60);
    let member_ids = submitted.tree().ids();
    loop {
        let depth = client.broker().depth("default").await.expect("depth");
        if depth < 9_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.signal(victim, "KILL");
    let callback = client.result("callback");
    assert_eq!(
        callback.state().await.expect("state"),
        State::Pending,
        "killed mid-way"
    );
    cluster.worker("survivor", &flags);
    let sum = submitted
        .get(Duration::from_secs(120))
        .await
        .expect("the chord completes");
    assert_eq!(sum, json!(99_990_000));

    let callback = callback.record().await.expect("record").expect("exists");
    assert_eq!(callback.attempts.len(), 1, "{:?}", callback.attempts);
    // Both workers ran members: the chord outlived the one killed under it.
    let records = submitted.records().await.expect("records");
    for worker in ["victim", "survivor"] {
        assert!(
            records
                .values()
                .any(|record| record.worker.as_deref() == Some(worker)),
            "{worker} ran no member"
        );
    }
    let key = "wtq:{default}:task:callback";
    assert_eq!(cluster.redis.command(&["HGET", key, "commits"]).text(), "1");
    // Every member committed once, and the join is gone once it fired.
    for id in member_ids.iter().filter(|id| id.as_str() != "callback") {
        let key = format!("wtq:{{default}}:task:{id}");
        assert_eq!(
            cluster.redis.command(&["HGET", &key, "commits"]).text(),
            "1",
            "{id}"
        );
    }
    let joins = cluster.redis.command(&["KEYS", "wtq:{default}:join:*"]);
    assert!(
        matches!(&joins, Reply::Array(Some(keys)) if keys.is_empty()),
        "joins left: {joins:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_map_and_starmap_run_many_calls_per_task_in_order() {
    let cluster = cluster();
    let client = cluster.client().await;

    // chunks of add over 1,000 pairs in 10 chunks: the 1,000 sums, in order.
    let pairs: Vec<Value> = (0..1000).map(|i| json!([i, 2 * i])).collect();
    let document = json!({"chunks": {"task": "math.add", "items": pairs, "n": 10}});
    let run = submit_and_wait(&cluster, &document);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sums: Vec<i64> = serde_json::from_str(run.stdout.trim()).expect("a JSON list");
    assert_eq!(sums, (0..1000).map(|i| 3 * i).collect::<Vec<i64>>());
    let node = task("math.add").chunks(pairs.clone(), 10);
    let submitted = client.submit(&node, None).await.expect("submit");
    assert_eq!(submitted.result_ids().len(), 10, "ten tasks");
    let value = submitted
        .get(Duration::from_secs(60))
        .await
        .expect("result");
    assert_eq!(value.as_array().map(Vec::len), Some(1000));

    // chunks followed by a task: a chord over the flattened results.
    let node = chain([node, task("math.xsum").into()]);
    assert_eq!(result_of(&client, &node).await, json!(1_498_500));

    // map calls with each item, starmap with each argument list, in one task each.
    let node = task("math.fib").map(vec![json!(1), json!(10), json!(20)]);
    assert_eq!(result_of(&client, &node).await, json!([1, 55, 6765]));
    let node = task("math.mul").starmap(vec![json!([2, 3]), json!({"x": 4, "y": 5})]);
    assert_eq!(result_of(&client, &node).await, json!([6, 20]));

    // A bad item is refused at submit, naming the node and the item.
    let bad = task("math.add").chunks(vec![json!([1, 2]), json!([1, 2, 3])], 2);
    let error = client
        .submit(&bad, None)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("item 1") && error.contains("takes 2 arguments"),
        "{error}"
    );
}
