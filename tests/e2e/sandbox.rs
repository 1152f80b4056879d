//! The sandbox as the worker uses it: one process, one engine, many calls.

use std::time::{Duration, Instant};

use wtq::sandbox::{
    CallRequest, Component, FailureKind, Limits, Metering, Outcome, Sandbox, SandboxConfig,
};

use crate::support::guest_bytes;

fn sandbox(max_tasks_per_instance: u32) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir: None,
        concurrency: 4,
        max_tasks_per_instance,
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

async fn load(sandbox: &Sandbox, name: &str) -> Component {
    sandbox
        .load(guest_bytes(name), Metering::Fuel)
        .await
        .expect("component loads")
}

async fn call(component: &Component, task: &str, args: &str, limits: Limits) -> Outcome {
    call_as(component, task, args, limits, "").await
}

async fn call_as(
    component: &Component,
    task: &str,
    args: &str,
    limits: Limits,
    tenant: &str,
) -> Outcome {
    let request = CallRequest {
        task,
        args,
        task_id: "t-1",
        attempt: 1,
        tenant,
        limits,
        ..Default::default()
    };
    component
        .call(&request)
        .await
        .expect("the host does not fail")
        .outcome
}

fn kind(outcome: &Outcome) -> Option<FailureKind> {
    match outcome {
        Outcome::Failure { kind, .. } => Some(*kind),
        _ => None,
    }
}

fn success(output: &str) -> Outcome {
    Outcome::Success {
        output: output.to_string(),
    }
}

#[tokio::test]
async fn runaway_guests_never_take_the_worker_down() {
    let sandbox = sandbox(1);
    let chaos = load(&sandbox, "chaos").await;
    let quick = Limits {
        time: Duration::from_millis(300),
        ..Limits::default()
    };
    let cases = [
        ("spin", "[]", quick, FailureKind::TimeLimitExceeded),
        (
            "spin",
            "[]",
            Limits {
                fuel: Some(1_000_000),
                ..Limits::default()
            },
            FailureKind::OutOfFuel,
        ),
        (
            "alloc",
            "[64]",
            Limits {
                memory: 32 << 20,
                ..Limits::default()
            },
            FailureKind::MemoryLimitExceeded,
        ),
        (
            "recurse",
            "[]",
            Limits::default(),
            FailureKind::StackOverflow,
        ),
        (
            "big_output",
            "[2]",
            Limits::default(),
            FailureKind::OutputTooLarge,
        ),
        ("sleep", "[10000]", quick, FailureKind::TimeLimitExceeded),
        ("trap", "[]", Limits::default(), FailureKind::Trap),
    ];
    for (task, args, limits, expected) in cases {
        let outcome = call(&chaos, task, args, limits).await;
        assert_eq!(kind(&outcome), Some(expected), "{task}: {outcome:?}");
        let benign = call(&chaos, "echo", "[\"still here\"]", Limits::default()).await;
        assert_eq!(
            benign,
            success("\"still here\""),
            "a benign call right after {task}"
        );
    }
}

#[tokio::test]
async fn a_fresh_instance_per_call_never_sees_the_previous_calls_state() {
    let chaos = load(&sandbox(1), "chaos").await;
    for _ in 0..3 {
        assert_eq!(
            call(&chaos, "counter", "[]", Limits::default()).await,
            success("1")
        );
    }
}

#[tokio::test]
async fn recycled_instances_serve_n_calls_then_are_replaced() {
    let chaos = load(&sandbox(3), "chaos").await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        match call(&chaos, "counter", "[]", Limits::default()).await {
            Outcome::Success { output } => seen.push(output),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["1", "2", "3", "1", "2", "3", "1"]);
}

#[tokio::test]
async fn a_trapped_instance_is_never_reused() {
    let chaos = load(&sandbox(100), "chaos").await;
    assert_eq!(
        call(&chaos, "counter", "[]", Limits::default()).await,
        success("1")
    );
    assert_eq!(
        call(&chaos, "counter", "[]", Limits::default()).await,
        success("2")
    );
    assert_eq!(
        kind(&call(&chaos, "trap", "[]", Limits::default()).await),
        Some(FailureKind::Trap)
    );
    assert_eq!(
        call(&chaos, "counter", "[]", Limits::default()).await,
        success("1")
    );
}

#[tokio::test]
async fn recycled_instances_never_cross_tenants() {
    let chaos = load(&sandbox(100), "chaos").await;
    let limits = Limits::default();
    assert_eq!(
        call_as(&chaos, "counter", "[]", limits, "acme").await,
        success("1")
    );
    assert_eq!(
        call_as(&chaos, "counter", "[]", limits, "globex").await,
        success("1")
    );
    assert_eq!(
        call_as(&chaos, "counter", "[]", limits, "acme").await,
        success("2")
    );
}

#[tokio::test]
async fn a_memory_hungry_instance_is_recycled_at_the_high_water_mark() {
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        concurrency: 4,
        max_tasks_per_instance: 100,
        recycle_memory: 8 << 20,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let chaos = load(&sandbox, "chaos").await;
    assert_eq!(
        call(&chaos, "counter", "[]", Limits::default()).await,
        success("1")
    );
    assert!(matches!(
        call(&chaos, "alloc", "[16]", Limits::default()).await,
        Outcome::Success { .. }
    ));
    // The instance grew past 8 MiB while holding the allocation, so the next call is fresh.
    assert_eq!(
        call(&chaos, "counter", "[]", Limits::default()).await,
        success("1")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_task_does_not_starve_others_on_its_thread() {
    let chaos = load(&sandbox(1), "chaos").await;
    let spin_limits = Limits {
        time: Duration::from_secs(2),
        ..Limits::default()
    };
    let spinning = call(&chaos, "spin", "[]", spin_limits);
    let quick = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let outcome = call(&chaos, "echo", "[1]", Limits::default()).await;
        (outcome, started.elapsed())
    };
    let (spun, (outcome, waited)) = tokio::join!(spinning, quick);
    assert_eq!(kind(&spun), Some(FailureKind::TimeLimitExceeded));
    assert_eq!(outcome, success("1"));
    assert!(
        waited < Duration::from_millis(500),
        "the quick call waited {waited:?}"
    );
}

#[tokio::test]
async fn the_task_has_no_filesystem_network_or_environment() {
    let chaos = load(&sandbox(1), "chaos").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the host can connect"
    );
    let args = format!("[{port}]");
    let Outcome::Success { output } = call(&chaos, "probe", &args, Limits::default()).await else {
        panic!("probe runs");
    };
    let probe: serde_json::Value = serde_json::from_str(&output).expect("JSON");
    assert_eq!(probe["env_vars"], 0, "{probe}");
    assert_eq!(probe["args"], 0, "{probe}");
    assert_eq!(probe["root_readable"], false, "{probe}");
    assert_eq!(probe["tcp_connect"], false, "{probe}");
}

#[tokio::test(flavor = "multi_thread")]
async fn as_many_calls_as_the_concurrency_run_at_once() {
    let concurrency = 6;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        concurrency,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let chaos = load(&sandbox, "chaos").await;
    let calls = (0..concurrency).map(|_| {
        let chaos = chaos.clone();
        tokio::spawn(async move { call(&chaos, "sleep", "[200]", Limits::default()).await })
    });
    for outcome in futures_join(calls).await {
        assert_eq!(
            outcome,
            success("200"),
            "the pool holds `concurrency` instances at once"
        );
    }
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await.expect("call task"));
    }
    results
}
