//! wtq: a distributed task queue whose tasks are WebAssembly components.
//!
//! # Layout
//! - [`sandbox`]: runs one task call of a component under limits (the only wasmtime user).
//! - [`args`]: turns positional and keyword arguments into the JSON a task receives.
//! - [`units`]: human spellings of sizes and durations.
//! - [`cli`]: the `wtq` command line, one function per command.

pub mod args;
pub mod cli;
pub mod sandbox;
pub mod units;
