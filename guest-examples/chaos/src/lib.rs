//! `chaos`: the misbehaving guest of the host's tests, one task per sandbox behaviour (runaway
//! CPU, memory, stack, output and logs; traps; failures and retries; clocks; instance freshness;
//! the host imports). Each task does exactly one thing so a test names what it provokes.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use wtq_sdk::{TaskError, task};

/// Bytes in a mebibyte, the unit of `alloc` and `big_output`.
const MIB: usize = 1 << 20;

/// Loops forever, until the host's CPU limit (epoch or fuel) stops it.
#[task]
fn spin() -> u64 {
    let mut turns = 0u64;
    loop {
        // black_box makes every turn observable, so the loop is neither removed nor folded.
        turns = black_box(turns.wrapping_add(1));
    }
}

/// Allocates and fills `mib` MiB, one MiB at a time, and returns the number of bytes held.
#[task]
fn alloc(mib: u32) -> u64 {
    let held: Vec<Vec<u8>> = (0..mib).map(|_| vec![0xA5; MIB]).collect();
    // The bytes are written (not just reserved) and stay alive until here.
    black_box(&held);
    held.iter().map(|chunk| chunk.len() as u64).sum()
}

/// Recurses without end until the wasm stack overflows (a trap, not a memory fault).
#[task]
fn recurse() -> u64 {
    deeper(black_box(0))
}

// Only scalars, so every frame lives in wasm locals on the engine's stack, never in the shadow
// stack in linear memory (which black_box inside the recursion would use). The base case is
// unreachable in practice but keeps the function returning, so LLVM cannot mark it `noreturn`
// and loop it; the rotate after the call is not an accumulator that tail-recursion elimination
// can fold.
#[inline(never)]
fn deeper(depth: u64) -> u64 {
    if depth == u64::MAX {
        return depth;
    }
    deeper(depth + 1).rotate_left(1) ^ depth
}

/// Returns a string of `mib` MiB, to test the host's output limit.
#[task]
fn big_output(mib: u32) -> String {
    "x".repeat(mib as usize * MIB)
}

/// Writes `lines` lines, in turn through the host log, stdout and stderr; returns `lines`.
#[task]
fn log_flood(lines: u32) -> u32 {
    for line in 0..lines {
        match line % 3 {
            0 => wtq_sdk::log::info(format!("log line {line}")),
            1 => println!("stdout line {line}"),
            _ => eprintln!("stderr line {line}"),
        }
    }
    lines
}

/// Executes the wasm `unreachable` instruction.
#[task]
fn trap() -> u64 {
    // On wasm32-wasip2, abort is the `unreachable` instruction; this also compiles natively.
    std::process::abort()
}

/// Fails with `msg`.
#[task]
fn fail(msg: String) -> Result<(), TaskError> {
    Err(TaskError::fail(msg))
}

/// Asks to be retried, after `countdown_ms` if given, else after the host's backoff.
#[task]
fn retry(countdown_ms: Option<u64>) -> Result<(), TaskError> {
    Err(match countdown_ms {
        Some(ms) => TaskError::retry_in("chaos asked for a retry", Duration::from_millis(ms)),
        None => TaskError::retry("chaos asked for a retry"),
    })
}

/// Sleeps `ms` milliseconds in WASI clocks and returns `ms`.
#[task]
fn sleep(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Returns its argument unchanged.
#[task]
fn echo(value: Value) -> Value {
    value
}

/// Counts calls in this instance: 1 every time if each call gets a fresh instance.
#[task]
fn counter() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    CALLS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Reports progress `1..=steps` of `steps`, each after `step_ms` milliseconds (default 0),
/// and returns `steps`.
#[task]
fn progress(steps: u32, step_ms: Option<u64>) -> u32 {
    for step in 1..=steps {
        std::thread::sleep(Duration::from_millis(step_ms.unwrap_or(0)));
        wtq_sdk::progress(
            step.into(),
            steps.into(),
            &format!("step {step} of {steps}"),
        );
    }
    steps
}

/// Returns the call's context from the host: task id, name, attempt, tenant and deadline.
#[task]
fn context() -> wtq_sdk::Context {
    wtq_sdk::context()
}

/// Reports what the sandbox lets the task reach: environment variables, arguments, the root
/// directory, and an outbound TCP connection to `port` on loopback (a listener the test opens,
/// so a refusal proves the sandbox, not an empty port).
#[task]
fn probe(port: u16) -> Value {
    let root_readable = std::fs::read_dir("/").is_ok();
    let tcp_connect = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    serde_json::json!({
        "env_vars": std::env::vars().count(),
        "args": std::env::args().count(),
        "root_readable": root_readable,
        "tcp_connect": tcp_connect,
    })
}

wtq_sdk::export!(
    spin, alloc, recurse, big_output, log_flood, trap, fail, retry, sleep, echo, counter, progress,
    context, probe
);
