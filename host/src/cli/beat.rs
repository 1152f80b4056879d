//! `wtq beat` (fire periodic tasks until SIGTERM or SIGINT) and `wtq schedule add|list|remove`
//! (the entries stored in the broker, which every beat of that broker fires).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;
use wtq_client::broker::Schedules;
use wtq_client::schedule::{Missed, Overlap};

use super::queue::{BrokerConnection, broker_failure};
use super::{Failure, exit, say};
use crate::beat::spec::{Spec, parse_file};
use crate::beat::{BeatConfig, statuses};
use crate::units;

/// Shortest beat lease: it is renewed every third of it.
const MIN_LEASE: Duration = Duration::from_millis(300);

#[derive(Debug, Args)]
pub struct BeatArgs {
    /// A TOML schedule file (`[[schedule]]` tables; see the README). Entries stored in the
    /// broker (`wtq schedule add`) are fired too.
    #[arg(long, short = 's', value_name = "FILE")]
    schedule: Option<std::path::PathBuf>,
    /// How long the leading beat holds the lease; another beat takes over within this (plus a
    /// third of it) when the leader dies.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "5s")]
    lease: Duration,
    /// This beat's name in the lease (default: beat@HOST-PID).
    #[arg(long, short = 'n')]
    name: Option<String>,
    /// Fire the stored entries of every tenant of the hosted service (`POST /v1/schedules`),
    /// each in its own namespace with its own lease; new tenants are picked up within
    /// seconds. The URL's namespace is ignored; a schedule file cannot be given.
    #[arg(long, conflicts_with = "schedule")]
    tenants: bool,
    #[command(flatten)]
    connection: BrokerConnection,
}

/// `wtq beat`.
pub fn beat(args: BeatArgs) -> Result<u8, Failure> {
    let usage = |message: String| Failure::new(exit::USAGE, message);
    if args.lease < MIN_LEASE {
        return Err(usage(format!(
            "--lease {} is too short: use at least {}",
            units::format_duration(args.lease),
            units::format_duration(MIN_LEASE)
        )));
    }
    let entries = match &args.schedule {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| usage(format!("reading {}: {error}", path.display())))?;
            parse_file(&text).map_err(|error| usage(format!("{}: {error}", path.display())))?
        }
        None => Vec::new(),
    };
    let holder = args
        .name
        .clone()
        .unwrap_or_else(|| super::worker::default_name().replacen("wtq@", "beat@", 1));
    let config = BeatConfig {
        holder,
        lease: args.lease,
        entries,
    };
    super::client_command(async {
        let broker = args.connection.connect().await?;
        eprintln!(
            "beat {} started: {} file entries, lease {}",
            config.holder,
            config.entries.len(),
            units::format_duration(config.lease)
        );
        if args.tenants {
            crate::beat::run_tenants(config, broker, super::worker::shutdown_signal()).await;
        } else {
            crate::beat::run(config, broker, super::worker::shutdown_signal()).await;
        }
        Ok(exit::SUCCESS)
    })
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: ScheduleCommand,
    #[command(flatten)]
    connection: BrokerConnection,
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// Store an entry (replacing one of the same name); every beat of this broker fires it.
    Add(Box<AddArgs>),
    /// List the stored entries and when each last fired.
    List {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Delete an entry and its state.
    Remove { name: String },
}

#[derive(Debug, Args)]
struct AddArgs {
    /// Entry name: 1 to 128 ASCII letters, digits, `_`, `-` or `.`.
    name: String,
    /// The task: NAME.TASK or NAME@DIGEST.TASK.
    #[arg(long)]
    task: String,
    /// A crontab expression (5 fields, or 6-7 with seconds first).
    #[arg(long, group = "when")]
    cron: Option<String>,
    /// The cron expression's IANA time zone (default UTC).
    #[arg(long, requires = "cron")]
    tz: Option<String>,
    /// A fixed interval: 30s, 5m, 1h...
    #[arg(long, group = "when")]
    every: Option<String>,
    /// Once, at an RFC 3339 time.
    #[arg(long, group = "when")]
    at: Option<String>,
    /// Positional arguments, a JSON array.
    #[arg(long)]
    args: Option<String>,
    /// Keyword arguments, a JSON object.
    #[arg(long)]
    kwargs: Option<String>,
    /// Missed ticks: fire only the latest (skip) or all within --catch-up-window (catch_up).
    #[arg(long, value_parser = ["skip", "catch_up"])]
    missed: Option<String>,
    #[arg(long, value_name = "DURATION")]
    catch_up_window: Option<String>,
    /// While the previous run is not final: fire anyway (allow) or skip the tick (skip).
    #[arg(long, value_parser = ["allow", "skip"])]
    overlap: Option<String>,
    #[arg(long, short = 'Q')]
    queue: Option<String>,
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Each run's time limit.
    #[arg(long, value_name = "DURATION")]
    time_limit: Option<String>,
    /// A run not started within this after its tick is revoked.
    #[arg(long, value_name = "DURATION")]
    expires: Option<String>,
    #[arg(long)]
    max_retries: Option<u32>,
}

/// `wtq schedule …`.
pub async fn schedule(args: ScheduleArgs) -> Result<u8, Failure> {
    let usage = |message: String| Failure::new(exit::USAGE, message);
    match args.command {
        ScheduleCommand::Add(add) => {
            let json = |text: &Option<String>, what: &str| -> Result<Option<Value>, Failure> {
                text.as_deref()
                    .map(|text| {
                        serde_json::from_str(text)
                            .map_err(|error| usage(format!("--{what}: invalid JSON: {error}")))
                    })
                    .transpose()
            };
            let spec = Spec {
                args: json(&add.args, "args")?,
                kwargs: json(&add.kwargs, "kwargs")?,
                name: add.name,
                task: add.task,
                cron: add.cron,
                tz: add.tz,
                every: add.every,
                at: add.at,
                missed: add.missed.map(|missed| match missed.as_str() {
                    "catch_up" => Missed::CatchUp,
                    _ => Missed::Skip,
                }),
                catch_up_window: add.catch_up_window,
                overlap: add.overlap.map(|overlap| match overlap.as_str() {
                    "skip" => Overlap::Skip,
                    _ => Overlap::Allow,
                }),
                queue: add.queue,
                priority: add.priority,
                time_limit: add.time_limit,
                expires: add.expires,
                max_retries: add.max_retries,
            };
            let entry = spec.entry().map_err(usage)?;
            let broker = args.connection.connect().await?;
            broker.put_schedule(&entry).await.map_err(broker_failure)?;
            say(format!("schedule {} stored", entry.name));
        }
        ScheduleCommand::List { json } => {
            let broker = args.connection.connect().await?;
            let list = statuses(&broker).await.map_err(broker_failure)?;
            if json {
                say(serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into()));
            } else {
                for status in list {
                    let trigger = match &status.entry.trigger {
                        wtq_client::schedule::Trigger::Cron { expr, tz } => match tz {
                            Some(tz) => format!("cron `{expr}` {tz}"),
                            None => format!("cron `{expr}`"),
                        },
                        wtq_client::schedule::Trigger::EveryMs(ms) => {
                            format!(
                                "every {}",
                                units::format_duration(Duration::from_millis(*ms))
                            )
                        }
                        wtq_client::schedule::Trigger::AtMs(ms) => {
                            format!("at {}", units::format_rfc3339(*ms))
                        }
                    };
                    let last = status
                        .fired
                        .and_then(|fired| fired.task.map(|task| (fired.tick_ms, task)))
                        .map_or("never fired".to_string(), |(tick, task)| {
                            format!("last {} ({task})", units::format_rfc3339(tick))
                        });
                    say(format!(
                        "{}  {}  {}  {}",
                        status.entry.name, status.entry.call.task, trigger, last
                    ));
                }
            }
        }
        ScheduleCommand::Remove { name } => {
            let broker = args.connection.connect().await?;
            if !broker
                .remove_schedule(&name)
                .await
                .map_err(broker_failure)?
            {
                return Err(Failure::new(
                    exit::USAGE,
                    format!("no schedule `{name}`; see `wtq schedule list`"),
                ));
            }
            say(format!("schedule {name} removed"));
        }
    }
    Ok(exit::SUCCESS)
}
