//! Asks a component which tasks it offers, once, at load.
//!
//! The answer comes from untrusted code: one JSON string (its copy is bounded by the guest's
//! memory limit), checked against a size budget before it is parsed, and names checked to be
//! usable task and parameter names.

use std::time::{Duration, Instant};

use super::bindings::TaskContext;
use super::state::{HostState, truncate};
use super::{DEFAULT_LOG, DEFAULT_MEMORY, Error, Metering, Outcome, Prepared, Step, TaskInfo};

/// Time, fuel and memory the `list` call may use.
const LIST_TIME: Duration = Duration::from_secs(10);
const LIST_FUEL: u64 = 10_000_000_000;
/// Largest task list, in bytes of JSON.
const LIST_BUDGET: usize = 1 << 20;
/// Most tasks one component may offer.
const MAX_TASKS: usize = 1_000;
/// Most parameters one task may declare.
const MAX_PARAMS: usize = 64;
/// Longest task or parameter name.
const MAX_NAME: usize = 128;
/// Longest doc kept per task; longer ones are cut with a note.
const MAX_DOC: usize = 4 << 10;

/// One entry of the list, as the WIT documents it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    params: Vec<String>,
}

/// Calls the component's `list` under limits and validates the answer.
pub(crate) async fn list(prepared: &Prepared) -> Result<Vec<TaskInfo>, Error> {
    let context = TaskContext {
        task_id: String::new(),
        task_name: String::new(),
        attempt: 0,
        tenant: String::new(),
        deadline_unix_ms: 0,
    };
    let state = HostState::new(context, DEFAULT_MEMORY, DEFAULT_LOG);
    let fuel = (prepared.metering == Metering::Fuel).then_some(LIST_FUEL);
    let deadline = Instant::now() + LIST_TIME;
    let mut store = super::new_store(prepared, state, fuel, deadline)?;
    let answered = tokio::time::timeout_at(deadline.into(), async {
        let task = prepared.pre.instantiate_async(&mut store).await?;
        task.wtq_task_tasks().call_list(&mut store).await
    })
    .await;
    let raw = match answered {
        Ok(Ok(json)) => json,
        Ok(Err(error)) => {
            let limits = super::Limits {
                time: LIST_TIME,
                fuel,
                ..super::Limits::default()
            };
            let message = match super::classify(Step::Trapped(error), &limits, 0) {
                Outcome::Failure { kind, message } => format!("{kind}: {message}"),
                other => format!("{other:?}"),
            };
            return Err(Error::List(message));
        }
        Err(_) => return Err(Error::List(format!("no answer within {LIST_TIME:?}"))),
    };
    read(&raw).map_err(Error::List)
}

fn read(json: &str) -> Result<Vec<TaskInfo>, String> {
    if json.len() > LIST_BUDGET {
        return Err(format!(
            "the task list is {} bytes of JSON, over the limit of {LIST_BUDGET}",
            json.len()
        ));
    }
    let entries: Vec<Entry> = serde_json::from_str(json).map_err(|error| {
        format!("the task list is not a JSON array of {{name, doc, params}} objects: {error}")
    })?;
    if entries.is_empty() {
        return Err("the component offers no tasks".into());
    }
    if entries.len() > MAX_TASKS {
        return Err(format!(
            "the component offers {} tasks, over the limit of {MAX_TASKS}",
            entries.len()
        ));
    }
    let mut tasks: Vec<TaskInfo> = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = entry.name;
        check_name(&name, "task")?;
        if tasks.iter().any(|task| task.name == name) {
            return Err(format!("the component lists task `{name}` twice"));
        }
        if entry.params.len() > MAX_PARAMS {
            return Err(format!(
                "task `{name}` declares {} parameters, over the limit of {MAX_PARAMS}",
                entry.params.len()
            ));
        }
        for param in &entry.params {
            check_name(param, &format!("parameter of task `{name}`"))?;
        }
        let doc = truncate(entry.doc, MAX_DOC);
        tasks.push(TaskInfo {
            name,
            doc,
            params: entry.params,
        });
    }
    Ok(tasks)
}

/// Names travel in addresses (`math.add`), CLI output and Redis keys: keep them plain.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        Ok(())
    } else {
        let shown: String = name
            .chars()
            .take(40)
            .flat_map(char::escape_default)
            .collect();
        Err(format!(
            "{what} name `{shown}` is not usable: use 1 to {MAX_NAME} ASCII letters, digits, `_` or `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_checked() {
        let check = |json: &str, expected: Result<usize, &str>| match (read(json), expected) {
            (Ok(tasks), Ok(count)) => assert_eq!(tasks.len(), count, "{json}"),
            (Err(message), Err(fragment)) => {
                assert!(message.contains(fragment), "`{message}` lacks `{fragment}`")
            }
            (got, _) => panic!("{json}: unexpected {:?}", got.map(|tasks| tasks.len())),
        };
        check(
            r#"[{"name":"add","doc":"Adds.","params":["x","y"]}]"#,
            Ok(1),
        );
        check(r#"[{"name":"noop"}]"#, Ok(1));
        check("[]", Err("offers no tasks"));
        check(r#"{"name":"add"}"#, Err("not a JSON array"));
        check(r#"[{"name":"a.b"}]"#, Err("task name `a.b` is not usable"));
        check(r#"[{"name":""}]"#, Err("task name `` is not usable"));
        check(
            r#"[{"name":"a"},{"name":"a"}]"#,
            Err("lists task `a` twice"),
        );
        check(
            r#"[{"name":"a","params":["x y"]}]"#,
            Err("parameter of task `a` name `x y`"),
        );
        let many: Vec<String> = (0..=MAX_TASKS)
            .map(|i| format!(r#"{{"name":"t{i}"}}"#))
            .collect();
        check(
            &format!("[{}]", many.join(",")),
            Err("over the limit of 1000"),
        );
        let huge = format!(r#"[{{"name":"a","doc":"{}"}}]"#, "x".repeat(LIST_BUDGET));
        check(&huge, Err("bytes of JSON, over the limit"));
    }
}
