//! `wtq serve` (the hosted HTTP service over Redis) and `wtq up` (service and worker in one
//! process, on the embedded broker by default).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use wtq_client::AnyBroker;
use wtq_client::broker::Tenancy;

use super::limits::LimitArgs;
use super::{Failure, exit, say};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::service::{Auth, Service, ServiceConfig};
use crate::units;
use crate::worker::WorkerConfig;

/// Where `wtq up` listens unless told otherwise, and where client commands look by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// Settings shared by `serve` and `up`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// How long a request waits for the broker before answering 503.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "1s")]
    broker_timeout: Duration,
    /// Largest request body accepted (uploads included).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes, default_value = "64MiB")]
    max_body: u64,
}

impl HttpArgs {
    fn config(&self, auth: Auth) -> Result<ServiceConfig, Failure> {
        if self.broker_timeout.is_zero() {
            return Err(Failure::new(
                exit::USAGE,
                "--broker-timeout must be more than 0",
            ));
        }
        Ok(ServiceConfig {
            listen: self.listen,
            auth,
            broker_timeout: self.broker_timeout,
            max_body: self.max_body,
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The broker: redis://HOST:PORT[/DB] or rediss://… (tenants get their own namespaces).
    #[arg(long, env = "WTQ_URL", default_value = "redis://127.0.0.1:6379")]
    url: String,
    #[command(flatten)]
    http: HttpArgs,
}

/// `wtq serve`: the multi-tenant HTTP API; every request needs a token.
pub fn serve(args: ServeArgs) -> Result<u8, Failure> {
    let config = args.http.config(Auth::Tokens)?;
    let runtime = multi_thread_runtime("wtq-serve", None)?;
    runtime.block_on(async {
        let broker = connect(&args.url).await?;
        let sandbox = validation_sandbox()?;
        let service = Service::bind(config, broker, sandbox)
            .await
            .map_err(service_failure)?;
        announce(&service);
        service
            .run(super::worker::shutdown_signal())
            .await
            .map_err(service_failure)?;
        Ok(exit::SUCCESS)
    })
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The broker: the embedded in-memory one (default; nothing survives a restart), or
    /// redis://HOST:PORT to share the queue with other workers.
    #[arg(long, env = "WTQ_URL", default_value = "memory://")]
    url: String,
    /// Calls that run at once (default: the number of CPUs).
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: Option<u32>,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// `wtq up`: the service and a worker in one process. On a loopback address it serves one
/// local tenant without tokens; elsewhere it requires tokens (and, on the embedded broker,
/// prints an admin token to create tenants with, as nothing else could).
pub fn up(args: UpArgs) -> Result<u8, Failure> {
    let usage = |message: String| Failure::new(exit::USAGE, message);
    let local = args.http.listen.ip().is_loopback();
    let auth = if local {
        Auth::Local {
            namespace: wtq_client::connect::DEFAULT_NAMESPACE.to_string(),
        }
    } else {
        Auth::Tokens
    };
    let config = args.http.config(auth)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let concurrency = args.concurrency.map_or(cpus, |n| n as usize);
    let limits = args.limits.limits().map_err(usage)?;
    let sandbox_config = args
        .limits
        .sandbox_config(concurrency as u32 + 1)
        .map_err(usage)?;
    // Guests run on `compute`; HTTP and broker I/O on `io`, whose threads guests never
    // occupy (see the worker module).
    let threads = if local {
        cpus
    } else {
        crate::worker::compute_threads(concurrency, cpus)
    };
    let compute = multi_thread_runtime("wtq-compute", Some(threads))?;
    let io = multi_thread_runtime("wtq-io", Some(2))?;
    let compute_handle = compute.handle().clone();
    let outcome = io.block_on(async {
        let broker = connect(&args.url).await?;
        let sandbox = Sandbox::new(sandbox_config)
            .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
        let service = Service::bind(config, broker.clone(), sandbox.clone())
            .await
            .map_err(service_failure)?;
        if !local && matches!(broker, AnyBroker::Memory(_)) {
            let admin = mint_admin(&broker).await?;
            say(format!(
                "admin token (shown once; create tenants with `wtq tenant create`): {admin}"
            ));
        }
        announce(&service);
        let worker = WorkerConfig {
            name: super::worker::default_name(),
            queues: vec![wtq_client::DEFAULT_QUEUE.to_string()],
            concurrency,
            max_concurrency: concurrency,
            autoscale: None,
            autoscale_keepalive: crate::worker::DEFAULT_AUTOSCALE_KEEPALIVE,
            prefetch_multiplier: 4,
            lease: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            limits,
            reap_interval: Duration::from_secs(2),
            task_events: false,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Signals move the in-process worker's shutdown through its stages; the first one
        // also stops the service and beat.
        let (worker_stop, _) = tokio::sync::watch::channel(crate::worker::Stage::Running);
        tokio::spawn(super::worker::shutdown_stages(worker_stop.clone()));
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let serving = tokio::spawn(service.run(until_stopped(stopped.clone())));
        let working = if local {
            let namespace = broker
                .namespaced(wtq_client::connect::DEFAULT_NAMESPACE)
                .map_err(super::queue::broker_failure)?;
            // The local tenant's periodic tasks (`/v1/schedules`), fired in-process.
            let beat = crate::beat::BeatConfig {
                holder: super::worker::default_name().replacen("wtq@", "beat@", 1),
                lease: crate::beat::DEFAULT_LEASE,
                entries: Vec::new(),
            };
            tokio::spawn(crate::beat::run(
                beat,
                namespace.clone(),
                until_stopped(stopped.clone()),
            ));
            tokio::spawn(crate::worker::run(
                worker,
                namespace,
                sandbox,
                compute_handle,
                None,
                worker_stop.clone(),
            ))
        } else {
            tokio::spawn(crate::worker::run_tenants(
                worker,
                broker,
                sandbox,
                compute_handle,
                None,
                worker_stop.clone(),
            ))
        };
        let _ = worker_stop
            .subscribe()
            .wait_for(|stage| *stage >= crate::worker::Stage::Warm)
            .await;
        eprintln!("shutting down: finishing running tasks");
        let _ = stop.send(true);
        let served = serving.await;
        let _ = working.await;
        match served {
            Ok(Ok(())) => Ok(exit::SUCCESS),
            Ok(Err(error)) => Err(service_failure(error)),
            Err(error) => Err(Failure::new(exit::INTERNAL, error.to_string())),
        }
    });
    compute.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// The first line a caller (or a test) reads to learn where the service is.
fn announce(service: &Service) {
    say(format!("listening on http://{}", service.local_addr()));
}

async fn connect(url: &str) -> Result<AnyBroker, Failure> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--url {url}: the service needs a broker (redis://… or memory://), not another service"
            ),
        ));
    }
    wtq_client::connect(url)
        .await
        .map_err(super::queue::broker_failure)
}

/// A one-slot sandbox for validating uploads (`serve`, the benchmarks' deploys); it runs no
/// tasks.
pub(super) fn validation_sandbox() -> Result<Sandbox, Failure> {
    Sandbox::new(SandboxConfig {
        concurrency: 1,
        ..SandboxConfig::default()
    })
    .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))
}

async fn mint_admin(broker: &AnyBroker) -> Result<String, Failure> {
    let (token, hash, record) = crate::service::token::mint(None)
        .map_err(|error| Failure::new(exit::INTERNAL, format!("no randomness: {error}")))?;
    broker
        .put_token(&hash, &record)
        .await
        .map_err(super::queue::broker_failure)?;
    Ok(token)
}

fn service_failure(error: crate::service::ServiceError) -> Failure {
    Failure::new(exit::UNAVAILABLE, error.to_string())
}

fn multi_thread_runtime(
    name: &str,
    threads: Option<usize>,
) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|error| {
            Failure::new(
                exit::INTERNAL,
                format!("starting the async runtime: {error}"),
            )
        })
}
