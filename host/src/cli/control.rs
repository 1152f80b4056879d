//! `wtq inspect` and `wtq control` (Celery's spellings): a request broadcast to the live
//! workers of the broker's namespace (or those named with `-d`), and their replies, collected
//! until every worker that heard it answered or `--timeout` passed.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;
use wtq_client::broker::Control;
use wtq_client::broker::control::{Command, ControlReply, ControlRequest, ReplyOutcome};
use wtq_client::message::now_ms;
use wtq_client::{AnyBroker, Endpoint};

use super::queue::{BrokerConnection, broker_failure};
use super::{Failure, exit, say};
use crate::units;
use crate::worker::Bounds;

/// Which workers, how long to wait, and how to print.
#[derive(Debug, Args)]
struct Target {
    /// Only these workers (comma-separated names, as `-n` set them); default: every worker.
    #[arg(long, short = 'd', value_delimiter = ',', global = true)]
    destination: Vec<String>,
    /// How long to wait for replies.
    #[arg(long, short = 't', value_name = "DURATION", value_parser = units::parse_duration, default_value = "1s", global = true)]
    timeout: Duration,
    /// One JSON object, worker name → reply, instead of lines.
    #[arg(long, short = 'j', global = true)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    command: InspectCommand,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    connection: BrokerConnection,
}

#[derive(Debug, Subcommand)]
enum InspectCommand {
    /// The tasks each worker is running.
    Active,
    /// The tasks each worker holds that have not started (prefetched).
    Reserved,
    /// The tasks waiting for their ETA, countdown or retry in each worker's queues.
    Scheduled,
    /// Each worker's pool, queues, counters and CPU time.
    Stats,
    /// The tasks each worker can run, with their rate and time limits.
    Registered,
    /// Which workers are alive.
    Ping,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[command(subcommand)]
    command: ControlCommand,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    connection: BrokerConnection,
}

#[derive(Debug, Subcommand)]
enum ControlCommand {
    /// Shut workers down warmly (running tasks finish), as SIGTERM does.
    Shutdown,
    /// Add N slots to each worker's pool.
    PoolGrow {
        #[arg(default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
        n: u32,
    },
    /// Remove N slots from each worker's pool (running tasks finish first).
    PoolShrink {
        #[arg(default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
        n: u32,
    },
    /// Let each worker scale its pool between MAX and MIN slots with its backlog.
    Autoscale {
        #[arg(value_name = "MAX,MIN", value_parser = Bounds::parse)]
        bounds: Bounds,
    },
    /// Set a task's rate limit (N/s, N/m, N/h; 0 or none removes it), held across all
    /// workers together.
    RateLimit { task: String, rate: String },
    /// Set a task's time limit (seconds, or a duration such as 90s; 0 or none removes it);
    /// a call's own --time-limit still wins.
    TimeLimit { task: String, limit: String },
    /// Start consuming a queue.
    AddConsumer { queue: String },
    /// Stop consuming a queue.
    CancelConsumer { queue: String },
    /// Revoke a task or a workflow, as `wtq revoke`.
    Revoke {
        id: String,
        /// Stop it if it is running (at its next epoch tick).
        #[arg(long)]
        terminate: bool,
    },
}

/// `wtq inspect …`.
pub async fn inspect(args: InspectArgs) -> Result<u8, Failure> {
    let broker = args.connection.connect().await?;
    let command = match args.command {
        InspectCommand::Active => Command::Active,
        InspectCommand::Reserved => Command::Reserved,
        InspectCommand::Scheduled => Command::Scheduled,
        InspectCommand::Stats => Command::Stats,
        InspectCommand::Registered => Command::Registered,
        InspectCommand::Ping => Command::Ping,
    };
    broadcast(&broker, command, &args.target).await
}

/// `wtq control …`.
pub async fn control(args: ControlArgs) -> Result<u8, Failure> {
    let broker = args.connection.connect().await?;
    let command = match args.command {
        ControlCommand::Shutdown => Command::Shutdown,
        ControlCommand::PoolGrow { n } => Command::PoolGrow { n: n as usize },
        ControlCommand::PoolShrink { n } => Command::PoolShrink { n: n as usize },
        ControlCommand::Autoscale { bounds } => Command::Autoscale {
            max: bounds.max,
            min: bounds.min,
        },
        ControlCommand::AddConsumer { queue } => Command::AddConsumer { queue },
        ControlCommand::CancelConsumer { queue } => Command::CancelConsumer { queue },
        // Held by the broker for every worker, present and future; the workers are only told
        // to read them again.
        ControlCommand::RateLimit { task, rate } => {
            say(super::task_policy::rate_limit(&broker, &task, &rate).await?);
            return announce(&broker, &args.target).await;
        }
        ControlCommand::TimeLimit { task, limit } => {
            say(super::task_policy::time_limit(&broker, &task, &limit).await?);
            return announce(&broker, &args.target).await;
        }
        ControlCommand::Revoke { id, terminate } => {
            let endpoint = Endpoint::Broker(broker);
            return super::queue::revoke_on(&endpoint, &id, terminate).await;
        }
    };
    broadcast(&broker, command, &args.target).await
}

/// Tells the live workers that a policy changed, so they apply it at once rather than within
/// a second; none answering is fine (it is stored).
async fn announce(broker: &AnyBroker, target: &Target) -> Result<u8, Failure> {
    let request = ControlRequest::new(Command::PoliciesChanged, target.destination.clone());
    let replies = broker
        .broadcast(&request, target.timeout)
        .await
        .map_err(broker_failure)?;
    if !target.json {
        say(format!("{} live workers told", replies.len()));
    }
    Ok(exit::SUCCESS)
}

/// Sends `command`, prints the replies; fails when nobody answered, or when a worker refused.
async fn broadcast(broker: &AnyBroker, command: Command, target: &Target) -> Result<u8, Failure> {
    let request = ControlRequest::new(command, target.destination.clone());
    let replies = broker
        .broadcast(&request, target.timeout)
        .await
        .map_err(broker_failure)?;
    if replies.is_empty() {
        let whom = match target.destination.as_slice() {
            [] => "no worker".to_string(),
            [one] => format!("worker {one}"),
            many => format!("none of {}", many.join(", ")),
        };
        return Err(Failure::new(
            exit::UNAVAILABLE,
            format!(
                "{whom} replied within {} (is a `wtq worker` running against this --url? a --tenants worker answers on its root URL; raise --timeout for busy workers)",
                units::format_duration(target.timeout)
            ),
        ));
    }
    if target.json {
        let object: serde_json::Map<String, Value> = replies
            .iter()
            .map(|reply| {
                let body = match &reply.outcome {
                    ReplyOutcome::Ok(value) => value.clone(),
                    ReplyOutcome::Error(message) => serde_json::json!({"error": message}),
                };
                (reply.worker.clone(), body)
            })
            .collect();
        say(Value::Object(object).to_string());
    } else {
        for reply in &replies {
            say(render(&request.command, reply));
        }
    }
    for missing in target
        .destination
        .iter()
        .filter(|name| !replies.iter().any(|reply| &&reply.worker == name))
    {
        eprintln!("no reply from {missing}");
    }
    let refused = replies
        .iter()
        .filter(|reply| matches!(reply.outcome, ReplyOutcome::Error(_)))
        .count();
    if refused > 0 {
        return Err(Failure::new(
            exit::USAGE,
            format!("{refused} of {} workers refused the request", replies.len()),
        ));
    }
    Ok(exit::SUCCESS)
}

/// One worker's reply as lines: `-> NAME: OK` and what it said, indented.
fn render(command: &Command, reply: &ControlReply) -> String {
    let body = match &reply.outcome {
        ReplyOutcome::Error(message) => return format!("-> {}: ERROR {message}", reply.worker),
        ReplyOutcome::Ok(body) => body,
    };
    let now = now_ms();
    let lines: Vec<String> = match (command, body) {
        (Command::Active | Command::Reserved | Command::Scheduled, Value::Array(tasks)) => {
            if tasks.is_empty() {
                vec!["- empty -".to_string()]
            } else {
                tasks.iter().map(|task| task_line(task, now)).collect()
            }
        }
        (Command::Registered, Value::Array(tasks)) => tasks
            .iter()
            .map(|task| {
                let mut line = format!("* {}", text(&task["task"]));
                if let Some(rate) = task["rate_limit"].as_str() {
                    line.push_str(&format!(" [rate_limit={rate}]"));
                }
                if let Some(ms) = task["time_limit_ms"].as_u64() {
                    line.push_str(&format!(
                        " [time_limit={}]",
                        units::format_duration(Duration::from_millis(ms))
                    ));
                }
                line
            })
            .collect(),
        (Command::Stats, _) => serde_json::to_string_pretty(body)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect(),
        (_, Value::String(said)) => vec![said.clone()],
        (_, other) => vec![other.to_string()],
    };
    let mut out = format!("-> {}: OK", reply.worker);
    for line in lines {
        out.push_str("\n    ");
        out.push_str(&line);
    }
    out
}

/// `* ID  TASK(ARGS)  started 1.2s ago (attempt 1)`.
fn task_line(task: &Value, now: u64) -> String {
    let mut line = format!(
        "* {}  {}({})",
        text(&task["id"]),
        text(&task["task"]),
        text(&task["args"])
    );
    let ago = |ms: u64| units::format_duration(Duration::from_millis(now.saturating_sub(ms)));
    if let Some(eta) = task["eta_ms"].as_u64() {
        let when = if eta > now {
            format!(
                "in {}",
                units::format_duration(Duration::from_millis(eta - now))
            )
        } else {
            "due now".to_string()
        };
        line.push_str(&format!("  eta {when} (queue {})", text(&task["queue"])));
    } else if let Some(started) = task["started_ms"].as_u64() {
        line.push_str(&format!("  started {} ago", ago(started)));
    } else if let Some(received) = task["received_ms"].as_u64() {
        line.push_str(&format!("  received {} ago", ago(received)));
    }
    if let Some(attempt) = task["attempt"].as_u64() {
        line.push_str(&format!(" (attempt {attempt})"));
    }
    line
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
