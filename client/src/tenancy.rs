//! Tenants of the hosted service: who they are, their quotas, their API tokens (stored only as
//! hashes), their usage counters and the events (task and worker) their log keeps. Plain data; the broker
//! stores it ([`crate::broker::Tenancy`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::message::{Attempt, Progress, State, TaskFailure};

/// Every key of a tenant lives in this namespace: `wtq:{t-<name>}:…`.
pub fn namespace_of(tenant: &str) -> String {
    format!("t-{tenant}")
}

/// Longest tenant name: the name is part of every one of its keys.
pub const MAX_TENANT_NAME: usize = 40;

/// Whether `name` can name a tenant: 1 to 40 lowercase ASCII letters, digits or `-`, starting
/// with a letter or digit.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TENANT_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A tenant of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub created_ms: u64,
    #[serde(default)]
    pub quotas: Quotas,
}

/// A tenant's quotas; `None` means unlimited (the workers' own limits still apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Most of its tasks running at once, across all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Most tasks enqueued per period (`100/s`), across all service processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Cap on a task's time limit (ms); also its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time_ms: Option<u64>,
    /// Cap on a task's fuel; also its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fuel: Option<u64>,
    /// Cap on a task's memory (bytes); also its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// Most bytes of components stored (uncompressed sizes of every version kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<u64>,
    /// Largest component upload (bytes, uncompressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload: Option<u64>,
}

/// At most `count` per `per_ms` milliseconds, as `100/s`, `6000/m`, `10/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub count: u32,
    pub per_ms: u64,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (N ≥ 1).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("rate `{text}`: use N/s, N/m or N/h with N at least 1, e.g. 100/s");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per_ms = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, per_ms })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per_ms {
            1_000 => "s",
            60_000 => "m",
            3_600_000 => "h",
            other => return write!(f, "{}/{}ms", self.count, other),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Whether a rate-limited action may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Not now: enough capacity frees up after this long.
    Limited {
        retry_after_ms: u64,
    },
}

/// An API token as stored: never the token itself, which only its holder has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public handle, for listing and revoking (`tok_…`).
    pub id: String,
    /// The tenant it acts for; `None` for an admin token (manages tenants and tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub created_ms: u64,
}

/// A tenant's metered usage, the basis for billing. Counters only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tasks that reached a final state.
    pub tasks: u64,
    /// Attempts that ran (retries count each).
    pub attempts: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// CPU time of guest calls, microseconds.
    pub cpu_us: u64,
    /// Peak memory × wall time of guest calls, KiB·ms.
    pub memory_kib_ms: u64,
}

/// Most events a namespace's log keeps by default (Redis: `XADD … MAXLEN ~`, so a little
/// more; memory: exactly): a day of a busy tenant's state changes is more than anyone tails,
/// and 100,000 small entries are a few tens of MB at most.
pub const EVENT_LOG_CAP: u64 = 100_000;

/// How long `events()` keeps the log on after its receiver was last alive, and how long a
/// worker's `-E` lasts after its last heartbeat: several refreshes, so a slow one does not
/// stop the log, yet a vanished watcher's namespace stops paying for it soon.
pub const EVENTS_ON_TTL: Duration = Duration::from_secs(30);

/// How often a live `events()` receiver (and a `-E` worker) extends [`EVENTS_ON_TTL`].
pub const EVENTS_REFRESH: Duration = Duration::from_secs(10);

/// The cursor before the first event a log holds: reading after it replays the whole log.
pub const EVENTS_FROM_START: &str = "0";

/// Celery's name of the event a task's new state is: `task-sent` (PENDING: enqueued, or queued
/// again by a release, the reaper or a dead-letter retry), `task-received`, `task-started`,
/// `task-progress`, `task-succeeded`, `task-failed`, `task-retried`, `task-revoked`.
/// `prelude.lua` spells the same table.
pub fn task_event_type(state: State) -> &'static str {
    match state {
        State::Pending => "task-sent",
        State::Received => "task-received",
        State::Started => "task-started",
        State::Progress => "task-progress",
        State::Success => "task-succeeded",
        State::Failure => "task-failed",
        State::Retry => "task-retried",
        State::Revoked => "task-revoked",
    }
}

/// A worker coming up.
pub const WORKER_ONLINE: &str = "worker-online";
/// A live worker, every [`WORKER_HEARTBEAT_MS`].
pub const WORKER_HEARTBEAT: &str = "worker-heartbeat";
/// A worker that stopped (warmly: a killed one just stops its heartbeats).
pub const WORKER_OFFLINE: &str = "worker-offline";
/// How often a worker writes `worker-heartbeat`, in ms (Celery: 2 s).
pub const WORKER_HEARTBEAT_MS: u64 = 2_000;

/// One entry of a namespace's event log: a task's state change (with the attempt's figures when
/// one ended) or a worker's online/heartbeat/offline. The fields `id`, `state` and `at_ms` of a
/// task event are those the service's SSE stream always sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `task-sent` … `task-revoked` (see [`task_event_type`]), `worker-online`, ….
    #[serde(rename = "type")]
    pub kind: String,
    /// Its place in the log: reading after it returns the events that followed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    /// The task (task events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    pub at_ms: u64,
    /// `component.task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The worker that holds or held the task, or that this worker event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The attempt that ended (task-succeeded, task-failed, task-retried), 1 for the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Wall time of that attempt's call, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Peak linear memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory: Option<u64>,
    /// The component version that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why it failed, will be retried, or was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

impl Event {
    /// A task's change to `state`, with nothing else known yet.
    pub fn task(id: &str, state: State, at_ms: u64) -> Event {
        Event {
            kind: task_event_type(state).to_string(),
            cursor: String::new(),
            id: Some(id.to_string()),
            state: Some(state),
            at_ms,
            task: None,
            worker: None,
            attempt: None,
            runtime_ms: None,
            fuel: None,
            peak_memory: None,
            digest: None,
            error: None,
            progress: None,
        }
    }

    /// A worker event (`worker-online`, `worker-heartbeat`, `worker-offline`).
    pub fn worker(kind: &str, worker: &str, at_ms: u64) -> Event {
        Event {
            kind: kind.to_string(),
            id: None,
            state: None,
            worker: Some(worker.to_string()),
            ..Event::task("", State::Pending, at_ms)
        }
    }

    /// Adds what an ended attempt reported.
    pub fn with_attempt(mut self, attempt: &Attempt) -> Event {
        self.attempt = Some(attempt.attempt);
        self.worker = Some(attempt.worker.clone());
        self.runtime_ms = attempt.duration_ms;
        self.fuel = attempt.fuel;
        self.peak_memory = attempt.peak_memory;
        self.digest.clone_from(&attempt.digest);
        if attempt.error.is_some() {
            self.error.clone_from(&attempt.error);
        }
        self
    }

    /// Whether this is about a task (not a worker).
    pub fn is_task(&self) -> bool {
        self.id.is_some()
    }

    /// One readable line, without the time: `task-succeeded math.add 0193… worker=w1
    /// attempt=1 runtime=1.2ms fuel=…`.
    pub fn line(&self) -> String {
        let mut line = self.kind.clone();
        let mut push = |part: String| {
            line.push(' ');
            line.push_str(&part);
        };
        if let Some(task) = &self.task {
            push(task.clone());
        }
        if let Some(id) = &self.id {
            push(id.clone());
        }
        if let Some(worker) = &self.worker {
            push(format!("worker={worker}"));
        }
        if let Some(attempt) = self.attempt {
            push(format!("attempt={attempt}"));
        }
        if let Some(ms) = self.runtime_ms {
            push(format!("runtime={ms:.1}ms"));
        }
        if let Some(fuel) = self.fuel {
            push(format!("fuel={fuel}"));
        }
        if let Some(memory) = self.peak_memory {
            push(format!("memory={memory}"));
        }
        if let Some(progress) = &self.progress {
            push(format!("progress={}/{}", progress.done, progress.total));
        }
        if let Some(error) = &self.error {
            push(format!("{}: {}", error.kind, error.message));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            Rate::parse("100/s"),
            Ok(Rate {
                count: 100,
                per_ms: 1000
            })
        );
        assert_eq!(
            Rate::parse("6000/m").map(|r| r.to_string()),
            Ok("6000/m".into())
        );
        for bad in ["", "0/s", "10", "10/d", "x/s", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_names_are_key_safe() {
        for good in ["acme", "a", "team-7"] {
            assert!(valid_tenant_name(good), "{good}");
        }
        for bad in ["", "-x", "Acme", "a{b}", "a:b", &"x".repeat(41)] {
            assert!(!valid_tenant_name(bad), "{bad}");
        }
    }
}
