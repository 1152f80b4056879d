//! The `wtq` command line: parses arguments into a validated config and calls one library
//! function per command. Errors print one line on stderr and map to documented exit codes.

mod beat;
mod bench;
mod bench_chord;
mod bench_http;
mod bench_queue;
mod control;
mod events;
mod limits;
mod progress;
mod queue;
mod run;
mod serve;
mod task_policy;
mod tenant;
mod worker;
mod workflow;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::sandbox::FailureKind;

/// wtq: a distributed task queue whose tasks are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wtq", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one task of a component locally, with no server, in the workers' sandbox.
    Run(Box<run::RunArgs>),
    /// Validate a component and store it in the registry under its digest.
    Deploy(queue::DeployArgs),
    /// List deployed components, their versions and tasks.
    Components(queue::ComponentsArgs),
    /// Enqueue a task (prints its id, or its result with --wait).
    Call(Box<queue::CallArgs>),
    /// Consume queues and run their tasks.
    Worker(Box<worker::WorkerArgs>),
    /// Print a task's output (exit 0 only for SUCCESS).
    Result(queue::ResultArgs),
    /// Show a task's state and history.
    Status(queue::StatusArgs),
    /// Revoke a task or a workflow; --terminate stops what is running.
    Revoke(queue::RevokeArgs),
    /// Submit workflows: chains, groups, chords, chunks, map and starmap of tasks.
    Workflow(workflow::WorkflowArgs),
    /// Remove every waiting message from queues.
    Purge(queue::PurgeArgs),
    /// Dead-lettered tasks: list, retry, purge.
    Dead(queue::DeadArgs),
    /// Tail the event log live: task-sent … task-succeeded, worker-online … (--json: JSON lines).
    Events(events::EventsArgs),
    /// Ask live workers what they are doing: active, reserved, scheduled, stats, registered,
    /// ping.
    Inspect(control::InspectArgs),
    /// Tell live workers what to do: shutdown, pool-grow, pool-shrink, autoscale, rate-limit,
    /// time-limit, add-consumer, cancel-consumer, revoke.
    Control(control::ControlArgs),
    /// Fire periodic tasks: a schedule file's entries and those stored in the broker.
    Beat(beat::BeatArgs),
    /// Periodic task entries stored in the broker: add, list, remove.
    Schedule(beat::ScheduleArgs),
    /// Measure the sandbox or the queue and print the figures.
    Bench(bench::BenchArgs),
    /// Serve the HTTP API for many tenants over Redis (every request needs a token).
    Serve(serve::ServeArgs),
    /// Run the service and a worker in one process, on the embedded broker by default.
    Up(Box<serve::UpArgs>),
    /// Manage the service's tenants and their quotas.
    Tenant(tenant::TenantArgs),
    /// Create, list and revoke API tokens.
    Token(tenant::TokenArgs),
}

/// Exit codes, documented in the README. Scripts may rely on them.
pub mod exit {
    /// The task succeeded.
    pub const SUCCESS: u8 = 0;
    /// The task returned an error (`task_failed`) or an output that is not JSON.
    pub const TASK_FAILED: u8 = 1;
    /// The command line was wrong: an unknown flag, a bad limit value, malformed JSON.
    pub const USAGE: u8 = 2;
    /// The task asked to be retried.
    pub const RETRY: u8 = 3;
    /// The guest trapped.
    pub const TRAP: u8 = 4;
    /// The arguments do not fit the task (type, arity), or the task does not exist.
    pub const INVALID_ARGS: u8 = 5;
    /// The file is unreadable or not a valid task component.
    pub const INVALID_COMPONENT: u8 = 6;
    /// `time_limit_exceeded`.
    pub const TIME_LIMIT: u8 = 10;
    /// `out_of_fuel`.
    pub const OUT_OF_FUEL: u8 = 11;
    /// `memory_limit_exceeded`.
    pub const MEMORY_LIMIT: u8 = 12;
    /// `stack_overflow`.
    pub const STACK_OVERFLOW: u8 = 13;
    /// `output_too_large`.
    pub const OUTPUT_TOO_LARGE: u8 = 14;
    /// `args_too_large`.
    pub const ARGS_TOO_LARGE: u8 = 15;
    /// `terminated` (revoked while running).
    pub const TERMINATED: u8 = 16;
    /// The task was revoked (`wtq result`, `wtq call --wait`).
    pub const REVOKED: u8 = 17;
    /// The task has not finished (no --wait, or the --timeout passed).
    pub const NOT_READY: u8 = 18;
    /// No such task id (never enqueued, or its result expired).
    pub const UNKNOWN_TASK: u8 = 19;
    /// The broker or the service cannot be reached, or the service failed (sysexits
    /// `EX_UNAVAILABLE`).
    pub const UNAVAILABLE: u8 = 69;
    /// The host itself failed (engine, cache, I/O).
    pub const INTERNAL: u8 = 70;
    /// The service's rate limit refused the request for now; try again later (sysexits
    /// `EX_TEMPFAIL`).
    pub const RATE_LIMITED: u8 = 75;
    /// The service refused the token: missing, unknown, revoked, or not for this command
    /// (sysexits `EX_NOPERM`).
    pub const DENIED: u8 = 77;
}

/// The exit code for a failed call.
pub fn failure_exit_code(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::TaskFailed | FailureKind::InvalidOutput => exit::TASK_FAILED,
        FailureKind::InvalidArgs | FailureKind::UnknownTask => exit::INVALID_ARGS,
        FailureKind::Trap => exit::TRAP,
        FailureKind::TimeLimitExceeded => exit::TIME_LIMIT,
        FailureKind::OutOfFuel => exit::OUT_OF_FUEL,
        FailureKind::MemoryLimitExceeded => exit::MEMORY_LIMIT,
        FailureKind::StackOverflow => exit::STACK_OVERFLOW,
        FailureKind::OutputTooLarge => exit::OUTPUT_TOO_LARGE,
        FailureKind::ArgsTooLarge => exit::ARGS_TOO_LARGE,
        FailureKind::Terminated => exit::TERMINATED,
    }
}

/// A command's failure: one line for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return clap_failure(error),
    };
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Worker(args) => worker::worker(*args),
        Command::Deploy(args) => client_command(queue::deploy(args)),
        Command::Components(args) => client_command(queue::components(args)),
        Command::Call(args) => client_command(queue::call(*args)),
        Command::Result(args) => client_command(queue::result(args)),
        Command::Status(args) => client_command(queue::status(args)),
        Command::Revoke(args) => client_command(queue::revoke(args)),
        Command::Workflow(args) => client_command(workflow::workflow(args)),
        Command::Purge(args) => client_command(queue::purge(args)),
        Command::Dead(args) => client_command(queue::dead(args)),
        Command::Events(args) => client_command(events::events(args)),
        Command::Inspect(args) => client_command(control::inspect(args)),
        Command::Control(args) => client_command(control::control(args)),
        Command::Beat(args) => beat::beat(args),
        Command::Schedule(args) => client_command(beat::schedule(args)),
        Command::Serve(args) => serve::serve(args),
        Command::Up(args) => serve::up(*args),
        Command::Tenant(args) => client_command(tenant::tenant(args)),
        Command::Token(args) => client_command(tenant::token(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", one_line(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

/// Help and version go to stdout as usual; a usage error is printed as one line.
fn clap_failure(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(if error.use_stderr() {
            exit::USAGE
        } else {
            exit::SUCCESS
        });
    }
    // clap's first paragraph is the error (a missing argument's name is on its second line);
    // the usage and "--help" hints follow after a blank line.
    let rendered = error.render().to_string();
    let paragraph = rendered
        .split("\n\n")
        .next()
        .unwrap_or("invalid command line");
    let message = one_line(paragraph);
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("error: {message} (see `wtq --help`)");
    ExitCode::from(exit::USAGE)
}

/// `message` on one line, with control characters (which could be terminal escape sequences
/// from a guest) made visible instead of interpreted.
pub fn one_line(message: &str) -> String {
    visible(&message.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// `text` with control characters other than newline and tab escaped.
pub fn visible(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let keep = !c.is_control() || c == '\n' || c == '\t';
            let escaped: Vec<char> = if keep {
                vec![c]
            } else {
                c.escape_default().collect()
            };
            escaped
        })
        .collect()
}

/// Writes a line to stdout; a closed stdout (`wtq run ... | head -1`) is not an error.
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WTQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs a client command on a one-thread runtime.
fn client_command(
    command: impl std::future::Future<Output = Result<u8, Failure>>,
) -> Result<u8, Failure> {
    current_thread_runtime()?.block_on(command)
}

/// A runtime for commands that run on one thread (`wtq run`, benchmarks).
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            Failure::new(
                exit::INTERNAL,
                format!("starting the async runtime: {error}"),
            )
        })
}
