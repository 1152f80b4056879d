//! Test support: builds the guest examples once, runs the real binary with a private cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Path of a built guest example (`math`, `text` or `chaos`), building them on first use.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet"])
            .current_dir(root().join("guest-examples"))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the guest examples failed");
    });
    let path = root().join(format!(
        "guest-examples/target/wasm32-wasip2/release/{name}.wasm"
    ));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The bytes of a built guest example.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("guest example is readable")
}

/// The outcome of one `wtq` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The `--json` report printed on stdout.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {}", self.stdout))
    }

    /// Asserts the exit code and that stderr is exactly one line containing `fragment`.
    pub fn fails_with(&self, code: i32, fragment: &str) {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr, got: {}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        assert!(
            lines[0].contains(fragment),
            "`{}` lacks `{fragment}`",
            lines[0]
        );
    }
}

/// A private compile cache for one test.
pub struct Wtq {
    cache: tempfile::TempDir,
}

impl Wtq {
    pub fn new() -> Self {
        Wtq {
            cache: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    /// Runs `wtq run` with `args`.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["run".into()];
        all.extend(args.into_iter().map(|arg| arg.as_ref().to_os_string()));
        self.command(all)
    }

    /// Runs `wtq` with `args`.
    pub fn command<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command_with_env(args, &[])
    }

    /// Runs `wtq` with `args` and extra environment variables.
    pub fn command_with_env<I, S>(&self, args: I, env: &[(&str, &str)]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let started = Instant::now();
        let Output {
            status,
            stdout,
            stderr,
        } = Command::new(env!("CARGO_BIN_EXE_wtq"))
            .args(args)
            .env("WTQ_CACHE_DIR", self.cache.path())
            .env_remove("WTQ_LOG")
            .envs(env.iter().copied())
            .output()
            .expect("wtq runs");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}
