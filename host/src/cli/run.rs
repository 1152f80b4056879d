//! `wtq run <component.wasm> <task> [ARGS_JSON]`: one call, locally, in the workers' sandbox.

use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};

use super::limits::LimitArgs;
use super::{Failure, current_thread_runtime, exit, failure_exit_code, say, visible};
use crate::sandbox::{CallReport, Component, Outcome, Sandbox};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task component (.wasm).
    component: PathBuf,
    /// The task to call, e.g. `add`.
    #[arg(required_unless_present = "list")]
    task: Option<String>,
    /// Positional arguments as a JSON array, e.g. '[2,3]' (or a JSON object of keyword
    /// arguments); `@FILE` reads them from a file, `-` from stdin.
    args: Option<String>,
    /// Keyword arguments as a JSON object, e.g. '{"y":3}'.
    #[arg(long, value_name = "JSON")]
    kwargs: Option<String>,
    /// List the component's tasks with their docs instead of calling one.
    #[arg(long, conflicts_with_all = ["task", "args", "kwargs"])]
    list: bool,
    /// Print a JSON report (state, output or error, duration, fuel, peak memory, log).
    #[arg(long)]
    json: bool,
    /// Also print the task's log to stderr.
    #[arg(long)]
    log: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run(args: RunArgs) -> Result<u8, Failure> {
    let limits = args
        .limits
        .limits()
        .map_err(|message| Failure::new(exit::USAGE, message))?;
    let config = args
        .limits
        .sandbox_config(1)
        .map_err(|message| Failure::new(exit::USAGE, message))?;
    let positional = args
        .args
        .as_deref()
        .map(|text| parse_json("arguments", text))
        .transpose()?;
    let keywords = args
        .kwargs
        .as_deref()
        .map(|text| parse_json("--kwargs", text))
        .transpose()?;
    let wasm = std::fs::read(&args.component).map_err(|error| {
        Failure::new(
            exit::INVALID_COMPONENT,
            format!(
                "cannot read component `{}`: {error}",
                args.component.display()
            ),
        )
    })?;
    let metering = limits.metering();
    let sandbox =
        Sandbox::new(config).map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
    let runtime = current_thread_runtime()?;
    let component = runtime
        .block_on(sandbox.load(wasm, metering))
        .map_err(|error| {
            Failure::new(
                exit::INVALID_COMPONENT,
                format!("{}: {error}", args.component.display()),
            )
        })?;
    if args.list {
        print_tasks(&component, args.json);
        return Ok(exit::SUCCESS);
    }
    let name = args.task.as_deref().unwrap_or_default();
    let Some(task) = component.task(name) else {
        let known: Vec<&str> = component
            .tasks()
            .iter()
            .map(|task| task.name.as_str())
            .collect();
        return Err(Failure::new(
            exit::INVALID_ARGS,
            format!(
                "unknown task `{name}` in {}; it offers: {}",
                args.component.display(),
                known.join(", ")
            ),
        ));
    };
    // A lone JSON object is keyword arguments, as on the wire.
    let (positional, keywords) = match (positional, keywords) {
        (Some(object @ Value::Object(_)), None) => (None, Some(object)),
        other => other,
    };
    let encoded = wtq_client::args::encode(task, positional, keywords)
        .map_err(|error| Failure::new(exit::INVALID_ARGS, error.to_string()))?;
    let task_id = uuid::Uuid::new_v4().to_string();
    let request = crate::sandbox::CallRequest {
        task: name,
        args: &encoded,
        task_id: &task_id,
        attempt: 1,
        tenant: "",
        limits,
        ..Default::default()
    };
    let report = runtime
        .block_on(component.call(&request))
        .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?;
    if args.log && !report.log.is_empty() {
        eprint!("{}", visible(&report.log));
    }
    if args.json {
        say(report_json(name, &task_id, &component, &report));
    }
    match &report.outcome {
        Outcome::Success { output } => {
            if !args.json {
                say(output);
            }
            Ok(exit::SUCCESS)
        }
        Outcome::Failure { kind, message } => {
            let code = failure_exit_code(*kind);
            if args.json {
                Ok(code)
            } else {
                Err(Failure::new(
                    code,
                    format!("{name} failed ({kind}): {message}"),
                ))
            }
        }
        Outcome::Retry { message, countdown } => {
            if args.json {
                return Ok(exit::RETRY);
            }
            let when = countdown.map_or(String::new(), |delay| {
                format!(" in {}", crate::units::format_duration(delay))
            });
            Err(Failure::new(
                exit::RETRY,
                format!("{name} asked to be retried{when}: {message}"),
            ))
        }
    }
}

/// Parses JSON given on the command line, or read from a file (`@PATH`) or stdin (`-`) when
/// it is too large for an argument (the OS caps one at 128 KiB).
pub(super) fn parse_json(what: &str, text: &str) -> Result<Value, Failure> {
    let read = |source: &str, result: std::io::Result<String>| {
        result.map_err(|error| {
            Failure::new(
                exit::USAGE,
                format!("cannot read {what} from {source}: {error}"),
            )
        })
    };
    let owned;
    let text = if text == "-" {
        let mut input = String::new();
        owned = read(
            "stdin",
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input).map(|_| input),
        )?;
        owned.as_str()
    } else if let Some(path) = text.strip_prefix('@') {
        owned = read(&format!("`{path}`"), std::fs::read_to_string(path))?;
        owned.as_str()
    } else {
        text
    };
    serde_json::from_str(text).map_err(|error| {
        Failure::new(
            exit::USAGE,
            format!("malformed JSON in {what} `{}`: {error}", abbreviate(text)),
        )
    })
}

fn abbreviate(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn print_tasks(component: &Component, as_json: bool) {
    if as_json {
        say(json!({ "digest": component.digest(), "tasks": component.tasks() }));
        return;
    }
    for task in component.tasks() {
        let signature = format!("{}({})", task.name, task.params.join(", "));
        let doc = super::one_line(task.doc.lines().next().unwrap_or_default());
        say(format!("{signature:<24} {doc}"));
    }
}

fn report_json(task: &str, task_id: &str, component: &Component, report: &CallReport) -> Value {
    let (state, output, error, retry) = match &report.outcome {
        Outcome::Success { output } => {
            let value: Value = serde_json::from_str(output).unwrap_or(Value::Null);
            ("SUCCESS", value, Value::Null, Value::Null)
        }
        Outcome::Failure { kind, message } => (
            "FAILURE",
            Value::Null,
            json!({ "kind": kind, "message": message }),
            Value::Null,
        ),
        Outcome::Retry { message, countdown } => (
            "RETRY",
            Value::Null,
            Value::Null,
            json!({ "message": message, "countdown_ms": countdown.map(|d| d.as_millis() as u64) }),
        ),
    };
    json!({
        "task_id": task_id,
        "task": task,
        "digest": component.digest(),
        "state": state,
        "output": output,
        "error": error,
        "retry": retry,
        "duration_ms": report.duration.as_secs_f64() * 1e3,
        "fuel": report.fuel,
        "peak_memory": report.peak_memory,
        "log": report.log,
        "progress": report.progress,
        "compile": component.compile_source(),
        "reused_instance": report.reused_instance,
    })
}
