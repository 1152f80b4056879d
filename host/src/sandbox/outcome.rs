//! What a call produced: a guest's failure is data here, never an `Err`.

use std::time::Duration;

/// How a call ended, from the task's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The task returned this JSON output.
    Success { output: String },
    /// The task did not produce an output; `kind` says why.
    Failure { kind: FailureKind, message: String },
    /// The task asked to be run again later.
    Retry {
        message: String,
        countdown: Option<Duration>,
    },
}

/// Why a call failed. Each limit has its own kind so callers can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The task returned an error.
    TaskFailed,
    /// The arguments do not fit the task's parameters (type, arity, JSON shape).
    InvalidArgs,
    /// The component offers no task of that name.
    UnknownTask,
    /// The guest trapped (`unreachable`, a panic, an out-of-bounds access, ...).
    Trap,
    /// The wall-clock time limit passed.
    TimeLimitExceeded,
    /// The fuel budget ran out.
    OutOfFuel,
    /// Linear memory plus tables grew past the memory limit.
    MemoryLimitExceeded,
    /// The guest overflowed the wasm stack.
    StackOverflow,
    /// The output is larger than the output limit.
    OutputTooLarge,
    /// The arguments are larger than the argument limit.
    ArgsTooLarge,
    /// The guest returned an output that is not JSON.
    InvalidOutput,
    /// The call was stopped on request (revoke with terminate, worker shutdown).
    Terminated,
}

impl FailureKind {
    /// Every kind, for documentation and exhaustive tests.
    pub const ALL: [FailureKind; 12] = [
        FailureKind::TaskFailed,
        FailureKind::InvalidArgs,
        FailureKind::UnknownTask,
        FailureKind::Trap,
        FailureKind::TimeLimitExceeded,
        FailureKind::OutOfFuel,
        FailureKind::MemoryLimitExceeded,
        FailureKind::StackOverflow,
        FailureKind::OutputTooLarge,
        FailureKind::ArgsTooLarge,
        FailureKind::InvalidOutput,
        FailureKind::Terminated,
    ];

    /// The snake_case name used in JSON, logs and error lines.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::TaskFailed => "task_failed",
            FailureKind::InvalidArgs => "invalid_args",
            FailureKind::UnknownTask => "unknown_task",
            FailureKind::Trap => "trap",
            FailureKind::TimeLimitExceeded => "time_limit_exceeded",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::MemoryLimitExceeded => "memory_limit_exceeded",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::ArgsTooLarge => "args_too_large",
            FailureKind::InvalidOutput => "invalid_output",
            FailureKind::Terminated => "terminated",
        }
    }

    /// Whether the instance that produced this failure may not be used again.
    pub fn poisons_instance(self) -> bool {
        !matches!(
            self,
            FailureKind::TaskFailed
                | FailureKind::InvalidArgs
                | FailureKind::UnknownTask
                | FailureKind::ArgsTooLarge
                | FailureKind::OutputTooLarge
                | FailureKind::InvalidOutput
        )
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use wtq_client::message::Progress;

/// Everything known about one finished call.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub outcome: Outcome,
    /// Wall-clock time of instantiate (when fresh) plus call.
    pub duration: Duration,
    /// CPU time of the guest call (instantiate and call, host calls included) on the threads
    /// that ran it; `None` where the platform has no per-thread CPU clock.
    pub cpu: Option<Duration>,
    /// Fuel consumed, when the call ran metered.
    pub fuel: Option<u64>,
    /// Highest linear memory plus tables the instance held during the call, in bytes.
    pub peak_memory: u64,
    /// The task log: host `log` lines, stdout and stderr, truncated at the log limit.
    pub log: String,
    /// The last progress the task reported.
    pub progress: Option<Progress>,
    /// Whether the call ran on an instance that had served earlier calls.
    pub reused_instance: bool,
}
