//! The developer commands, in one place and in plain Rust so they work on a machine with only
//! rustup and cargo:
//!
//! - `cargo xtask demo`   build the examples and run a few of their tasks with `wtq run`
//! - `cargo xtask test`   everything CI checks: guests, the whole test suite, the demo, fmt
//!   and clippy
//! - `cargo xtask lint`   `cargo fmt --check` and `cargo clippy -D warnings`
//! - `cargo xtask guests` build the guest examples (`wasm32-wasip2` components)
//! - `cargo xtask bench`  `wtq bench sandbox` on a release build

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "demo" => demo(),
        "test" => test(),
        "lint" => lint(),
        "guests" => guests(),
        "bench" => bench(),
        _ => Err(format!(
            "unknown command `{task}`; use one of: demo, test, lint, guests, bench"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the repository")
        .to_path_buf()
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}").replace('"', "");
    eprintln!("$ {shown}");
    let status = command
        .status()
        .map_err(|error| format!("{shown}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Installs the guest target if rustup lacks it, then builds the examples.
fn guests() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.trim() == GUEST_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        run(Command::new("rustup").args(["target", "add", GUEST_TARGET]))?;
    }
    run(cargo()
        .args(["build", "--release"])
        .current_dir(root().join("guest-examples")))
}

/// The queue tests start private `redis-server` processes: install it when it is missing.
fn redis() -> Result<(), String> {
    let present = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        return Ok(());
    }
    eprintln!("redis-server not found: installing it with apt-get");
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "redis-server"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .map_err(|error| {
        format!("{error}; install redis-server yourself (apt-get install -y redis-server)")
    })
}

fn test() -> Result<(), String> {
    guests()?;
    redis()?;
    run(cargo().args(["test", "--workspace", "--all-targets"]))?;
    // Tests that measure latency (marked `#[ignore = "timing: …"]`) run afterwards, one at a
    // time, so the rest of the suite is not competing for the CPUs they measure. (`--workspace`
    // keeps the features, hence the build, of the run above.)
    run(cargo().args([
        "test",
        "--workspace",
        "--test",
        "e2e",
        "--",
        "--ignored",
        "--test-threads=1",
    ]))?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    // The guests' pure logic (markdown, slugify, ...) is unit-tested natively.
    let host = host_triple()?;
    run(cargo()
        .args(["test", "--target", &host])
        .current_dir(root().join("guest-examples")))?;
    // The README's other command, so CI keeps it true.
    demo()?;
    lint()
}

/// The triple rustc builds for by default, e.g. `x86_64-unknown-linux-gnu`.
fn host_triple() -> Result<String, String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|error| format!("rustc -vV: {error}"))?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or_else(|| "rustc -vV printed no host triple".to_string())
}

fn lint() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["fmt", "--all", "--check"])
        .current_dir(root().join("guest-examples")))?;
    run(cargo()
        .args(["clippy", "--release", "--", "-D", "warnings"])
        .current_dir(root().join("guest-examples")))
}

fn demo() -> Result<(), String> {
    guests()?;
    // The dev profile optimises dependencies (wasmtime, Cranelift) and shares its build with
    // `cargo xtask test`, so the demo does not pay for a second, release build of wasmtime.
    run(cargo().args(["build", "--package", "wtq"]))?;
    let wtq = root().join("target/debug/wtq");
    let example = |name: &str| format!("guest-examples/target/{GUEST_TARGET}/release/{name}.wasm");
    let steps: [(&str, Vec<String>, bool); 6] = [
        (
            "the math component's tasks",
            vec![example("math"), "--list".into()],
            true,
        ),
        (
            "add two numbers",
            vec![example("math"), "add".into(), "[2,3]".into()],
            true,
        ),
        (
            "keyword arguments",
            vec![
                example("math"),
                "add".into(),
                "[2]".into(),
                "--kwargs".into(),
                r#"{"y":40}"#.into(),
            ],
            true,
        ),
        (
            "count words",
            vec![
                example("text"),
                "word_count".into(),
                r#"["the quick brown fox\njumps"]"#.into(),
            ],
            true,
        ),
        (
            "a report with fuel and memory",
            vec![
                example("math"),
                "fib".into(),
                "[25]".into(),
                "--json".into(),
            ],
            true,
        ),
        (
            "a runaway task, stopped at its 1 s time limit",
            vec![
                example("chaos"),
                "spin".into(),
                "--time-limit".into(),
                "1s".into(),
            ],
            false,
        ),
    ];
    for (title, args, should_succeed) in steps {
        println!("\n# {title}\n$ wtq run {}", args.join(" "));
        let status = Command::new(&wtq)
            .arg("run")
            .args(&args)
            .current_dir(root())
            .status()
            .map_err(|error| format!("running {}: {error}", wtq.display()))?;
        if status.success() != should_succeed {
            return Err(format!("`wtq run {}` ended with {status}", args.join(" ")));
        }
    }
    queue_demo(&wtq, &example("math"))?;
    println!("\nAll demo steps behaved as expected.");
    Ok(())
}

/// The queue in one process: `wtq up` (service + worker on the embedded broker), then
/// `wtq deploy` and `wtq call --wait` against it over HTTP, as the README's tour does.
fn queue_demo(wtq: &Path, math: &str) -> Result<(), String> {
    use std::io::BufRead;
    println!("\n# the queue in one process\n$ wtq up &");
    let started = std::time::Instant::now();
    let mut up = Command::new(wtq)
        .args(["up", "--listen", "127.0.0.1:0"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| format!("starting `wtq up`: {error}"))?;
    let mut lines =
        std::io::BufReader::new(up.stdout.take().ok_or("no stdout from wtq up")?).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                println!("{line}");
                if let Some(url) = line.strip_prefix("listening on ") {
                    break Ok(url.trim().to_string());
                }
            }
            _ => break Err("`wtq up` exited before listening".to_string()),
        }
    };
    let outcome = url.and_then(|url| {
        println!("(ready after {} ms)", started.elapsed().as_millis());
        let steps: [Vec<&str>; 3] = [
            vec!["deploy", math],
            vec!["call", "math.add", "[2,3]", "--wait", "--timeout", "30s"],
            vec!["components"],
        ];
        for args in steps {
            println!("\n$ wtq {} --url {url}", args.join(" "));
            let status = Command::new(wtq)
                .args(&args)
                .args(["--url", &url])
                .current_dir(root())
                .status()
                .map_err(|error| format!("running wtq: {error}"))?;
            if !status.success() {
                return Err(format!("`wtq {}` ended with {status}", args.join(" ")));
            }
        }
        Ok(())
    });
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let _ = up.wait();
    outcome
}

fn bench() -> Result<(), String> {
    guests()?;
    run(cargo().args([
        "run",
        "--release",
        "--package",
        "wtq",
        "--",
        "bench",
        "sandbox",
    ]))
}
