//! Per-call limits: what a single task call may consume before the host stops it.
//!
//! Every limit has a default here, can be overridden per call, and when hit fails the call with
//! its own [`FailureKind`](super::FailureKind). The wasm stack is engine-wide (wasmtime sets it
//! per `Engine`), so it lives in [`SandboxConfig`](super::SandboxConfig) instead.

use std::time::Duration;

/// Wall-clock time a call may take, including time blocked in host calls (sleeps, I/O).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(300);
/// Fuel budget of a call: roughly one to one and a half minutes of busy guest CPU (a tight loop
/// burns 1e9 fuel in 60–90 ms here). It stops a CPU-bound runaway before the five-minute time
/// limit does, deterministically, while staying far above any reasonable task.
pub const DEFAULT_FUEL: u64 = 1_000_000_000_000;
/// Linear memory plus tables a call may hold at once.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Size of the JSON output a call may return (results are stored in Redis).
pub const DEFAULT_OUTPUT: u64 = 1 << 20;
/// Size of the task log (host `log` lines plus stdout and stderr); the rest is dropped.
pub const DEFAULT_LOG: u64 = 64 << 10;
/// Size of the JSON arguments a call may receive.
pub const DEFAULT_ARGS: u64 = 1 << 20;
/// Longest text a guest may hand the host in one piece besides its output (a failure or retry
/// message, a progress note); the rest is dropped with a note.
pub const MAX_MESSAGE: usize = 16 << 10;
/// Bytes charged per table element against the memory limit (one pointer-sized slot).
pub const TABLE_ELEMENT_BYTES: u64 = 8;

/// The limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time limit (Celery's `time_limit`).
    pub time: Duration,
    /// Fuel budget; `None` runs the call on the unmetered engine, which is faster on
    /// call-heavy code but reports no fuel.
    pub fuel: Option<u64>,
    /// Linear memory plus tables, in bytes.
    pub memory: u64,
    /// Largest output, in bytes of JSON.
    pub output: u64,
    /// Largest task log, in bytes; overflow is truncated, never fatal.
    pub log: u64,
    /// Largest arguments, in bytes of JSON.
    pub args: u64,
}

impl Limits {
    /// The engine a call with these limits runs on: fuel-metered only with a fuel budget, so
    /// a call without one does not pay fuel's cost.
    pub fn metering(&self) -> super::Metering {
        if self.fuel.is_some() {
            super::Metering::Fuel
        } else {
            super::Metering::Epoch
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: DEFAULT_TIME_LIMIT,
            fuel: Some(DEFAULT_FUEL),
            memory: DEFAULT_MEMORY,
            output: DEFAULT_OUTPUT,
            log: DEFAULT_LOG,
            args: DEFAULT_ARGS,
        }
    }
}
