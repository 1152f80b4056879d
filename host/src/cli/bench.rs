//! `wtq bench sandbox`: the per-task cost of the sandbox, printed as figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::{Failure, current_thread_runtime, exit, say};
use crate::sandbox::{
    self, CallRequest, Component, Limits, Metering, Outcome, Sandbox, SandboxConfig,
};
use crate::units::format_duration;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Cost of a fresh instance per task for `math.add`, and of fuel and epochs on `fib`.
    Sandbox(SandboxBench),
    /// Enqueue and drain `math.add` tasks through Redis with one worker process.
    Queue(QueueBench),
    /// Enqueue throughput through the HTTP API (keep-alive, batches and single requests).
    Http(HttpBenchArgs),
    /// A chord of N `math.add` members end to end, against N plain tasks.
    Chord(ChordBench),
}

#[derive(Debug, Args)]
struct ChordBench {
    /// The math example component.
    #[arg(
        long,
        default_value = "guest-examples/target/wasm32-wasip2/release/math.wasm"
    )]
    component: PathBuf,
    /// Members of the chord (and plain tasks to compare with).
    #[arg(long, short = 'n', default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    members: u32,
    /// Rounds of each; the medians are printed.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Concurrency of the worker (default: the number of CPUs).
    #[arg(long, short = 'c')]
    concurrency: Option<u32>,
    /// Redis to use; the benchmark works in a fresh namespace of its own.
    #[arg(long, env = "WTQ_URL", default_value = "redis://127.0.0.1:6379")]
    url: String,
}

#[derive(Debug, Args)]
struct HttpBenchArgs {
    /// The math example component.
    #[arg(
        long,
        default_value = "guest-examples/target/wasm32-wasip2/release/math.wasm"
    )]
    component: PathBuf,
    /// Tasks to enqueue in batches.
    #[arg(long, short = 'n', default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    tasks: u32,
    /// Tasks per batch request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// Single-task requests for the per-request figure.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    single: u32,
    /// The broker the benchmark's own service uses (a fresh namespace of it).
    #[arg(long, env = "WTQ_URL", default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// Drive this running service (http://…) instead of starting one.
    #[arg(long, value_name = "URL")]
    service: Option<String>,
    /// Token for --service.
    #[arg(long, env = "WTQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct QueueBench {
    /// The math example component.
    #[arg(
        long,
        default_value = "guest-examples/target/wasm32-wasip2/release/math.wasm"
    )]
    component: PathBuf,
    /// Tasks to enqueue and drain.
    #[arg(long, short = 'n', default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    tasks: u32,
    /// Sequential round trips for the latency figures.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    round_trips: u32,
    /// Concurrency of the worker (default: the number of CPUs).
    #[arg(long, short = 'c')]
    concurrency: Option<u32>,
    /// Redis to use; the benchmark works in a fresh namespace of its own.
    #[arg(long, env = "WTQ_URL", default_value = "redis://127.0.0.1:6379")]
    url: String,
}

#[derive(Debug, Args)]
struct SandboxBench {
    /// The math example component.
    #[arg(
        long,
        default_value = "guest-examples/target/wasm32-wasip2/release/math.wasm"
    )]
    component: PathBuf,
    /// Calls of `add` per measurement.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Argument of `fib` for the metering comparison.
    #[arg(long, default_value_t = 27)]
    fib: u32,
    /// Interleaved rounds of `fib` per metering mode.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

pub fn run(args: BenchArgs) -> Result<u8, Failure> {
    match args.what {
        BenchCommand::Sandbox(bench) => sandbox_bench(bench),
        BenchCommand::Queue(bench) => super::bench_queue::run(
            bench.component,
            bench.tasks,
            bench.round_trips,
            bench.concurrency,
            &bench.url,
        ),
        BenchCommand::Chord(bench) => super::bench_chord::run(
            bench.component,
            bench.members,
            bench.rounds,
            bench.concurrency,
            &bench.url,
        ),
        BenchCommand::Http(bench) => super::bench_http::run(super::bench_http::HttpBench {
            component: bench.component,
            tasks: bench.tasks,
            batch: bench.batch,
            connections: bench.connections,
            single: bench.single,
            url: bench.url,
            service: bench.service,
            token: bench.token,
        }),
    }
}

fn sandbox_bench(bench: SandboxBench) -> Result<u8, Failure> {
    let wasm = std::fs::read(&bench.component).map_err(|error| {
        Failure::new(
            exit::INVALID_COMPONENT,
            format!(
                "cannot read `{}`: {error}; build the examples first (see README)",
                bench.component.display()
            ),
        )
    })?;
    let runtime = current_thread_runtime()?;
    let internal = |error: sandbox::Error| Failure::new(exit::INTERNAL, error.to_string());
    let fresh = Sandbox::new(SandboxConfig {
        cache_dir: None,
        concurrency: 4,
        ..SandboxConfig::default()
    })
    .map_err(internal)?;
    let warm = Sandbox::new(SandboxConfig {
        cache_dir: None,
        concurrency: 4,
        max_tasks_per_instance: u32::MAX,
        ..SandboxConfig::default()
    })
    .map_err(internal)?;

    runtime.block_on(async {
        let component = fresh
            .load(wasm.clone(), Metering::Fuel)
            .await
            .map_err(internal)?;
        let reusing = warm.load(wasm, Metering::Fuel).await.map_err(internal)?;
        say(format!(
            "wtq bench sandbox: {} calls of math.add([20,22]) on one thread, full call path \
             (limits, log, output checks), {:?} allocator",
            bench.iterations,
            fresh.allocator(Metering::Fuel).map_err(internal)?
        ));
        let metered = Limits::default();
        let unmetered = Limits {
            fuel: None,
            ..Limits::default()
        };
        for (label, component, limits) in [
            ("fresh instance, fuel + epoch", &component, metered),
            ("fresh instance, epoch only", &component, unmetered),
            ("warm instance reused, fuel + epoch", &reusing, metered),
        ] {
            let times = add_calls(component, limits, bench.iterations).await?;
            print_figures(label, &times);
        }

        say(format!(
            "\nfib({}): fresh instance per call, median of {} interleaved rounds, raw call path",
            bench.fib, bench.rounds
        ));
        let args = format!("[{}]", bench.fib);
        let modes = [Metering::None, Metering::Epoch, Metering::Fuel];
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
        for _ in 0..bench.rounds {
            for (mode, samples) in modes.iter().zip(&mut times) {
                let round = sandbox::bench::raw_calls(&component, *mode, "fib", &args, 1)
                    .await
                    .map_err(internal)?;
                samples.extend(round);
            }
        }
        let base = median(&mut times[0]);
        for (mode, samples) in modes.iter().zip(&mut times) {
            let value = median(samples);
            let overhead = (value.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
            say(format!(
                "  {:<6} {:>10}  ({overhead:+.1}% vs no metering)",
                mode.as_str(),
                format_duration(value)
            ));
        }
        let report = component
            .call(&CallRequest {
                task: "fib",
                args: &args,
                task_id: "bench",
                attempt: 1,
                tenant: "",
                limits: metered,
                ..Default::default()
            })
            .await
            .map_err(internal)?;
        if let Some(fuel) = report.fuel {
            say(format!("  fib({}) consumes {fuel} fuel", bench.fib));
        }
        Ok(exit::SUCCESS)
    })
}

async fn add_calls(
    component: &Component,
    limits: Limits,
    iterations: u32,
) -> Result<Vec<Duration>, Failure> {
    // One untimed call first: compiling for this metering mode is not a per-task cost.
    let mut times = Vec::with_capacity(iterations as usize + 1);
    for _ in 0..=iterations {
        let started = Instant::now();
        let report = component
            .call(&CallRequest {
                task: "add",
                args: "[20,22]",
                task_id: "bench",
                attempt: 1,
                tenant: "",
                limits,
                ..Default::default()
            })
            .await
            .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
        times.push(started.elapsed());
        if !matches!(report.outcome, Outcome::Success { .. }) {
            return Err(Failure::new(
                exit::INTERNAL,
                format!("math.add failed during the benchmark: {:?}", report.outcome),
            ));
        }
    }
    times.remove(0);
    Ok(times)
}

fn print_figures(label: &str, times: &[Duration]) {
    let total: Duration = times.iter().sum();
    let mut sorted = times.to_vec();
    sorted.sort();
    let p50 = sorted[sorted.len() / 2];
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    let per_second = times.len() as f64 / total.as_secs_f64();
    say(format!(
        "  {label:<36} median {:>9}  p99 {:>9}  {per_second:>9.0} tasks/s on one core",
        format_duration(p50),
        format_duration(p99)
    ));
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
