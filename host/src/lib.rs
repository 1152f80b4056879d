//! wtq: a distributed task queue whose tasks are WebAssembly components.
//!
//! # Layout
//! - [`sandbox`]: runs one task call of a component under limits (the only wasmtime user).
//! - [`registry`]: deploying components (validated in the sandbox, stored by the broker).
//! - [`worker`]: leases messages from the broker, runs them in the sandbox, settles them.
//! - [`units`]: human spellings of sizes and durations.
//! - [`beat`]: periodic tasks (`wtq beat`): schedules, the beat lease, firing.
//! - [`metrics`]: Prometheus text exposition (the worker's and the service's `/metrics`).
//! - [`cli`]: the `wtq` command line, one function per command.

pub mod beat;
pub mod cli;
pub mod metrics;
pub mod registry;
pub mod sandbox;
pub mod service;
pub mod units;
pub mod worker;
