//! The client commands: `deploy`, `components`, `call`, `result`, `status`, `revoke`, `purge`
//! and `dead`. Each parses its arguments, calls the library once and prints the answer, the
//! same over the service (`--url http(s)://…`, the default: the local `wtq up`) as over the
//! broker itself (`--url redis://…`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use wtq_client::broker::{self, Revoked};
use wtq_client::message::{Backoff, State, TaskRecord, now_ms};
use wtq_client::{AnyBroker, Client, ClientError, Endpoint, Producer};

use super::{Failure, exit, say};
use crate::units;

/// Where a client command sends its requests when `--url` is not given: the local `wtq up`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";
/// Where a worker finds the broker when `--url` is not given.
pub const DEFAULT_BROKER_URL: &str = "redis://127.0.0.1:6379";

/// Where the service or the broker is, for every client command.
#[derive(Clone, Args)]
pub struct Connection {
    /// The service: http(s)://HOST:PORT (default: the local `wtq up`); or the broker itself:
    /// redis://HOST:PORT[/DB][?namespace=NAME], rediss://…
    #[arg(long, env = "WTQ_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// API token for an http(s) URL (ignored for a broker URL).
    #[arg(long, env = "WTQ_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

// By hand, so no debug output (clap's, a log line) ever shows the token.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Connection {
    /// The service or the broker `--url` names.
    pub async fn endpoint(&self) -> Result<Endpoint, Failure> {
        Endpoint::connect(&self.url, self.token.as_deref())
            .await
            .map_err(broker_failure)
    }

    /// The broker `--url` names; an http(s) URL is refused (for commands that need the
    /// broker itself; new ones take a [`BrokerConnection`]).
    pub async fn connect(&self) -> Result<AnyBroker, Failure> {
        let broker = BrokerConnection {
            url: self.url.clone(),
        };
        broker.connect().await
    }
}

/// Where the broker is, for commands that need the broker itself (`wtq worker`): never the
/// service, so a redis:// default and no token.
#[derive(Debug, Clone, Args)]
pub struct BrokerConnection {
    /// The broker: redis://HOST:PORT[/DB][?namespace=NAME] or rediss://…
    #[arg(long, env = "WTQ_URL", default_value = DEFAULT_BROKER_URL, global = true)]
    pub url: String,
}

impl BrokerConnection {
    /// The broker `--url` names.
    pub async fn connect(&self) -> Result<AnyBroker, Failure> {
        wtq_client::connect(&self.url).await.map_err(broker_failure)
    }
}

/// The exit code and line for a broker error.
pub fn broker_failure(error: broker::Error) -> Failure {
    let code = match &error {
        broker::Error::Url { .. } => exit::USAGE,
        broker::Error::DuplicateId(_) => exit::INVALID_ARGS,
        broker::Error::Denied { .. } => exit::DENIED,
        broker::Error::RateLimited { .. } => exit::RATE_LIMITED,
        broker::Error::Rejected { kind, .. } => match kind.as_str() {
            "too_large" => exit::ARGS_TOO_LARGE,
            "invalid_component" | "storage_quota_exceeded" => exit::INVALID_COMPONENT,
            _ => exit::INVALID_ARGS,
        },
        _ => exit::UNAVAILABLE,
    };
    Failure::new(code, error.to_string())
}

pub(super) fn client_failure(error: ClientError) -> Failure {
    if matches!(error.cause(), ClientError::TooLarge { .. }) {
        return Failure::new(exit::ARGS_TOO_LARGE, error.to_string());
    }
    match error {
        ClientError::Broker(error) => broker_failure(error),
        ClientError::TooLarge { .. } => Failure::new(exit::ARGS_TOO_LARGE, error.to_string()),
        other => Failure::new(exit::INVALID_ARGS, other.to_string()),
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The component (.wasm) to deploy.
    file: PathBuf,
    /// Registry name (default: the file stem).
    #[arg(long)]
    name: Option<String>,
    /// A rate limit held across all workers: `TASK=RATE` for one task, `RATE` for every task
    /// of the component; RATE is N/s, N/m or N/h. Repeatable. Needs a redis:// URL for now.
    #[arg(long, value_name = "[TASK=]RATE", value_parser = super::task_policy::parse_rate_limit_spec)]
    rate_limit: Vec<super::task_policy::RateLimitSpec>,
    /// Largest component accepted.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes, default_value = "64MiB")]
    max_size: u64,
    /// Draw the upload's progress to an http(s):// service on stderr, whatever the size and
    /// even when stderr is not a terminal (without it: on a terminal, from 1 MiB).
    #[arg(long)]
    progress: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn deploy(args: DeployArgs) -> Result<u8, Failure> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .file
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or_default()
            .to_string(),
    };
    let url = args.connection.url.to_ascii_lowercase();
    if !args.rate_limit.is_empty() && (url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Failure::new(
            exit::USAGE,
            "--rate-limit is set with a redis:// URL for now (the service has no route for it yet)",
        ));
    }
    let size = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    if size > args.max_size {
        return Err(Failure::new(
            exit::INVALID_COMPONENT,
            format!(
                "{} is {}, over the upload limit of {} (--max-size)",
                args.file.display(),
                units::format_bytes(size),
                units::format_bytes(args.max_size)
            ),
        ));
    }
    let wasm = std::fs::read(&args.file).map_err(|error| {
        Failure::new(
            exit::INVALID_COMPONENT,
            format!("cannot read component `{}`: {error}", args.file.display()),
        )
    })?;
    let record = match args.connection.endpoint().await? {
        // The service validates the upload itself: no sandbox here.
        Endpoint::Http(api) => {
            if !wtq_client::registry::valid_name(&name) {
                return Err(Failure::new(
                    exit::INVALID_COMPONENT,
                    format!(
                        "{}: {}",
                        args.file.display(),
                        crate::registry::DeployError::Name(name)
                    ),
                ));
            }
            let bar = std::sync::Arc::new(super::progress::Upload::new(
                args.progress,
                wasm.len() as u64,
            ));
            let on_progress = {
                let bar = bar.clone();
                move |sent, total| bar.update(sent, total)
            };
            let deployed = api.deploy_with_progress(&name, wasm, on_progress).await;
            bar.finish();
            deployed.map_err(|error| match error {
                broker::Error::Rejected { .. } => Failure::new(
                    exit::INVALID_COMPONENT,
                    format!("{}: {error}", args.file.display()),
                ),
                other => broker_failure(other),
            })?
        }
        Endpoint::Broker(broker) => deploy_to_broker(&broker, &name, wasm, &args).await?,
    };
    let Some(version) = record.current() else {
        return Err(Failure::new(
            exit::INTERNAL,
            "the registry stored no version",
        ));
    };
    say(format!("deployed {} {}", record.name, version.digest));
    for task in &version.tasks {
        say(format!(
            "  {}.{}({})",
            record.name,
            task.name,
            task.params.join(", ")
        ));
    }
    // Stored by `deploy_to_broker`, which checked them before storing the component.
    let limits =
        super::task_policy::deploy_rate_limits(&record.name, &version.tasks, &args.rate_limit)?;
    for (task, rate) in limits {
        say(format!(
            "  {task}: rate limit {rate}, enforced across all workers"
        ));
    }
    Ok(exit::SUCCESS)
}

/// Validates the component in a local sandbox and stores it in the broker's registry, then
/// its `--rate-limit`s (refused, with nothing stored, when one names a task it does not have).
async fn deploy_to_broker(
    broker: &AnyBroker,
    name: &str,
    wasm: Vec<u8>,
    args: &DeployArgs,
) -> Result<wtq_client::registry::ComponentRecord, Failure> {
    let sandbox = super::serve::validation_sandbox()?;
    let upload = crate::registry::validate(&sandbox, name, wasm, args.max_size)
        .await
        .map_err(|error| match error {
            crate::registry::DeployError::Broker(error) => broker_failure(error),
            other => Failure::new(
                exit::INVALID_COMPONENT,
                format!("{}: {other}", args.file.display()),
            ),
        })?;
    let limits =
        super::task_policy::deploy_rate_limits(name, &upload.version.tasks, &args.rate_limit)?;
    let record = broker::Broker::put_component(broker, upload)
        .await
        .map_err(broker_failure)?;
    super::task_policy::store_rate_limits(broker, &limits).await?;
    Ok(record)
}

#[derive(Debug, Args)]
pub struct ComponentsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn components(args: ComponentsArgs) -> Result<u8, Failure> {
    let endpoint = args.connection.endpoint().await?;
    let records = endpoint.components().await.map_err(broker_failure)?;
    if args.json {
        say(serde_json::to_string(&records).unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    if records.is_empty() {
        say("no components deployed (use `wtq deploy FILE.wasm`)");
    }
    for record in records {
        let Some(current) = record.current() else {
            continue;
        };
        say(format!(
            "{}  {}  deployed {}  {}",
            record.name,
            &current.digest[..12.min(current.digest.len())],
            units::format_rfc3339(current.deployed_ms),
            units::format_bytes(current.size)
        ));
        for task in &current.tasks {
            let signature = format!("{}.{}({})", record.name, task.name, task.params.join(", "));
            say(format!(
                "  {signature:<32} {}",
                super::one_line(task.doc.lines().next().unwrap_or_default())
            ));
        }
        for previous in record.versions.iter().skip(1) {
            say(format!(
                "  previous {}  deployed {}",
                &previous.digest[..12.min(previous.digest.len())],
                units::format_rfc3339(previous.deployed_ms)
            ));
        }
    }
    Ok(exit::SUCCESS)
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The task: NAME.TASK (current version) or NAME@DIGEST.TASK (pinned).
    task: String,
    /// Positional arguments as a JSON array (or keyword arguments as a JSON object); `@FILE`
    /// reads them from a file, `-` from stdin.
    args: Option<String>,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON")]
    kwargs: Option<String>,
    /// Queue to send to.
    #[arg(long, short = 'Q', default_value = wtq_client::DEFAULT_QUEUE)]
    queue: String,
    /// 0 (lowest, default) to 9 (highest).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Run no sooner than this from now, e.g. 10s.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, conflicts_with = "eta")]
    countdown: Option<Duration>,
    /// Run no sooner than this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = units::parse_rfc3339)]
    eta: Option<u64>,
    /// Revoke (never run) if not started within this duration, or by this RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    expires: Option<String>,
    /// Retries allowed, also after failures (task errors, traps, time limits).
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Exponential backoff between retries starting at this delay (default 1s when given
    /// without a value).
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "1s", value_parser = units::parse_duration)]
    retry_backoff: Option<Duration>,
    /// Longest delay between retries.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "10m")]
    retry_backoff_max: Duration,
    /// Use exact backoff delays instead of random ones below them.
    #[arg(long)]
    no_retry_jitter: bool,
    /// Wall-clock time limit of the task.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    time_limit: Option<Duration>,
    /// Fuel budget of the task.
    #[arg(long, value_name = "N", value_parser = units::parse_count)]
    fuel: Option<u64>,
    /// Memory limit of the task, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    memory: Option<u64>,
    /// Use this task id instead of a new UUID.
    #[arg(long)]
    task_id: Option<String>,
    /// A second call with the same key returns the first task's id.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Deliveries of one attempt before the message is dead-lettered.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_deliveries: Option<u32>,
    /// How long the result is kept.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    result_expires: Option<Duration>,
    /// Wait for the task and print its result instead of its id.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, requires = "wait")]
    timeout: Option<Duration>,
    /// With --wait, print the task's record as JSON.
    #[arg(long, requires = "wait")]
    json: bool,
    /// With --wait, draw the task's progress on stderr even when it is not a terminal.
    #[arg(long, requires = "wait")]
    progress: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn call(args: CallArgs) -> Result<u8, Failure> {
    let positional = args
        .args
        .as_deref()
        .map(|text| super::run::parse_json("arguments", text))
        .transpose()?;
    let keywords = args
        .kwargs
        .as_deref()
        .map(|text| super::run::parse_json("--kwargs", text))
        .transpose()?;
    let expires = args.expires.as_deref().map(parse_expiry).transpose()?;
    let options = wtq_client::CallOptions {
        args: positional,
        kwargs: keywords,
        queue: Some(args.queue.clone()),
        priority: args.priority,
        countdown: args.countdown,
        eta_ms: args.eta,
        expires,
        max_retries: args.max_retries,
        retry_backoff: args.retry_backoff.map(|base| Backoff {
            base_ms: base.as_millis() as u64,
            max_ms: args.retry_backoff_max.as_millis() as u64,
            jitter: !args.no_retry_jitter,
        }),
        limits: wtq_client::message::LimitOverrides {
            time_ms: args.time_limit.map(|limit| limit.as_millis() as u64),
            fuel: args.fuel,
            memory: args.memory,
        },
        task_id: args.task_id.clone(),
        idempotency_key: args.idempotency_key.clone(),
        max_deliveries: args.max_deliveries,
        result_expires: args.result_expires,
    };
    let client = Client::with_producer(args.connection.endpoint().await?);
    let result = client
        .call(&args.task)
        .options(options)
        .send()
        .await
        .map_err(client_failure)?;
    if !args.wait {
        say(result.id());
        return Ok(exit::SUCCESS);
    }
    let timeout = args.timeout.unwrap_or(FOREVER);
    let bar = super::progress::wanted(args.progress);
    let record = super::progress::wait(client.producer(), result.id(), timeout, bar)
        .await
        .map_err(broker_failure)?;
    print_result(result.id(), record, args.json, timeout)
}

/// `--wait` without `--timeout` waits this long: in practice, until the task is final.
pub(super) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn parse_expiry(text: &str) -> Result<Duration, Failure> {
    if text.contains('T') || text.contains('t') {
        let at = units::parse_rfc3339(text)
            .map_err(|error| Failure::new(exit::USAGE, error.to_string()))?;
        return Ok(Duration::from_millis(at.saturating_sub(now_ms())));
    }
    units::parse_duration(text)
        .map_err(|error| Failure::new(exit::USAGE, format!("--expires: {error}")))
}

/// Prints a result as `wtq result` does and returns its exit code.
fn print_result(
    id: &str,
    record: Option<TaskRecord>,
    json: bool,
    timeout: Duration,
) -> Result<u8, Failure> {
    let Some(record) = record else {
        return Err(Failure::new(
            exit::UNKNOWN_TASK,
            format!("no task {id} (never enqueued, or its result expired)"),
        ));
    };
    if json {
        say(serde_json::to_string(&record).unwrap_or_default());
    }
    let error = record
        .error
        .clone()
        .map(|e| format!("({}): {}", e.kind, e.message))
        .unwrap_or_default();
    match record.state {
        State::Success => {
            if !json {
                say(record.output().unwrap_or("null"));
            }
            Ok(exit::SUCCESS)
        }
        State::Failure if json => Ok(exit::TASK_FAILED),
        State::Failure => Err(Failure::new(
            exit::TASK_FAILED,
            format!("task {id} failed {error}"),
        )),
        State::Revoked if json => Ok(exit::REVOKED),
        State::Revoked => Err(Failure::new(
            exit::REVOKED,
            format!("task {id} was revoked {error}"),
        )),
        _ if json => Ok(exit::NOT_READY),
        state => Err(Failure::new(
            exit::NOT_READY,
            if timeout.is_zero() {
                format!("task {id} is {state}, not finished yet (use --wait)")
            } else {
                format!(
                    "task {id} is still {state} after {}",
                    units::format_duration(timeout)
                )
            },
        )),
    }
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// The task id, or a workflow's id (shows its tree with each member's state).
    id: String,
    /// Wait for the task to finish.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, requires = "wait")]
    timeout: Option<Duration>,
    /// Print the task's whole record as JSON.
    #[arg(long)]
    json: bool,
    /// With --wait, draw the task's progress on stderr even when it is not a terminal.
    #[arg(long, requires = "wait")]
    progress: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn result(args: ResultArgs) -> Result<u8, Failure> {
    let endpoint = args.connection.endpoint().await?;
    // A workflow's id is not a task's: shown as its tree.
    if endpoint
        .record(&args.id)
        .await
        .map_err(broker_failure)?
        .is_none()
    {
        let wait = args.wait.then(|| args.timeout.unwrap_or(FOREVER));
        if let Some(code) = super::workflow::result(&endpoint, &args.id, wait, args.json).await? {
            return Ok(code);
        }
    }
    let (record, timeout) = if args.wait {
        let timeout = args.timeout.unwrap_or(FOREVER);
        let bar = super::progress::wanted(args.progress);
        (
            super::progress::wait(&endpoint, &args.id, timeout, bar)
                .await
                .map_err(broker_failure)?,
            timeout,
        )
    } else {
        (
            endpoint.record(&args.id).await.map_err(broker_failure)?,
            Duration::ZERO,
        )
    };
    print_result(&args.id, record, args.json, timeout)
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The task id.
    id: String,
    /// Print the task's whole record as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn status(args: StatusArgs) -> Result<u8, Failure> {
    let endpoint = args.connection.endpoint().await?;
    let Some(record) = endpoint.record(&args.id).await.map_err(broker_failure)? else {
        return Err(Failure::new(
            exit::UNKNOWN_TASK,
            format!(
                "no task {} (never enqueued, or its result expired)",
                args.id
            ),
        ));
    };
    if args.json {
        say(serde_json::to_string(&record).unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    let message = &record.message;
    say(format!(
        "{}  {}  {}",
        record.id,
        address(message),
        record.state
    ));
    say(format!(
        "  queue {}  priority {}  attempt {}  deliveries {}",
        message.queue,
        message.priority,
        current_attempt(&record),
        record.deliveries
    ));
    if let Some(progress) = &record.progress {
        say(format!(
            "  progress {}/{} {}",
            progress.done,
            progress.total,
            super::one_line(&progress.note)
        ));
    }
    if let Some(error) = &record.error {
        say(format!(
            "  error ({}): {}",
            error.kind,
            super::one_line(&error.message)
        ));
    }
    for attempt in &record.attempts {
        say(format!(
            "  attempt {} on {}: {} in {} fuel {} memory {}",
            attempt.attempt,
            attempt.worker,
            attempt.state,
            attempt
                .duration_ms
                .map_or("-".into(), |ms| units::format_duration(
                    Duration::from_secs_f64(ms / 1e3)
                )),
            attempt.fuel.map_or("-".into(), |fuel| fuel.to_string()),
            attempt.peak_memory.map_or("-".into(), units::format_bytes),
        ));
    }
    Ok(exit::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The task id, or a workflow's id (revokes every member not yet finished).
    id: String,
    /// Stop the task if it is running (at its next epoch tick).
    #[arg(long)]
    terminate: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn revoke(args: RevokeArgs) -> Result<u8, Failure> {
    let endpoint = args.connection.endpoint().await?;
    revoke_on(&endpoint, &args.id, args.terminate).await
}

/// Revokes task or workflow `id` (`wtq revoke`, `wtq control revoke`).
pub(super) async fn revoke_on(
    endpoint: &Endpoint,
    id: &str,
    terminate: bool,
) -> Result<u8, Failure> {
    match endpoint
        .revoke(id, terminate)
        .await
        .map_err(broker_failure)?
    {
        Revoked::Revoked => say(format!("revoked {id}")),
        Revoked::Running { terminating: true } => say(format!("terminating {id}")),
        Revoked::Running { terminating: false } => say(format!(
            "{id} is running and will finish (use --terminate to stop it)"
        )),
        Revoked::AlreadyFinal(state) => say(format!("{id} already finished: {state}")),
        Revoked::Unknown => {
            if let Some(code) = super::workflow::revoke(endpoint, id, terminate).await? {
                return Ok(code);
            }
            return Err(Failure::new(
                exit::UNKNOWN_TASK,
                format!("no task {id} (never enqueued, or its result expired)"),
            ));
        }
    }
    Ok(exit::SUCCESS)
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Queues to empty (comma-separated).
    #[arg(long, short = 'Q', value_delimiter = ',', default_value = wtq_client::DEFAULT_QUEUE)]
    queues: Vec<String>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn purge(args: PurgeArgs) -> Result<u8, Failure> {
    let endpoint = args.connection.endpoint().await?;
    for queue in &args.queues {
        let purged = endpoint.purge(queue).await.map_err(broker_failure)?;
        say(format!("purged {purged} messages from {queue}"));
    }
    Ok(exit::SUCCESS)
}

#[derive(Debug, Args)]
pub struct DeadArgs {
    #[command(subcommand)]
    action: DeadAction,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Subcommand)]
enum DeadAction {
    /// Dead-lettered tasks, most recent first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Queue dead-lettered tasks again (one id, or --all).
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead-lettered task.
    Purge,
}

pub async fn dead(args: DeadArgs) -> Result<u8, Failure> {
    let endpoint = args.connection.endpoint().await?;
    match args.action {
        DeadAction::List { limit, json } => {
            let records = endpoint.dead(limit).await.map_err(broker_failure)?;
            if json {
                say(serde_json::to_string(&records).unwrap_or_default());
            }
            for record in records.iter().filter(|_| !json) {
                let error = record
                    .error
                    .as_ref()
                    .map(|e| format!("({}): {}", e.kind, super::one_line(&e.message)))
                    .unwrap_or_default();
                say(format!(
                    "{}  {}  {error}",
                    record.id,
                    address(&record.message)
                ));
            }
        }
        DeadAction::Retry { id, .. } => {
            let requeued = endpoint
                .retry_dead(id.as_deref())
                .await
                .map_err(broker_failure)?;
            if requeued == 0
                && let Some(id) = id
            {
                return Err(Failure::new(
                    exit::UNKNOWN_TASK,
                    format!("no dead-lettered task {id}"),
                ));
            }
            say(format!("requeued {requeued}"));
        }
        DeadAction::Purge => {
            let purged = endpoint.purge_dead().await.map_err(broker_failure)?;
            say(format!("purged {purged}"));
        }
    }
    Ok(exit::SUCCESS)
}

/// `NAME.TASK`, or a note for a message whose body could not be decoded.
fn address(message: &wtq_client::message::TaskMessage) -> String {
    if message.component.is_empty() {
        "(undecodable message)".to_string()
    } else {
        format!("{}.{}", message.component, message.task)
    }
}

/// The attempt a task is on: its finished attempts, plus the one under way if it is not final.
fn current_attempt(record: &TaskRecord) -> usize {
    let running = usize::from(!record.state.is_final());
    (record.attempts.len() + running).max(1)
}
