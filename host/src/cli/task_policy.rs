//! Per-task rate and time limits set at run time and held by the broker for every worker:
//! `wtq deploy --rate-limit [TASK=]RATE`, `wtq control rate-limit TASK RATE` and `wtq control
//! time-limit TASK SECS`. Parses what the operator typed, checks the task exists, stores it
//! ([`Broker::set_rate_limit`], [`Broker::set_time_limit`]). The broker's reserve enforces rate
//! limits; workers apply time limits.

use std::time::Duration;

use wtq_client::broker::Broker;
use wtq_client::registry::{Address, ComponentRecord, TaskInfo};
use wtq_client::tenancy::Rate;

use super::queue::broker_failure;
use super::{Failure, exit};
use crate::units;

/// Longest time limit accepted: a day (a task's lease is renewed meanwhile, but anything
/// longer is a typo, not a limit).
const MAX_TIME_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// One `--rate-limit [TASK=]RATE` of `wtq deploy`: a task of the deployed component, or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub task: Option<String>,
    pub rate: Rate,
}

/// Parses `[TASK=]RATE` (clap's value parser for `--rate-limit`).
pub fn parse_rate_limit_spec(text: &str) -> Result<RateLimitSpec, String> {
    let (task, rate) = match text.split_once('=') {
        Some((task, rate)) => (Some(task.trim().to_string()), rate),
        None => (None, text),
    };
    if let Some(task) = &task
        && !wtq_client::registry::valid_name(task)
    {
        return Err(format!(
            "invalid task name `{task}` in `{text}`: use [TASK=]RATE, e.g. add=10/s"
        ));
    }
    Ok(RateLimitSpec {
        task,
        rate: Rate::parse(rate)?,
    })
}

/// The `component.task` → rate pairs a deploy stores, every spec checked against the tasks
/// the component exports (a later spec for the same task wins).
pub fn deploy_rate_limits(
    component: &str,
    tasks: &[TaskInfo],
    specs: &[RateLimitSpec],
) -> Result<Vec<(String, Rate)>, Failure> {
    let mut limits: Vec<(String, Rate)> = Vec::new();
    let mut set = |task: &str, rate: Rate| {
        let key = format!("{component}.{task}");
        limits.retain(|(other, _)| *other != key);
        limits.push((key, rate));
    };
    for spec in specs {
        match &spec.task {
            None => tasks.iter().for_each(|task| set(&task.name, spec.rate)),
            Some(name) if tasks.iter().any(|task| task.name == *name) => set(name, spec.rate),
            Some(name) => {
                return Err(Failure::new(
                    exit::INVALID_ARGS,
                    format!(
                        "--rate-limit: component `{component}` has no task `{name}`; its tasks: {}",
                        task_names(tasks)
                    ),
                ));
            }
        }
    }
    Ok(limits)
}

/// Stores what [`deploy_rate_limits`] computed; returns the lines to print.
pub async fn store_rate_limits<B: Broker>(
    broker: &B,
    limits: &[(String, Rate)],
) -> Result<Vec<String>, Failure> {
    let mut lines = Vec::with_capacity(limits.len());
    for (task, rate) in limits {
        broker
            .set_rate_limit(task, Some(*rate))
            .await
            .map_err(broker_failure)?;
        lines.push(rate_line(task, Some(*rate)));
    }
    Ok(lines)
}

/// `wtq control rate-limit TASK RATE`: `RATE` is N/s|N/m|N/h, or `0`/`none` to remove.
pub(super) async fn rate_limit<B: Broker>(
    broker: &B,
    task: &str,
    rate: &str,
) -> Result<String, Failure> {
    let rate = parse_rate(rate).map_err(|message| Failure::new(exit::USAGE, message))?;
    let task = known_task(broker, task).await?;
    broker
        .set_rate_limit(&task, rate)
        .await
        .map_err(broker_failure)?;
    Ok(rate_line(&task, rate))
}

/// `wtq control time-limit TASK SECS`: seconds (fractional ok) or a duration like `90s`, or
/// `0`/`none` to remove.
pub(super) async fn time_limit<B: Broker>(
    broker: &B,
    task: &str,
    limit: &str,
) -> Result<String, Failure> {
    let limit = parse_time_limit(limit).map_err(|message| Failure::new(exit::USAGE, message))?;
    let task = known_task(broker, task).await?;
    let limit_ms = limit.map(|limit| limit.as_millis() as u64);
    broker
        .set_time_limit(&task, limit_ms)
        .await
        .map_err(broker_failure)?;
    Ok(match limit {
        Some(limit) => format!(
            "{task}: time limit {}, applied by every worker",
            units::format_duration(limit)
        ),
        None => format!("{task}: time limit removed (workers apply their own)"),
    })
}

fn rate_line(task: &str, rate: Option<Rate>) -> String {
    match rate {
        Some(rate) => format!("{task}: rate limit {rate}, enforced across all workers"),
        None => format!("{task}: rate limit removed"),
    }
}

fn removes(text: &str) -> bool {
    matches!(text.trim(), "0" | "none")
}

/// `N/s`, `N/m`, `N/h`; `None` for `0` or `none`.
fn parse_rate(text: &str) -> Result<Option<Rate>, String> {
    if removes(text) {
        return Ok(None);
    }
    Rate::parse(text)
        .map(Some)
        .map_err(|error| format!("invalid {error}; or 0 or none to remove the limit"))
}

/// Seconds (`90`, `2.5`) or a duration (`90s`, `1.5m`, `500ms`); `None` for `0` or `none`.
fn parse_time_limit(text: &str) -> Result<Option<Duration>, String> {
    let bad = || {
        format!(
            "invalid time limit `{text}`: use seconds (e.g. 30 or 2.5) or a duration (e.g. 90s, 1.5m), or 0 or none to remove it"
        )
    };
    if removes(text) {
        return Ok(None);
    }
    let text = text.trim();
    let limit = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|_| bad())?
        }
        Ok(_) => return Err(bad()),
        Err(_) => units::parse_duration(text).map_err(|_| bad())?,
    };
    if limit < Duration::from_millis(1) || limit > MAX_TIME_LIMIT {
        return Err(format!(
            "time limit `{text}` is out of range: from 1ms to {}",
            units::format_duration(MAX_TIME_LIMIT)
        ));
    }
    Ok(Some(limit))
}

/// `component.task` for an address whose component is deployed and exports the task (in any
/// of its versions: queued calls may be pinned to an older one). A pinned address names the
/// same task: limits hold for every version.
async fn known_task<B: Broker>(broker: &B, text: &str) -> Result<String, Failure> {
    let address =
        Address::parse(text).map_err(|error| Failure::new(exit::USAGE, error.to_string()))?;
    let record = broker
        .component(&address.component)
        .await
        .map_err(broker_failure)?
        .ok_or_else(|| {
            Failure::new(
                exit::INVALID_ARGS,
                format!(
                    "no component `{}` is deployed (see `wtq components`)",
                    address.component
                ),
            )
        })?;
    if !exports(&record, &address.task) {
        let tasks = record.current().map(|v| v.tasks.as_slice()).unwrap_or(&[]);
        return Err(Failure::new(
            exit::INVALID_ARGS,
            format!(
                "component `{}` has no task `{}`; its tasks: {}",
                record.name,
                address.task,
                task_names(tasks)
            ),
        ));
    }
    Ok(format!("{}.{}", address.component, address.task))
}

fn exports(record: &ComponentRecord, task: &str) -> bool {
    record
        .versions
        .iter()
        .any(|version| version.tasks.iter().any(|info| info.name == task))
}

fn task_names(tasks: &[TaskInfo]) -> String {
    if tasks.is_empty() {
        return "none".to_string();
    }
    tasks
        .iter()
        .map(|task| task.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtq_client::broker::memory::MemoryBroker;
    use wtq_client::registry::{Upload, Version};

    fn rate(count: u32, per_ms: u64) -> Rate {
        Rate { count, per_ms }
    }

    fn info(name: &str) -> TaskInfo {
        TaskInfo {
            name: name.into(),
            doc: String::new(),
            params: Vec::new(),
        }
    }

    #[test]
    fn rate_limit_specs() {
        let check = |text: &str, expected: Option<(Option<&str>, Rate)>| {
            let got = parse_rate_limit_spec(text).ok();
            let expected = expected.map(|(task, rate)| RateLimitSpec {
                task: task.map(str::to_string),
                rate,
            });
            assert_eq!(got, expected, "{text}");
        };
        check("10/s", Some((None, rate(10, 1000))));
        check("add=10/s", Some((Some("add"), rate(10, 1000))));
        check(
            "word_count=6/m",
            Some((Some("word_count"), rate(6, 60_000))),
        );
        check("add=1/h", Some((Some("add"), rate(1, 3_600_000))));
        check("add=0/s", None);
        check("add=", None);
        check("=10/s", None);
        check("a b=10/s", None);
        check("10", None);
    }

    #[test]
    fn rates_and_removal() {
        let check = |text: &str, expected: Option<Option<Rate>>| {
            assert_eq!(parse_rate(text).ok(), expected, "{text}");
        };
        check("10/s", Some(Some(rate(10, 1000))));
        check("100/m", Some(Some(rate(100, 60_000))));
        check("0", Some(None));
        check("none", Some(None));
        check("0/s", None);
        check("fast", None);
    }

    #[test]
    fn time_limits() {
        let check = |text: &str, expected: Option<Option<u64>>| {
            let got = parse_time_limit(text)
                .ok()
                .map(|limit| limit.map(|d| d.as_millis() as u64));
            assert_eq!(got, expected, "{text}");
        };
        check("30", Some(Some(30_000)));
        check("2.5", Some(Some(2500)));
        check("90s", Some(Some(90_000)));
        check("1.5m", Some(Some(90_000)));
        check("500ms", Some(Some(500)));
        check("0", Some(None));
        check("none", Some(None));
        check("-1", None);
        check("NaN", None);
        check("2d", None);
        check("90000000", None);
    }

    #[test]
    fn deploy_specs_name_tasks_of_the_component() {
        let tasks = [info("add"), info("mul")];
        let limits = |specs: &[&str]| {
            let specs: Vec<RateLimitSpec> = specs
                .iter()
                .map(|spec| parse_rate_limit_spec(spec).expect("valid spec"))
                .collect();
            deploy_rate_limits("math", &tasks, &specs)
        };
        let got = limits(&["10/s", "add=1/m"]).expect("valid");
        assert_eq!(
            got,
            [
                ("math.mul".to_string(), rate(10, 1000)),
                ("math.add".to_string(), rate(1, 60_000)),
            ]
        );
        let failure = limits(&["nope=1/s"]).expect_err("unknown task");
        assert_eq!(failure.code, exit::INVALID_ARGS);
        assert_eq!(
            failure.message,
            "--rate-limit: component `math` has no task `nope`; its tasks: add, mul"
        );
    }

    #[tokio::test]
    async fn control_commands_check_the_task_and_store_the_limit() {
        let broker = MemoryBroker::new();
        let upload = Upload {
            name: "math".into(),
            version: Version {
                digest: "ab".repeat(32),
                deployed_ms: 1,
                tasks: vec![info("add")],
                size: 1,
            },
            compressed: Vec::new(),
        };
        broker.put_component(upload).await.expect("stored");
        let line = rate_limit(&broker, "math.add", "10/s").await.expect("set");
        assert_eq!(
            line,
            "math.add: rate limit 10/s, enforced across all workers"
        );
        let line = time_limit(&broker, "math@abab.add", "1.5")
            .await
            .expect("set");
        assert_eq!(line, "math.add: time limit 1.500s, applied by every worker");
        let policy = &broker.task_policies().await.expect("read")["math.add"];
        assert_eq!(policy.rate_limit, Some(rate(10, 1000)));
        assert_eq!(policy.time_limit_ms, Some(1500));

        let unknown = rate_limit(&broker, "math.nope", "1/s")
            .await
            .expect_err("no task");
        assert_eq!(unknown.code, exit::INVALID_ARGS);
        assert_eq!(
            unknown.message,
            "component `math` has no task `nope`; its tasks: add"
        );
        let missing = time_limit(&broker, "text.upper", "1")
            .await
            .expect_err("none");
        assert_eq!(missing.code, exit::INVALID_ARGS);
        let usage = rate_limit(&broker, "math.add", "fast")
            .await
            .expect_err("usage");
        assert_eq!(usage.code, exit::USAGE);

        rate_limit(&broker, "math.add", "none")
            .await
            .expect("removed");
        time_limit(&broker, "math.add", "0").await.expect("removed");
        assert!(broker.task_policies().await.expect("read").is_empty());
    }
}
