//! End-to-end tests: real components built from source, the real `wtq` binary, the real
//! sandbox and a private `redis-server` per test. `support` builds the guest examples once per test run.

mod beat;
mod cluster;
mod control;
mod embedded;
mod events;
mod metrics;
mod queue;
mod rate_limit;
#[path = "../../client/tests/support/redis_server.rs"]
mod redis_server;
mod run_cli;
mod sandbox;
mod sandbox_batch;
mod service;
mod support;
mod tenants;
mod workflows;
