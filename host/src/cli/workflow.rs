//! `wtq workflow submit FILE|-`, and the workflow side of `wtq result` and `wtq revoke`: a
//! workflow id shows its tree with each member's state, and revoking it revokes every member
//! not yet finished.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use wtq_client::message::{State, TaskRecord};
use wtq_client::workflow::{Node, Tree, WorkflowResult};
use wtq_client::{Client, Endpoint, ResultError};

use super::queue::{Connection, FOREVER, broker_failure, client_failure};
use super::{Failure, exit, one_line, say};
use crate::units;

#[derive(Debug, Args)]
pub struct WorkflowArgs {
    #[command(subcommand)]
    command: WorkflowCommand,
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// Submit a workflow document (JSON: chain, group, chord, chunks, map, starmap of task
    /// calls); prints its id, or its result with --wait.
    Submit(SubmitArgs),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The JSON document, or `-` for standard input.
    file: PathBuf,
    /// The workflow's id (default: a new UUID); `wtq result ID` shows its tree.
    #[arg(long)]
    id: Option<String>,
    /// Wait for the workflow's result and print it.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, requires = "wait")]
    timeout: Option<Duration>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn workflow(args: WorkflowArgs) -> Result<u8, Failure> {
    match args.command {
        WorkflowCommand::Submit(args) => submit(args).await,
    }
}

async fn submit(args: SubmitArgs) -> Result<u8, Failure> {
    let from_stdin = args.file.as_os_str() == "-";
    let shown = if from_stdin {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let text = if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| {
                Failure::new(exit::USAGE, format!("reading standard input: {error}"))
            })?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|error| Failure::new(exit::USAGE, format!("reading {shown}: {error}")))?
    };
    let document: Node = serde_json::from_str(&text).map_err(|error| {
        Failure::new(
            exit::INVALID_ARGS,
            format!("{shown} is not a workflow document: {error}"),
        )
    })?;
    let client = Client::with_producer(args.connection.endpoint().await?);
    let workflow = client
        .submit(&document, args.id.as_deref())
        .await
        .map_err(client_failure)?;
    if !args.wait {
        say(workflow.id());
        return Ok(exit::SUCCESS);
    }
    let timeout = args.timeout.unwrap_or(FOREVER);
    print_outcome(&workflow, workflow.get(timeout).await)
}

/// Prints a workflow's result (or fails with its error) and returns the exit code.
fn print_outcome(
    workflow: &WorkflowResult<Endpoint>,
    outcome: Result<Value, ResultError>,
) -> Result<u8, Failure> {
    let id = workflow.id();
    match outcome {
        Ok(value) => {
            say(value);
            Ok(exit::SUCCESS)
        }
        Err(ResultError::Failed { id: task, error }) => Err(Failure::new(
            exit::TASK_FAILED,
            format!(
                "workflow {id} failed: task {task} ({}): {}",
                error.kind, error.message
            ),
        )),
        Err(ResultError::Revoked { id: task, error }) => Err(Failure::new(
            exit::REVOKED,
            format!(
                "workflow {id} was revoked: task {task} ({}): {}",
                error.kind, error.message
            ),
        )),
        Err(ResultError::Timeout {
            id: task,
            timeout,
            state,
        }) => Err(Failure::new(
            exit::NOT_READY,
            format!(
                "workflow {id} is not finished after {}: task {task} is {state}",
                units::format_duration(timeout)
            ),
        )),
        Err(ResultError::Unknown { id: task }) => Err(Failure::new(
            exit::UNKNOWN_TASK,
            format!("workflow {id}: its task {task} is gone (its result expired)"),
        )),
        Err(ResultError::Broker(error)) => Err(broker_failure(error)),
    }
}

/// `wtq result ID` for a workflow id: the tree with each member's state, then the result
/// once it is final (with `wait`, after waiting for it). `None` if there is no such workflow.
pub async fn result(
    endpoint: &Endpoint,
    id: &str,
    wait: Option<Duration>,
    json: bool,
) -> Result<Option<u8>, Failure> {
    let client = Client::with_producer(endpoint.clone());
    let Some(workflow) = client.workflow(id).await.map_err(client_failure)? else {
        return Ok(None);
    };
    // Without --wait: the result if it is there.
    let outcome = workflow.get(wait.unwrap_or(Duration::ZERO)).await;
    let records = workflow.records().await.map_err(broker_failure)?;
    if json {
        let states: BTreeMap<&String, Value> = records
            .iter()
            .map(|(id, record)| (id, json!({"state": record.state, "error": record.error})))
            .collect();
        let result = match &outcome {
            Ok(value) => value.clone(),
            Err(_) => Value::Null,
        };
        say(json!({"id": id, "tree": workflow.tree(), "states": states, "result": result}));
    } else {
        say(format!("workflow {id}"));
        render(workflow.tree(), &records, 1);
    }
    match (json, outcome) {
        (true, Ok(_)) => Ok(Some(exit::SUCCESS)),
        (false, Ok(value)) => {
            say(format!("result: {value}"));
            Ok(Some(exit::SUCCESS))
        }
        (_, Err(ResultError::Timeout { .. })) if wait.is_none() => Err(Failure::new(
            exit::NOT_READY,
            format!("workflow {id} is not finished yet (use --wait)"),
        )),
        (_, outcome) => print_outcome(&workflow, outcome).map(Some),
    }
}

/// `wtq revoke ID` for a workflow id; `None` if there is no such workflow.
pub async fn revoke(endpoint: &Endpoint, id: &str, terminate: bool) -> Result<Option<u8>, Failure> {
    let client = Client::with_producer(endpoint.clone());
    let Some(workflow) = client.workflow(id).await.map_err(client_failure)? else {
        return Ok(None);
    };
    let count = workflow.revoke(terminate).await.map_err(broker_failure)?;
    say(format!("revoked {count} unfinished tasks of workflow {id}"));
    Ok(Some(exit::SUCCESS))
}

/// Groups larger than this show their first members and a count by state for the rest.
const SHOWN_MEMBERS: usize = 10;

fn render(tree: &Tree, records: &HashMap<String, TaskRecord>, depth: usize) {
    let pad = "  ".repeat(depth);
    match tree {
        Tree::Task(leaf) => {
            let mut line = format!("{pad}{} {} ", leaf.task, leaf.id);
            if leaf.batch {
                line = format!("{pad}{} (batch) {} ", leaf.task, leaf.id);
            }
            line.push_str(&match records.get(&leaf.id) {
                Some(record) => describe(record),
                None => "(expired)".into(),
            });
            say(line);
            for callback in &leaf.link {
                say(format!("{pad}  link:"));
                render(callback, records, depth + 2);
            }
            for errback in &leaf.link_error {
                say(format!("{pad}  link_error:"));
                render(errback, records, depth + 2);
            }
        }
        Tree::Chain(members) => {
            say(format!("{pad}chain of {}", members.len()));
            members
                .iter()
                .for_each(|member| render(member, records, depth + 1));
        }
        Tree::Group(members) | Tree::Chunks(members) => {
            let what = if matches!(tree, Tree::Group(_)) {
                "group"
            } else {
                "chunks"
            };
            say(format!(
                "{pad}{what} of {}{}",
                members.len(),
                counts(members, records)
            ));
            for member in members.iter().take(SHOWN_MEMBERS) {
                render(member, records, depth + 1);
            }
            if members.len() > SHOWN_MEMBERS {
                say(format!(
                    "{pad}  … {} more{}",
                    members.len() - SHOWN_MEMBERS,
                    counts(&members[SHOWN_MEMBERS..], records)
                ));
            }
        }
        Tree::Chord { header, body } => {
            say(format!("{pad}chord"));
            say(format!(
                "{pad}  header of {}{}",
                header.len(),
                counts(header, records)
            ));
            for member in header.iter().take(SHOWN_MEMBERS) {
                render(member, records, depth + 2);
            }
            if header.len() > SHOWN_MEMBERS {
                say(format!(
                    "{pad}    … {} more{}",
                    header.len() - SHOWN_MEMBERS,
                    counts(&header[SHOWN_MEMBERS..], records)
                ));
            }
            say(format!("{pad}  body"));
            render(body, records, depth + 2);
        }
        Tree::Linked {
            node,
            link,
            link_error,
        } => {
            render(node, records, depth);
            for callback in link {
                say(format!("{pad}link:"));
                render(callback, records, depth + 1);
            }
            for errback in link_error {
                say(format!("{pad}link_error:"));
                render(errback, records, depth + 1);
            }
        }
    }
}

/// `: 9990 SUCCESS, 10 PENDING` over every task inside `members`.
fn counts(members: &[Tree], records: &HashMap<String, TaskRecord>) -> String {
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for id in members.iter().flat_map(Tree::ids) {
        let state = records
            .get(&id)
            .map_or("EXPIRED", |record| record.state.as_str());
        *by_state.entry(state).or_default() += 1;
    }
    let parts: Vec<String> = by_state
        .iter()
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    format!(": {}", parts.join(", "))
}

fn describe(record: &TaskRecord) -> String {
    match (record.state, &record.error) {
        (State::Success, _) => format!("SUCCESS = {}", shorten(record.output().unwrap_or("null"))),
        (state, Some(error)) if state.is_final() || state == State::Retry => format!(
            "{state} ({}): {}",
            error.kind,
            shorten(&one_line(&error.message))
        ),
        (state, _) => state.to_string(),
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.chars().count() <= MAX {
        return one_line(text);
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{}…", one_line(&cut))
}
