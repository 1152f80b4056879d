//! `wtq worker`: consume queues until SIGTERM or SIGINT, then shut down in stages (warm, soft
//! after `--shutdown-timeout`, cold on a second signal or SIGQUIT); with `--tenants`, the
//! queues of every tenant of the hosted service.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::limits::LimitArgs;
use super::queue::Connection;
use super::{Failure, exit};
use crate::units;
use crate::worker::{Bounds, Stage, WorkerConfig, advance, run, run_tenants};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Queues to consume, comma-separated, in priority order.
    #[arg(long, short = 'Q', value_delimiter = ',', default_value = wtq_client::DEFAULT_QUEUE)]
    queues: Vec<String>,
    /// Calls that run at once: a number, or `auto` for the number of CPUs this process may
    /// use (the default), which on Linux honours the affinity mask and cgroup CPU quotas.
    #[arg(long, short = 'c', value_name = "N|auto", value_parser = parse_concurrency)]
    concurrency: Option<Concurrency>,
    /// Grow and shrink the pool with the backlog between MAX and MIN slots (e.g. 10,3);
    /// starts at MIN.
    #[arg(long, value_name = "MAX,MIN", value_parser = Bounds::parse)]
    autoscale: Option<Bounds>,
    /// How long slots must stay idle before the autoscaler shrinks the pool.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "30s")]
    autoscale_keepalive: Duration,
    /// Most slots the pool may ever have (`control pool-grow`, `control autoscale`); the
    /// sandbox is sized for it (default: the larger of --concurrency and the --autoscale
    /// maximum).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENCY as i64))]
    max_concurrency: Option<u32>,
    /// Messages held per running slot, as Celery's prefetch multiplier (none beyond the
    /// running calls with `--tenants`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    prefetch_multiplier: u32,
    /// Serve every tenant in the broker's tenant registry (each in its own namespace, new
    /// tenants picked up within seconds), sharing the slots fairly; the URL's namespace is
    /// ignored.
    #[arg(long)]
    tenants: bool,
    /// Worker name, shown in task records (default: wtq@HOST-PID).
    #[arg(long, short = 'n')]
    name: Option<String>,
    /// How long a delivery is leased before other workers may take it over; renewed every
    /// third of it while the task runs.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "30s")]
    lease: Duration,
    /// How long a warm shutdown (SIGTERM, a first SIGINT) waits for running tasks before the
    /// soft stage stops them at their next epoch tick and hands them back; a second signal or
    /// SIGQUIT does that at once (cold shutdown).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "30s")]
    shutdown_timeout: Duration,
    /// How often expired leases are returned to their queues.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "2s")]
    reap_interval: Duration,
    /// Keep the event log on while this worker runs, so task events are kept even while
    /// nobody tails them (Celery's -E); otherwise it is on only while `wtq events` or the
    /// service's event stream reads it.
    #[arg(long = "task-events", short = 'E')]
    task_events: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks a
    /// free one, printed on stderr). Off by default; the endpoint has no authentication, so
    /// bind it to loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    connection: Connection,
}

/// Shortest lease: renewals every third of it must fit comfortably.
const MIN_LEASE: Duration = Duration::from_millis(300);

pub fn worker(args: WorkerArgs) -> Result<u8, Failure> {
    let usage = |message: String| Failure::new(exit::USAGE, message);
    let cpus = cpu_count();
    let concurrency = match (args.concurrency, args.autoscale) {
        (Some(Concurrency::Fixed(n)), _) => n as usize,
        (None, Some(bounds)) => bounds.min,
        (None | Some(Concurrency::Auto), _) => cpus,
    };
    let highest = concurrency.max(args.autoscale.map_or(0, |bounds| bounds.max));
    let max_concurrency = args.max_concurrency.map_or(highest, |n| n as usize);
    if max_concurrency < highest {
        return Err(usage(format!(
            "--max-concurrency {max_concurrency} is below the {highest} slots that --concurrency or --autoscale ask for; raise it or leave it out"
        )));
    }
    if highest > MAX_CONCURRENCY as usize {
        return Err(usage(format!(
            "--autoscale maximum {highest} is too high: use at most {MAX_CONCURRENCY}"
        )));
    }
    if args.tenants && args.autoscale.is_some() {
        return Err(usage(
            "--autoscale is not available with --tenants yet; use --concurrency (and control pool-grow/pool-shrink)".into(),
        ));
    }
    let limits = args.limits.limits().map_err(usage)?;
    let sandbox_config = args
        .limits
        .sandbox_config(max_concurrency as u32)
        .map_err(usage)?;
    if args.lease < MIN_LEASE {
        return Err(usage(format!(
            "--lease {} is too short: use at least {}",
            units::format_duration(args.lease),
            units::format_duration(MIN_LEASE)
        )));
    }
    if args.reap_interval.is_zero() {
        return Err(usage("--reap-interval must be more than 0".into()));
    }
    for queue in &args.queues {
        if !wtq_client::registry::valid_name(queue) {
            return Err(usage(format!(
                "queue `{queue}`: use 1 to 128 ASCII letters, digits, `_` or `-`"
            )));
        }
    }
    let name = args.name.clone().unwrap_or_else(default_name);
    let runtime_failure = |error: std::io::Error| {
        Failure::new(
            exit::INTERNAL,
            format!("starting the async runtime: {error}"),
        )
    };
    // Guests run on `compute`, one thread per CPU (per slot with `--tenants`, see
    // `compute_threads`); the broker is driven from `io`, whose thread guests never occupy
    // (see the worker module).
    let threads = if args.tenants {
        crate::worker::compute_threads(concurrency, cpus)
    } else {
        cpus
    };
    let compute = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("wtq-compute")
        .enable_all()
        .build()
        .map_err(runtime_failure)?;
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(runtime_failure)?;
    let compute_handle = compute.handle().clone();
    let outcome = io.block_on(async {
        let broker = args.connection.connect().await?;
        let metrics = match args.metrics {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|error| {
                    Failure::new(
                        exit::UNAVAILABLE,
                        format!("--metrics {addr}: cannot listen: {error}; choose another address or port"),
                    )
                })?;
                let bound = listener.local_addr().unwrap_or(addr);
                eprintln!("metrics on http://{bound}/metrics");
                Some(listener)
            }
            None => None,
        };
        let sandbox = crate::sandbox::Sandbox::new(sandbox_config)
            .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
        let config = WorkerConfig {
            name,
            queues: args.queues.clone(),
            concurrency,
            max_concurrency,
            autoscale: args.autoscale,
            autoscale_keepalive: args.autoscale_keepalive,
            prefetch_multiplier: args.prefetch_multiplier as usize,
            lease: args.lease,
            shutdown_timeout: args.shutdown_timeout,
            limits,
            reap_interval: args.reap_interval,
            task_events: args.task_events,
        };
        let (stop, _) = tokio::sync::watch::channel(Stage::Running);
        tokio::spawn(shutdown_stages(stop.clone()));
        let summary = if args.tenants {
            run_tenants(config, broker, sandbox, compute_handle, metrics, stop).await
        } else {
            run(config, broker, sandbox, compute_handle, metrics, stop).await
        };
        eprintln!(
            "worker stopped: {} succeeded, {} failed, {} retried, {} revoked, {} handed back, {} refused as stale",
            summary.succeeded, summary.failed, summary.retried, summary.revoked, summary.released, summary.stale
        );
        Ok(exit::SUCCESS)
    });
    compute.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

/// `--concurrency`: a fixed number of slots, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Concurrency {
    Auto,
    Fixed(u32),
}

/// Most slots `--concurrency` accepts.
const MAX_CONCURRENCY: u32 = 4096;

fn parse_concurrency(text: &str) -> Result<Concurrency, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(Concurrency::Auto);
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(Concurrency::Fixed(n)),
        _ => Err(format!(
            "use a number from 1 to {MAX_CONCURRENCY}, or `auto` for the CPU count"
        )),
    }
}

/// The CPUs this process may use (at least 1). `std::thread::available_parallelism` already
/// takes the affinity mask (`taskset`, cpusets) and, on Linux, the cgroup v1 and v2 CPU quota
/// (`cpu.max`, `cpu.cfs_quota_us`, as container runtimes set them) into account, rounded down:
/// see its documentation's "Limitations" and rust-lang/rust#92697. It is not cached, so this is
/// read once at startup.
fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Moves a worker's shutdown on with signals: the first SIGTERM or SIGINT starts a warm
/// shutdown, a second one, or SIGQUIT at any time, a cold one; one more after that ends the
/// process at once (its leases expire and other workers run its tasks). A `control
/// shutdown` is not a signal: a SIGTERM after it still only asks for a warm shutdown.
pub(super) async fn shutdown_stages(stop: tokio::sync::watch::Sender<Stage>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut terminate), Ok(mut interrupt), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            // Without handlers the default actions apply: the process just ends, and its
            // leases expire for others to take over.
            tracing::warn!("cannot install signal handlers; shutdowns will not be graceful");
            return;
        };
        let mut cold = false;
        let mut signals = 0;
        loop {
            let next = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
                _ = quit.recv() => "SIGQUIT",
            };
            signals += 1;
            if cold {
                eprintln!(
                    "{next}: exiting now; the leases of unsettled tasks will expire and other workers will run them"
                );
                std::process::exit(i32::from(super::exit::INTERNAL));
            }
            cold = next == "SIGQUIT" || signals > 1;
            eprintln!("{next}: {} shutdown", if cold { "cold" } else { "warm" });
            advance(&stop, if cold { Stage::Cold } else { Stage::Warm });
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        advance(&stop, Stage::Warm);
        let _ = tokio::signal::ctrl_c().await;
        advance(&stop, Stage::Cold);
    }
}

/// `wtq@HOST-PID`.
pub(super) fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("wtq@{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_a_number_or_auto() {
        let check = |text: &str, expected: Option<Concurrency>| {
            assert_eq!(parse_concurrency(text).ok(), expected, "{text}")
        };
        check("auto", Some(Concurrency::Auto));
        check("AUTO", Some(Concurrency::Auto));
        check("1", Some(Concurrency::Fixed(1)));
        check("4096", Some(Concurrency::Fixed(4096)));
        check("0", None);
        check("4097", None);
        check("-1", None);
        check("many", None);
        assert!(cpu_count() >= 1);
    }
}
