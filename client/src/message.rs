//! The message model: what a producer enqueues and what a task's record holds. Plain data,
//! serialised as JSON, shared by the client, the brokers and the worker.

use serde::{Deserialize, Serialize};

/// Highest priority; 0 is the lowest and the default. Higher runs first, as in AMQP and
/// Celery on RabbitMQ.
pub const MAX_PRIORITY: u8 = 9;
/// Deliveries of one attempt after which a message is dead-lettered (a worker died or lost
/// its lease this many times while running it).
pub const DEFAULT_MAX_DELIVERIES: u32 = 3;
/// How long a finished task's record is kept, as Celery's `result_expires`.
pub const DEFAULT_RESULT_EXPIRES_MS: u64 = 24 * 3600 * 1000;
/// Longest delay, expiry, TTL or wait accepted anywhere: ten years. Longer values are
/// refused (or, for waits, cut) so that time arithmetic cannot overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
/// Retries a task may request of itself when the caller set no `max_retries`, as Celery's.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// One task to run: everything a worker needs, fixed at enqueue time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// A UUID unless the caller chose one (`--task-id`).
    pub id: String,
    /// Registry name of the component, e.g. `math`.
    pub component: String,
    /// The full digest to run when the caller pinned one (`math@3f2a.add`); otherwise the
    /// component's current digest when the task starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Task name within the component, e.g. `add`.
    pub task: String,
    /// JSON arguments exactly as the task receives them (array or object).
    pub args: String,
    pub queue: String,
    /// 0 (default, lowest) to [`MAX_PRIORITY`].
    #[serde(default)]
    pub priority: u8,
    /// Not before this time (Unix ms): `--countdown` / `--eta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    /// Not after this time (Unix ms): unstarted, it becomes REVOKED with reason `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Retries allowed. `None`: a task may ask for [`DEFAULT_MAX_RETRIES`] retries itself, and
    /// failures are final; `Some(n)`: up to n retries, also after retryable failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Delay policy between retries when the task gives no countdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<Backoff>,
    /// Per-task limit overrides; the worker's defaults apply to the rest.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
    /// Deliveries of one attempt before the message is dead-lettered.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    /// How long the record is kept after the task finishes.
    #[serde(default = "default_result_expires")]
    pub result_expires_ms: u64,
    /// When it was enqueued (Unix ms).
    pub created_ms: u64,
    /// A map/starmap call: `args` is a JSON array of argument lists (each an array or an
    /// object), the task is called once per list inside one instance, and the output is the
    /// JSON array of the outputs, in order.
    #[serde(default, skip_serializing_if = "is_false")]
    pub batch: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

fn default_max_deliveries() -> u32 {
    DEFAULT_MAX_DELIVERIES
}

fn default_result_expires() -> u64 {
    DEFAULT_RESULT_EXPIRES_MS
}

/// Exponential backoff with full jitter: attempt n waits a random time up to
/// `min(base * 2^(n-1), max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
    #[serde(default = "yes")]
    pub jitter: bool,
}

fn yes() -> bool {
    true
}

impl Backoff {
    /// Celery's `retry_backoff=True`: 1 s doubling, at most 10 minutes, with jitter.
    pub const DEFAULT: Backoff = Backoff {
        base_ms: 1000,
        max_ms: 600_000,
        jitter: true,
    };

    /// The delay before retry number `retry` (1 for the first retry); `random` in [0, 1).
    pub fn delay_ms(&self, retry: u32, random: f64) -> u64 {
        let exponent = retry.saturating_sub(1).min(63);
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        if self.jitter {
            (ceiling as f64 * random.clamp(0.0, 1.0)) as u64
        } else {
            ceiling
        }
    }
}

/// Per-task limits chosen by the producer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }
}

/// A task's state, as in Celery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Waiting in a queue (or for its ETA).
    Pending,
    /// Delivered to a worker, not yet running.
    Received,
    /// Running.
    Started,
    /// Running and has reported progress.
    Progress,
    Success,
    Failure,
    /// Waiting to be run again.
    Retry,
    Revoked,
}

impl State {
    /// Whether the task will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Progress => "PROGRESS",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Retry => "RETRY",
            State::Revoked => "REVOKED",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        [
            State::Pending,
            State::Received,
            State::Started,
            State::Progress,
            State::Success,
            State::Failure,
            State::Retry,
            State::Revoked,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a task failed or was revoked: a kind (the sandbox's failure kinds, plus the queue's own:
/// `dead_lettered`, `malformed_message`, `unknown_component`, `expired`, `revoked`,
/// `terminated`) and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub kind: String,
    pub message: String,
}

/// Progress a running task reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    #[serde(default)]
    pub note: String,
}

/// What one finished attempt produced, written by the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u32,
    pub worker: String,
    /// The component digest that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub received_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    pub finished_ms: u64,
    /// SUCCESS, FAILURE, RETRY or REVOKED.
    pub state: State,
    /// The JSON output, for SUCCESS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// CPU time the guest call used (ms), for metering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory: Option<u64>,
    /// The tail of the task log.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
}

/// Everything known about one task: its message, state and per-attempt history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub state: State,
    pub message: TaskMessage,
    /// Deliveries of the current attempt so far.
    pub deliveries: u32,
    /// The worker that holds or last held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Why it failed or was revoked, when it did (also set while RETRY: the last error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    /// Finished attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// When it reached its final state (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl TaskRecord {
    /// The JSON output of the successful attempt.
    pub fn output(&self) -> Option<&str> {
        match self.state {
            State::Success => self
                .attempts
                .last()
                .and_then(|attempt| attempt.output.as_deref()),
            _ => None,
        }
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let backoff = Backoff {
            base_ms: 100,
            max_ms: 1000,
            jitter: false,
        };
        let delays: Vec<u64> = (1..=6).map(|retry| backoff.delay_ms(retry, 0.5)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        let jittered = Backoff {
            jitter: true,
            ..backoff
        };
        assert_eq!(jittered.delay_ms(3, 0.5), 200);
        assert_eq!(jittered.delay_ms(200, 0.999_999), 999);
    }

    #[test]
    fn states_round_trip() {
        for text in [
            "PENDING", "RECEIVED", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "RETRY", "REVOKED",
        ] {
            assert_eq!(State::parse(text).map(State::as_str), Some(text));
        }
        assert_eq!(State::parse("DONE"), None);
    }
}
