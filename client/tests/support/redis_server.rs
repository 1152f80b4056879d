//! A private `redis-server` for one test: a free loopback port, a fresh temporary directory,
//! killed when dropped. It never touches the Redis on 127.0.0.1:6379.
//!
//! Self-contained on purpose (std and `tempfile` only, no redis crate, nothing from the
//! repository), so another test binary can include this same file:
//!
//! ```ignore
//! #[path = "../../client/tests/support/redis_server.rs"]
//! mod redis_server;
//! let redis = redis_server::RedisServer::start();
//! ```
//!
//! It speaks just enough RESP over a raw `TcpStream` ([`RedisServer::command`]) to wait for
//! `PING` and to let a test inspect the server (`SCAN`, `CONFIG GET`) without a client library.

#![allow(dead_code)] // each including binary uses a different part of it

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer `PING` (it usually takes ~10 ms; CI machines
/// under load are much slower than that, never this slow).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried before giving up when another process grabs the free port we picked between
/// our probe and redis-server's bind.
const PORT_ATTEMPTS: usize = 5;
/// Read/write timeout of one harness command, so a wedged server fails the test instead of
/// hanging it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of a running server, beyond the harness's own (`--bind`, `--port`, `--dir`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Extra `redis-server` arguments, e.g. `["--maxmemory-policy", "allkeys-lru"]`; they come
    /// after the defaults, so they override them.
    pub args: Vec<String>,
}

impl Options {
    /// No persistence, `noeviction`: what every test wants unless it says otherwise.
    pub fn ephemeral() -> Self {
        Options { args: Vec::new() }
    }

    /// The append-only file on, fsynced before every reply: an acknowledged write survives a
    /// SIGKILL and a [`RedisServer::restart`].
    pub fn durable() -> Self {
        Options::ephemeral().with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    pub fn with(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }
}

/// A `redis-server` child process on a private port and directory.
pub struct RedisServer {
    port: u16,
    options: Options,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts an ephemeral server ([`Options::ephemeral`]) and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(Options::ephemeral())
    }

    /// Starts a server with the append-only file on ([`Options::durable`]).
    pub fn start_durable() -> Self {
        Self::start_with(Options::durable())
    }

    /// Starts a server with these options and waits until it answers `PING`.
    pub fn start_with(options: Options) -> Self {
        let binary = redis_server_binary();
        let mut dir = tempfile::Builder::new()
            .prefix("wtq-redis-")
            .tempdir()
            .expect("creating a temporary directory for redis-server");
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut server = RedisServer {
                port,
                options: options.clone(),
                child: None,
                dir,
            };
            match server.spawn(&binary) {
                Ok(()) => return server,
                Err(failure) => {
                    last_failure = failure;
                    dir = server.take_dir();
                }
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_failure}");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (its AOF and log live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running (it may still be starting).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL, as a crash or an OOM killer would, and reaps it. Only
    /// what was fsynced survives (everything acknowledged, with [`Options::durable`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server abruptly; the same as [`RedisServer::kill`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port and directory (so an append-only file is
    /// replayed) and waits until it answers `PING`. Kills it first if it is running.
    pub fn restart(&mut self) {
        self.kill();
        let binary = redis_server_binary();
        // The port was ours a moment ago; a test on another thread may have picked it in
        // between (it probes with bind-and-drop too), so retry briefly before failing.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn(&binary) {
                Ok(()) => return,
                Err(failure) if Instant::now() >= deadline => {
                    panic!(
                        "redis-server did not restart on port {}: {failure}",
                        self.port
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Sends one command and returns its reply. Panics when the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Reply {
        self.try_command(args).unwrap_or_else(|error| {
            panic!(
                "redis-server on port {} did not answer {:?}: {error}",
                self.port, args
            )
        })
    }

    /// Sends one command on a fresh connection and returns its reply.
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<Reply> {
        Self::try_command_on(self.port, args)
    }

    /// Sends one command to the server on `port` (for a thread that cannot borrow it).
    pub fn command_on(port: u16, args: &[&str]) -> Reply {
        Self::try_command_on(port, args).unwrap_or_else(|error| {
            panic!("redis-server on port {port} did not answer {args:?}: {error}")
        })
    }

    fn try_command_on(port: u16, args: &[&str]) -> std::io::Result<Reply> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        writer.write_all(&encode(args))?;
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader)
    }

    /// Every key of the server (`SCAN` to the end, never `KEYS`), sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let reply = self.command(&["SCAN", &cursor, "COUNT", "1000"]);
            let Reply::Array(Some(parts)) = reply else {
                panic!("SCAN answered {reply:?}");
            };
            let [next, Reply::Array(Some(batch))] = parts.as_slice() else {
                panic!("SCAN answered {parts:?}");
            };
            keys.extend(batch.iter().map(Reply::text));
            cursor = next.text();
            if cursor == "0" {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// The tail of the server's log, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn spawn(&mut self, binary: &Path) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path();
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port])
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", "redis.log"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .args(&self.options.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                self.kill();
                return Err(format!(
                    "redis-server exited at start on port {port}; its log:\n{}",
                    self.log()
                ));
            }
            // Another test may have picked the same free port a moment earlier: the server
            // that answers must be this child, or it is someone else's (ours will then fail
            // to bind and exit, and the caller tries another port).
            if self.try_command(&["PING"]).ok() == Some(Reply::Simple("PONG".into()))
                && self.answering_pid() == self.child.as_ref().map(Child::id)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process id of the server answering on our port (`INFO server`).
    fn answering_pid(&self) -> Option<u32> {
        let info = match self.try_command(&["INFO", "server"]).ok()? {
            Reply::Bulk(Some(bytes)) => String::from_utf8(bytes).ok()?,
            _ => return None,
        };
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// Moves the directory out of a server that failed to start, for the next attempt.
    fn take_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().expect("creating a temporary directory");
        std::mem::replace(&mut self.dir, placeholder)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple strings, bulk strings and integers); panics otherwise.
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(text) => text.clone(),
            Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Reply::Integer(number) => number.to_string(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }
}

/// `redis-server` from PATH.
fn redis_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("redis-server not found: install it with apt-get install -y redis-server")
        })
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| invalid(format!("bad length in `{line}`")))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(number()?),
        "$" => match number()? {
            -1 => Reply::Bulk(None),
            length => {
                let mut bytes = vec![0; length as usize + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(length as usize);
                Reply::Bulk(Some(bytes))
            }
        },
        "*" => match number()? {
            -1 => Reply::Array(None),
            count => {
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(read_reply(reader)?);
                }
                Reply::Array(Some(items))
            }
        },
        _ => return Err(invalid(format!("unexpected reply line `{line}`"))),
    })
}
