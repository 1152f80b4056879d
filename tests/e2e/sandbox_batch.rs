//! Batch calls (Celery's `map`, `starmap` and `chunks`): one call per argument list, in one
//! instance, under one set of limits for the whole batch.

use std::time::Duration;

use wtq::sandbox::{
    CallReport, CallRequest, Component, FailureKind, Limits, Metering, Outcome, Sandbox,
    SandboxConfig,
};

use crate::support::guest_bytes;

async fn load(name: &str, max_tasks_per_instance: u32) -> Component {
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        concurrency: 4,
        max_tasks_per_instance,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    sandbox
        .load(guest_bytes(name), Metering::Fuel)
        .await
        .expect("component loads")
}

async fn call(
    component: &Component,
    task: &str,
    args: &str,
    batch: bool,
    limits: Limits,
) -> CallReport {
    let request = CallRequest {
        task,
        args,
        batch,
        task_id: "t-1",
        attempt: 1,
        limits,
        ..Default::default()
    };
    component
        .call(&request)
        .await
        .expect("the host does not fail")
}

async fn batch(component: &Component, task: &str, args: &str, limits: Limits) -> Outcome {
    call(component, task, args, true, limits).await.outcome
}

fn success(output: &str) -> Outcome {
    Outcome::Success {
        output: output.to_string(),
    }
}

/// Asserts a failure of `kind` whose message starts with `prefix`.
fn check_failure(outcome: &Outcome, kind: FailureKind, prefix: &str) {
    match outcome {
        Outcome::Failure {
            kind: actual,
            message,
        } => {
            assert_eq!(*actual, kind, "{message}");
            assert!(
                message.starts_with(prefix),
                "`{message}` should start with `{prefix}`"
            );
        }
        other => panic!("expected a {kind} failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_returns_the_outputs_in_order() {
    let math = load("math", 1).await;
    let outcome = batch(
        &math,
        "add",
        r#"[[1,2],[3,4],{"x":5,"y":6}]"#,
        Limits::default(),
    )
    .await;
    assert_eq!(outcome, success("[3,7,11]"));
    let chaos = load("chaos", 1).await;
    let outcome = batch(
        &chaos,
        "echo",
        r#"[[{"a":[1,"b"]}],{"value":null}]"#,
        Limits::default(),
    )
    .await;
    assert_eq!(outcome, success(r#"[{"a":[1,"b"]},null]"#));
}

#[tokio::test]
async fn an_empty_batch_returns_an_empty_array_without_an_instance() {
    let math = load("math", 1).await;
    let report = call(&math, "add", "[]", true, Limits::default()).await;
    assert_eq!(report.outcome, success("[]"));
    assert_eq!(report.peak_memory, 0, "no instance was made");
    assert_eq!(report.fuel, None, "no fuel was spent");
}

#[tokio::test]
async fn every_item_runs_in_the_same_instance() {
    // A fresh instance per call outside batches, yet one instance for the whole batch.
    let chaos = load("chaos", 1).await;
    let outcome = batch(&chaos, "counter", "[[],[],[]]", Limits::default()).await;
    assert_eq!(outcome, success("[1,2,3]"));
    // A batch is one call of a recycled instance: the next call sees its state.
    let chaos = load("chaos", 3).await;
    let outcome = batch(&chaos, "counter", "[[],[]]", Limits::default()).await;
    assert_eq!(outcome, success("[1,2]"));
    let report = call(&chaos, "counter", "[]", false, Limits::default()).await;
    assert_eq!(report.outcome, success("3"));
    assert!(report.reused_instance);
}

#[tokio::test]
async fn the_first_failing_item_fails_the_batch_and_is_named() {
    let math = load("math", 1).await;
    let overflow = format!("[[1,2],[{},1],[3,4]]", i64::MAX);
    let outcome = batch(&math, "add", &overflow, Limits::default()).await;
    check_failure(&outcome, FailureKind::TaskFailed, "item 1: ");
    let bad_args = r#"[[1,2],["one",2]]"#;
    let outcome = batch(&math, "add", bad_args, Limits::default()).await;
    check_failure(&outcome, FailureKind::InvalidArgs, "item 1: ");

    let chaos = load("chaos", 1).await;
    let outcome = batch(&chaos, "trap", "[[],[]]", Limits::default()).await;
    check_failure(&outcome, FailureKind::Trap, "item 0: the task trapped");
    match batch(&chaos, "retry", "[[1000]]", Limits::default()).await {
        Outcome::Retry { message, countdown } => {
            assert_eq!(message, "item 0: chaos asked for a retry");
            assert_eq!(countdown, Some(Duration::from_secs(1)));
        }
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[tokio::test]
async fn arguments_that_are_not_a_batch_are_invalid() {
    let math = load("math", 1).await;
    let cases = [
        (
            r#"{"x":1,"y":2}"#,
            "batch arguments must be a JSON array of argument lists, not an object",
        ),
        ("[[1,2],3]", "item 1: an argument list must be an array"),
        ("[1,2", "batch arguments are not JSON"),
    ];
    for (args, prefix) in cases {
        let outcome = batch(&math, "add", args, Limits::default()).await;
        check_failure(&outcome, FailureKind::InvalidArgs, prefix);
    }
}

#[tokio::test]
async fn the_limits_cover_the_batch_as_a_whole() {
    let chaos = load("chaos", 1).await;
    let quick = Limits {
        time: Duration::from_millis(300),
        ..Limits::default()
    };
    let outcome = batch(&chaos, "spin", "[[],[]]", quick).await;
    check_failure(
        &outcome,
        FailureKind::TimeLimitExceeded,
        "item 0: time limit exceeded",
    );
    // Each sleep fits the time limit; the three together do not (item 2 ends at 1.2 s).
    let second = Limits {
        time: Duration::from_secs(1),
        ..Limits::default()
    };
    let outcome = batch(&chaos, "sleep", "[[400],[400],[400]]", second).await;
    check_failure(
        &outcome,
        FailureKind::TimeLimitExceeded,
        "item 2: time limit exceeded",
    );
    // Fuel is one budget for the batch too.
    let fuel = Limits {
        fuel: Some(1_000_000),
        ..Limits::default()
    };
    let outcome = batch(&chaos, "spin", "[[]]", fuel).await;
    check_failure(&outcome, FailureKind::OutOfFuel, "item 0: out of fuel");

    // Each output fits the output limit; `["xxxxxxxxxx","yyyyyyyyyy"]` (27 bytes) does not.
    let small = Limits {
        output: 20,
        ..Limits::default()
    };
    let args = r#"[["xxxxxxxxxx"],["yyyyyyyyyy"]]"#;
    let outcome = batch(&chaos, "echo", args, small).await;
    check_failure(
        &outcome,
        FailureKind::OutputTooLarge,
        "item 1: output too large",
    );
    let outcome = batch(&chaos, "echo", r#"[["xx"],["yy"]]"#, small).await;
    assert_eq!(outcome, success(r#"["xx","yy"]"#));
}
