//! Safe wrappers over the `host` imports: logging, progress and the call's context.
//!
//! These only work inside a component run by the wtq host; called in a native build (a unit
//! test, say) they panic, because there is no host to answer.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::__private::bindings::wtq::task::host;

/// Who and when the current call is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Context {
    /// The task id (a UUID) the call belongs to.
    pub task_id: String,
    /// The task name as listed by the component.
    pub task_name: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// The tenant that owns the task; empty outside the hosted service.
    pub tenant: String,
    /// Wall-clock deadline of this call in milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
}

impl Context {
    /// The deadline of this call as a [`SystemTime`].
    pub fn deadline(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.deadline_unix_ms)
    }
}

/// The context of the current call: task id, name, attempt, tenant, deadline.
pub fn context() -> Context {
    let context = host::context();
    Context {
        task_id: context.task_id,
        task_name: context.task_name,
        attempt: context.attempt,
        tenant: context.tenant,
        deadline_unix_ms: context.deadline_unix_ms,
    }
}

/// Reports that `done` of `total` steps are finished, with a short `note`.
pub fn progress(done: u64, total: u64, note: &str) {
    host::progress(done, total, note);
}

/// Lines in the task's log, kept by the host (which caps their number and size).
pub mod log {
    use super::host;

    /// Severity of a log line.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Level {
        /// Very detailed tracing.
        Trace,
        /// Debugging detail.
        Debug,
        /// Normal progress.
        Info,
        /// Something unexpected that the task survived.
        Warn,
        /// Something failed.
        Error,
    }

    /// Appends `message` to the task's log at `level`.
    pub fn log(level: Level, message: impl AsRef<str>) {
        let level = match level {
            Level::Trace => host::LogLevel::Trace,
            Level::Debug => host::LogLevel::Debug,
            Level::Info => host::LogLevel::Info,
            Level::Warn => host::LogLevel::Warn,
            Level::Error => host::LogLevel::Error,
        };
        host::log(level, message.as_ref());
    }

    /// Appends `message` to the task's log at trace level.
    pub fn trace(message: impl AsRef<str>) {
        log(Level::Trace, message);
    }

    /// Appends `message` to the task's log at debug level.
    pub fn debug(message: impl AsRef<str>) {
        log(Level::Debug, message);
    }

    /// Appends `message` to the task's log at info level.
    pub fn info(message: impl AsRef<str>) {
        log(Level::Info, message);
    }

    /// Appends `message` to the task's log at warn level.
    pub fn warn(message: impl AsRef<str>) {
        log(Level::Warn, message);
    }

    /// Appends `message` to the task's log at error level.
    pub fn error(message: impl AsRef<str>) {
        log(Level::Error, message);
    }
}
