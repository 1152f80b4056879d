//! `TaskError`: the ways a task call ends without an output, mirroring the WIT `task-error`.

use std::fmt;
use std::time::Duration;

/// Why a task produced no output: it failed, asks to be retried, or got arguments it cannot use.
///
/// `String` and `&str` convert into [`TaskError::Fail`], so `?` works on `Result<_, String>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// The task failed; retrying will not help unless the caller asked for retries.
    Fail(String),
    /// The task asks to be run again later.
    Retry {
        /// Why the task wants another attempt.
        message: String,
        /// Delay before the next attempt; `None` lets the host's backoff policy decide.
        countdown: Option<Duration>,
    },
    /// The arguments do not fit the task's parameters.
    InvalidArgs(String),
}

impl TaskError {
    /// The task failed.
    pub fn fail(message: impl Into<String>) -> Self {
        Self::Fail(message.into())
    }

    /// Asks to be run again after the host's backoff delay.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            countdown: None,
        }
    }

    /// Asks to be run again after `countdown`.
    pub fn retry_in(message: impl Into<String>, countdown: Duration) -> Self {
        Self::Retry {
            message: message.into(),
            countdown: Some(countdown),
        }
    }

    /// The arguments do not fit the task's parameters.
    pub fn invalid_args(message: impl Into<String>) -> Self {
        Self::InvalidArgs(message.into())
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fail(message) => f.write_str(message),
            Self::Retry {
                message,
                countdown: None,
            } => write!(f, "retry requested: {message}"),
            Self::Retry {
                message,
                countdown: Some(countdown),
            } => {
                write!(
                    f,
                    "retry requested in {} ms: {message}",
                    countdown.as_millis()
                )
            }
            Self::InvalidArgs(message) => write!(f, "invalid arguments: {message}"),
        }
    }
}

impl std::error::Error for TaskError {}

impl From<String> for TaskError {
    fn from(message: String) -> Self {
        Self::Fail(message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        Self::Fail(message.to_owned())
    }
}
