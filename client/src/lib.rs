//! wtq-client: enqueue wtq tasks and read their results from Rust, without compiling
//! wasmtime. Also the broker (Redis and in-memory) that the `wtq` workers share.
//!
//! # Layout
//! - [`args`]: positional and keyword arguments merged into the JSON a task receives.
//! - [`message`]: what a task message and a task record hold.
//! - [`registry`]: component versions and task addresses (`math.add`, `math@3f2a.add`).
//! - [`broker`]: the broker contract and its Redis and in-memory implementations.
//! - [`connect`]: one URL picks the broker.
//! - [`Client`], [`AsyncResult`]: the producer API.

pub mod args;
pub mod broker;
mod client;
pub mod connect;
pub mod message;
pub mod registry;

pub use client::{
    AsyncResult, Call, CallOptions, Client, ClientError, DEFAULT_QUEUE, MAX_ARGS_BYTES, ResultError,
};
pub use connect::{AnyBroker, connect};
