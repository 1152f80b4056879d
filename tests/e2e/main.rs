//! End-to-end tests: real components built from source, the real `wtq` binary and the real
//! sandbox. `support` builds the guest examples once per test run.

mod run_cli;
mod sandbox;
mod support;
