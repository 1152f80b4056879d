//! The per-store host state: WASI context, memory limiter, the capped task log, and the
//! implementation of the `wtq:task/host` imports. Only this file implements host imports.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, LogLevel, TaskContext};
use super::limits::{MAX_MESSAGE, TABLE_ELEMENT_BYTES};
use super::outcome::Progress;

/// Handles (streams, pollables, ...) one instance may hold in the host at once. Host-side
/// state is not counted by the memory limit, so it gets its own cap (wasmtime's default is a
/// million).
const MAX_HOST_RESOURCES: usize = 10_000;

/// State of one store (one instance): fresh per call unless the instance is recycled.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: LogPipe,
    pub(crate) context: TaskContext,
    pub(crate) progress: Option<Progress>,
    /// Where progress goes as it is reported (the worker forwards it to the broker).
    pub(crate) progress_sink: Option<tokio::sync::watch::Sender<Option<Progress>>>,
}

impl HostState {
    /// A state with no filesystem, network, environment or arguments; stdout and stderr go to
    /// the task log.
    pub(crate) fn new(context: TaskContext, memory_limit: u64, log_limit: u64) -> Self {
        let log = LogPipe::new(log_limit);
        // The builder's defaults already grant nothing (no preopens, env, args, sockets); the
        // network is switched off explicitly so a change of default cannot open it.
        let wasi = WasiCtx::builder()
            .stdout(log.clone())
            .stderr(log.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        HostState {
            wasi,
            table,
            limiter: MemoryLimiter::new(memory_limit),
            log,
            context,
            progress: None,
            progress_sink: None,
        }
    }

    /// Prepares a recycled instance for its next call: new context, limits and an empty log.
    pub(crate) fn reset(&mut self, context: TaskContext, memory_limit: u64, log_limit: u64) {
        self.context = context;
        self.limiter.reset(memory_limit);
        self.log.reset(log_limit);
        self.progress = None;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::wtq::task::host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Trace => "TRACE",
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        };
        self.log.append_line(level, &message);
    }

    fn progress(&mut self, done: u64, total: u64, note: String) {
        let progress = Progress {
            done,
            total,
            note: truncate(note, MAX_MESSAGE),
        };
        if let Some(sink) = &self.progress_sink {
            sink.send_replace(Some(progress.clone()));
        }
        self.progress = Some(progress);
    }

    fn context(&mut self) -> TaskContext {
        self.context.clone()
    }
}

/// The memory limit was reached: returned from the limiter so the trap carries a typed cause.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit exceeded: the task asked for {requested} bytes of linear memory and tables, over its limit of {limit} bytes"
)]
pub(crate) struct MemoryLimitExceeded {
    pub(crate) requested: u64,
    pub(crate) limit: u64,
}

/// Caps linear memory plus tables of one instance and records the high-water mark.
pub(crate) struct MemoryLimiter {
    limit: u64,
    /// Bytes currently held by all memories and tables of the instance.
    current: u64,
    /// Highest `current` since the last reset.
    pub(crate) peak: u64,
    /// `(current, peak)` before the last granted growth, restored if wasmtime then fails it
    /// (growth past a memory's or table's own declared maximum).
    before_last_grant: (u64, u64),
}

impl MemoryLimiter {
    fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit,
            current: 0,
            peak: 0,
            before_last_grant: (0, 0),
        }
    }

    fn reset(&mut self, limit: u64) {
        self.limit = limit;
        self.peak = self.current;
    }

    /// Bytes the instance holds now.
    pub(crate) fn current(&self) -> u64 {
        self.current
    }

    fn grow(&mut self, from: u64, to: u64) -> wasmtime::Result<bool> {
        let requested = self.current.saturating_sub(from).saturating_add(to);
        if requested > self.limit {
            return Err(MemoryLimitExceeded {
                requested,
                limit: self.limit,
            }
            .into());
        }
        self.before_last_grant = (self.current, self.peak);
        self.current = requested;
        self.peak = self.peak.max(requested);
        Ok(true)
    }

    fn grow_failed(&mut self) {
        (self.current, self.peak) = self.before_last_grant;
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    // wasmtime asks here before any other check, so every request over the limit fails with
    // a typed error (and a clear failure kind) instead of `memory.grow` returning -1, which a
    // Rust guest turns into an opaque abort.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64)
    }

    // Within the limit but refused by the memory's own maximum or the OS: the guest sees -1,
    // as the spec says, and the grant is taken back.
    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements as u64 * TABLE_ELEMENT_BYTES;
        self.grow(bytes(current), bytes(desired))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }
}

/// `text` cut to at most `limit` bytes (on a character boundary), with a note of what was cut.
pub(crate) fn truncate(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(" [{dropped} more bytes dropped]"));
    text
}

/// The task log: host `log` lines, stdout and stderr, in order, up to a byte cap. Writes past
/// the cap are counted and dropped, never refused, so a log flood cannot fail a task.
#[derive(Clone)]
pub(crate) struct LogPipe(Arc<Mutex<LogBuffer>>);

struct LogBuffer {
    text: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl LogPipe {
    fn new(limit: u64) -> Self {
        LogPipe(Arc::new(Mutex::new(LogBuffer {
            text: Vec::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            dropped: 0,
        })))
    }

    fn reset(&mut self, limit: u64) {
        let mut buffer = self.lock();
        buffer.text.clear();
        buffer.limit = usize::try_from(limit).unwrap_or(usize::MAX);
        buffer.dropped = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogBuffer> {
        // A panic while holding this lock cannot leave the buffer inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append_line(&self, level: &str, message: &str) {
        let mut buffer = self.lock();
        buffer.append(level.as_bytes());
        buffer.append(b" ");
        buffer.append(message.as_bytes());
        buffer.append(b"\n");
    }

    fn append(&self, bytes: &[u8]) {
        self.lock().append(bytes);
    }

    /// The log so far, with a note of how much was dropped.
    pub(crate) fn take(&self) -> String {
        let mut buffer = self.lock();
        let mut text = String::from_utf8_lossy(&buffer.text).into_owned();
        if buffer.dropped > 0 {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "[log truncated: {} more bytes dropped over the {}-byte log limit]\n",
                buffer.dropped, buffer.limit
            ));
        }
        buffer.text.clear();
        buffer.dropped = 0;
        text
    }
}

impl LogBuffer {
    fn append(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.text.len());
        let kept = bytes.len().min(room);
        self.text.extend_from_slice(&bytes[..kept]);
        self.dropped += (bytes.len() - kept) as u64;
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: overflow is dropped in `append`, so a flood never blocks or traps.
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_truncated_not_refused() {
        let pipe = LogPipe::new(16);
        pipe.append_line("INFO", "hello");
        pipe.append(b"0123456789abcdef");
        let log = pipe.take();
        assert!(
            log.starts_with("INFO hello\n01234\n[log truncated"),
            "{log}"
        );
        assert!(log.contains("[log truncated: 11 more bytes dropped over the 16-byte log limit]"));
    }

    #[test]
    fn memory_limiter_counts_all_memories_and_tables() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.grow(0, 40).is_ok());
        assert!(limiter.grow(0, 40).is_ok()); // a second memory
        assert!(limiter.grow(40, 70).is_err()); // 40 + 70 > 100
        assert_eq!(limiter.current(), 80);
        assert_eq!(limiter.peak, 80);
    }

    #[test]
    fn a_growth_wasmtime_refuses_is_taken_back() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.grow(0, 40).is_ok());
        assert!(limiter.grow(40, 90).is_ok());
        limiter.grow_failed(); // e.g. past the memory's declared maximum
        assert_eq!((limiter.current(), limiter.peak), (40, 40));
    }

    #[test]
    fn long_guest_text_is_cut_on_a_character_boundary() {
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("ééé".into(), 3), "é [4 more bytes dropped]");
    }
}
