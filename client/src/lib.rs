//! wtq-client: enqueue wtq tasks and read their results from Rust, without compiling
//! wasmtime. Also the broker (Redis and in-memory) that the `wtq` workers share.
//!
//! # Layout
//! - [`api`]: the HTTP API's bodies, shared by the service and the HTTP client.
//! - [`args`]: positional and keyword arguments merged into the JSON a task receives.
//! - [`message`]: what a task message and a task record hold.
//! - [`registry`]: component versions and task addresses (`math.add`, `math@3f2a.add`).
//! - [`broker`]: the broker contract and its Redis and in-memory implementations.
//! - [`tenancy`]: tenants, quotas, tokens and usage of the hosted service.
//! - [`connect`]: one URL picks the broker, or the service ([`Endpoint`]).
//! - [`producer`]: what a producer needs, from a broker or the service ([`Producer`]).
//! - [`http`]: the service's HTTP API from the client side ([`HttpApi`]).
//! - [`workflow`]: chains, groups, chords, chunks, map: documents, plans and results.
//! - [`Client`], [`AsyncResult`]: the producer API.

pub mod api;
pub mod args;
pub mod broker;
mod client;
pub mod connect;
pub mod http;
pub mod message;
pub mod producer;
pub mod registry;
pub mod schedule;
pub mod tenancy;
pub mod workflow;

pub use client::{
    AsyncResult, Call, CallOptions, Client, ClientError, DEFAULT_QUEUE, MAX_ARGS_BYTES, ResultError,
};
pub use connect::{AnyBroker, Endpoint, connect};
pub use http::HttpApi;
pub use producer::Producer;
