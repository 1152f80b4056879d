//! The Redis broker's one pub/sub connection, shared by every waiter of a [`RedisBroker`] and
//! of the brokers of other namespaces made from it: `wait` (channel `done:<id>`),
//! `wait_for_work` (`work:<queue>`), `terminations` (`terminate`) and remote control
//! (`control`, `reply:<request>`, see `control.rs`). (Task events are not
//! here: they are a stream, read by `tenancy.rs` on connections of their own.)
//! Channels are full names (`wtq:{<namespace>}:…`), so each waiter hears only its namespace.
//!
//! A waiter registers first ([`Listener::watch`] returns once Redis confirmed the
//! subscription), then reads the state it waits on, then awaits its [`Watch`]: a message
//! published after the read cannot be missed, and nothing polls. A connection lost and
//! re-established may have dropped messages, so the listener wakes every waiter after it
//! resubscribes (spurious wake-ups, which every waiter tolerates by reading the state again)
//! and forwards the ids of the `terminating` set again.
//!
//! One background task owns the connection: it reconnects with backoff, pings so that a dead
//! connection is noticed, and unsubscribes from channels nobody waits on any more. It starts
//! at the first watch and stops when the last broker sharing it (any clone, any namespace) is
//! dropped.
//!
//! [`RedisBroker`]: super::RedisBroker

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, oneshot};

/// How long one connection attempt, or one SUBSCRIBE, may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the connection is checked with a PING and idle channels are unsubscribed. It
/// bounds how long a silently dead connection (half-open TCP) goes unnoticed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// Backoff between reconnection attempts: doubling from the first to the last.
const RECONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// How long a first watcher waits for the listener's first connection before it settles for
/// an unconfirmed subscription (its caller then re-checks the state periodically).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// The shared pub/sub connection of one broker (and its clones).
pub(super) struct Listener {
    shared: Arc<Shared>,
    started: OnceLock<()>,
    /// Dropped with the listener, which stops the background task.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stop_receiver: Mutex<Option<oneshot::Receiver<()>>>,
}

struct Shared {
    client: redis::Client,
    /// For re-reading `terminating` sets after a reconnect.
    commands: ConnectionManager,
    /// Channel → who waits on it. A plain mutex: held only for map updates, never across an
    /// await.
    channels: Mutex<HashMap<Vec<u8>, Entry>>,
    /// The subscribing half of the live connection, `None` while disconnected. An async mutex
    /// because it is held across SUBSCRIBE/UNSUBSCRIBE: it orders them, so a channel's
    /// `subscribed` flag always matches what Redis has.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Bumped after every (re)connection; a first watcher waits for it to leave 0.
    connections: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Entry {
    waiters: Vec<Waiter>,
    /// Whether Redis confirmed the subscription on the current connection.
    subscribed: bool,
    /// A `terminate` channel's `terminating` set, replayed to its receivers after a reconnect.
    replay: Option<String>,
}

enum Waiter {
    /// Woken by any message on the channel (and by reconnections).
    Wake(Arc<Notify>),
    /// Receives each message's payload (a `terminate` channel).
    Forward(mpsc::Sender<String>),
}

impl Waiter {
    fn is_closed(&self) -> bool {
        match self {
            Waiter::Wake(notify) => Arc::strong_count(notify) == 1,
            Waiter::Forward(sender) => sender.is_closed(),
        }
    }
}

/// A registration on some channels; woken by a message on any of them. Dropping it
/// unregisters (the channel is unsubscribed at the next housekeeping if nobody else waits).
pub(super) struct Watch {
    notify: Arc<Notify>,
    channels: Vec<Vec<u8>>,
    shared: Arc<Shared>,
}

impl Watch {
    /// Returns after a message on one of the channels (possibly one published before this
    /// call, after the watch was made), or after a reconnection.
    pub(super) async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Whether every channel is confirmed subscribed right now. When not, a waiter cannot
    /// rely on being woken and re-checks the state every so often instead.
    pub(super) fn live(&self) -> bool {
        let channels = self.shared.lock_channels();
        self.channels
            .iter()
            .all(|channel| channels.get(channel).is_some_and(|entry| entry.subscribed))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut channels = self.shared.lock_channels();
        for channel in &self.channels {
            if let Some(entry) = channels.get_mut(channel) {
                entry.waiters.retain(|waiter| match waiter {
                    Waiter::Wake(notify) => !Arc::ptr_eq(notify, &self.notify),
                    Waiter::Forward(_) => true,
                });
            }
        }
    }
}

impl Listener {
    pub(super) fn new(client: redis::Client, commands: ConnectionManager) -> Listener {
        let (stop, stop_receiver) = oneshot::channel();
        Listener {
            shared: Arc::new(Shared {
                client,
                commands,
                channels: Mutex::new(HashMap::new()),
                sink: tokio::sync::Mutex::new(None),
                connections: tokio::sync::watch::Sender::new(0),
            }),
            started: OnceLock::new(),
            stop: Mutex::new(Some(stop)),
            stop_receiver: Mutex::new(Some(stop_receiver)),
        }
    }

    /// Registers on `channels` and subscribes to those not yet subscribed; returns once Redis
    /// confirmed (or, when it is unreachable, at once with a watch that is not [`live`]).
    ///
    /// [`live`]: Watch::live
    pub(super) async fn watch(&self, channels: Vec<String>) -> Watch {
        let notify = Arc::new(Notify::new());
        let channels: Vec<Vec<u8>> = channels.into_iter().map(String::into_bytes).collect();
        self.register(&channels, || Waiter::Wake(Arc::clone(&notify)), |_| {})
            .await;
        Watch {
            notify,
            channels,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Forwards every message's payload (a task id) on a namespace's `terminate` channel to a
    /// new receiver, until it is dropped; after a reconnect, the ids of its `terminating` set.
    pub(super) async fn terminations(
        &self,
        channel: String,
        terminating_key: String,
        buffer: usize,
    ) -> mpsc::Receiver<String> {
        self.forward(channel, Some(terminating_key), buffer).await
    }

    /// Every message on `channel` from now on, as it arrives (a full buffer drops messages);
    /// after a reconnect, the members of `replay` (a set) are sent again.
    pub(super) async fn forward(
        &self,
        channel: String,
        replay: Option<String>,
        buffer: usize,
    ) -> mpsc::Receiver<String> {
        let (sender, receiver) = mpsc::channel(buffer);
        let channel = channel.into_bytes();
        self.register(
            std::slice::from_ref(&channel),
            || Waiter::Forward(sender.clone()),
            |entry| entry.replay = replay.clone(),
        )
        .await;
        receiver
    }

    /// Adds a waiter to each channel (and lets `setup` note what the channel needs), then
    /// subscribes to those not yet subscribed.
    async fn register(
        &self,
        channels: &[Vec<u8>],
        waiter: impl Fn() -> Waiter,
        setup: impl Fn(&mut Entry),
    ) {
        self.start();
        let shared = &self.shared;
        let mut connections = shared.connections.subscribe();
        if *connections.borrow() == 0 {
            // The listener's first connection is under way; subscribing before it exists
            // would leave this watch unconfirmed for no reason.
            let _ =
                tokio::time::timeout(FIRST_CONNECT_WAIT, connections.wait_for(|count| *count > 0))
                    .await;
        }
        // Held while registering and subscribing, see `Shared::sink`.
        let mut sink = shared.sink.lock().await;
        let missing: Vec<Vec<u8>> = {
            let mut map = shared.lock_channels();
            channels
                .iter()
                .filter(|channel| {
                    let entry = map.entry(channel.to_vec()).or_default();
                    // In the same section as the push: a sweep in between would forget it.
                    setup(entry);
                    entry.waiters.push(waiter());
                    !entry.subscribed
                })
                .cloned()
                .collect()
        };
        let Some(live) = sink.as_mut() else {
            return;
        };
        if missing.is_empty() {
            return;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, live.subscribe(&missing)).await {
            Ok(Ok(())) => {
                let mut map = shared.lock_channels();
                for channel in &missing {
                    if let Some(entry) = map.get_mut(channel) {
                        entry.subscribed = true;
                    }
                }
            }
            // The background task notices the broken connection (its stream ends or its
            // ping fails), reconnects, resubscribes every registered channel and wakes
            // every waiter; until then this watch is not live.
            Ok(Err(error)) => tracing::debug!(%error, "subscribing failed"),
            Err(_) => tracing::debug!("subscribing timed out"),
        }
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            let stop = self
                .stop_receiver
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(stop) = stop {
                tokio::spawn(run(Arc::downgrade(&self.shared), stop));
            }
        });
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Dropping the sender ends the background task.
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Shared {
    fn lock_channels(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        // Sections do not panic; if one did, the map is still consistent enough to use.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers one message to the channel's waiters.
    fn dispatch(&self, channel: &[u8], payload: &[u8]) {
        let mut channels = self.lock_channels();
        let Some(entry) = channels.get_mut(channel) else {
            return;
        };
        for waiter in &entry.waiters {
            match waiter {
                Waiter::Wake(notify) => notify.notify_one(),
                Waiter::Forward(sender) => {
                    let payload = String::from_utf8_lossy(payload).into_owned();
                    if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(payload) {
                        tracing::warn!(
                            channel = %String::from_utf8_lossy(channel),
                            "a receiver's buffer is full; a message was dropped (a terminate request is seen again at the task's next delivery)"
                        );
                    }
                }
            }
        }
    }

    /// Wakes every waiter: after a reconnection (messages may have been lost) or a disconnection
    /// (waiters switch to periodic re-checks).
    fn wake_all(&self) {
        for entry in self.lock_channels().values() {
            for waiter in &entry.waiters {
                if let Waiter::Wake(notify) = waiter {
                    notify.notify_one();
                }
            }
        }
    }

    /// Each `terminate` channel someone forwards, with its `terminating` set.
    fn replays(&self) -> Vec<(Vec<u8>, String)> {
        self.lock_channels()
            .iter()
            .filter(|(_, entry)| !entry.waiters.is_empty())
            .filter_map(|(channel, entry)| Some((channel.clone(), entry.replay.clone()?)))
            .collect()
    }

    /// Sends the ids of each `terminating` set to its namespace's terminations receivers:
    /// requests published while the connection was down would otherwise be lost. Receivers
    /// ignore ids they do not run.
    async fn replay_terminations(&self) {
        for (channel, terminating_key) in self.replays() {
            let ids: Vec<String> = match redis::cmd("SMEMBERS")
                .arg(&terminating_key)
                .query_async(&mut self.commands.clone())
                .await
            {
                Ok(ids) => ids,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        key = terminating_key,
                        "cannot re-read the terminating set after reconnecting"
                    );
                    continue;
                }
            };
            for id in ids {
                self.dispatch(&channel, id.as_bytes());
            }
        }
    }

    /// Unsubscribes from channels nobody waits on and forgets them.
    async fn sweep(&self, sink: &mut PubSubSink) -> redis::RedisResult<()> {
        let idle: Vec<Vec<u8>> = {
            let mut channels = self.lock_channels();
            for entry in channels.values_mut() {
                entry.waiters.retain(|waiter| !waiter.is_closed());
            }
            let idle: Vec<Vec<u8>> = channels
                .iter()
                .filter(|(_, entry)| entry.waiters.is_empty())
                .map(|(channel, _)| channel.clone())
                .collect();
            for channel in &idle {
                channels.remove(channel);
            }
            idle
        };
        if !idle.is_empty() {
            sink.unsubscribe(&idle).await?;
        }
        Ok(())
    }
}

/// The background task: connect, resubscribe, dispatch, and again after every disconnection.
async fn run(shared: Weak<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut backoff = RECONNECT_BACKOFF.0;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        match connect(&strong).await {
            Ok(stream) => {
                backoff = RECONNECT_BACKOFF.0;
                // Before announcing the connection: a watcher that waited for it registers
                // after this and is not woken for nothing.
                strong.wake_all();
                strong.connections.send_modify(|count| *count += 1);
                strong.replay_terminations().await;
                drop(strong);
                let stopped = listen(&shared, stream, &mut stop).await;
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                disconnect(&strong).await;
                if stopped {
                    return;
                }
                // Reconnect at once the first time: a restarted Redis is usually back.
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "pub/sub connection to Redis failed");
                drop(strong);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
    }
}

/// Opens the connection and subscribes to every registered channel.
async fn connect(shared: &Shared) -> redis::RedisResult<PubSubStream> {
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, shared.client.get_async_pubsub())
        .await
        .map_err(|_| timed_out("connecting"))??;
    let (mut sink, stream) = pubsub.split();
    let mut slot = shared.sink.lock().await;
    let channels: Vec<Vec<u8>> = shared.lock_channels().keys().cloned().collect();
    if !channels.is_empty() {
        tokio::time::timeout(CONNECT_TIMEOUT, sink.subscribe(&channels))
            .await
            .map_err(|_| timed_out("subscribing"))??;
        let mut map = shared.lock_channels();
        for channel in &channels {
            if let Some(entry) = map.get_mut(channel) {
                entry.subscribed = true;
            }
        }
    }
    *slot = Some(sink);
    Ok(stream)
}

/// Marks everything unsubscribed and wakes the waiters, which fall back to periodic checks
/// until the next connection.
async fn disconnect(shared: &Shared) {
    let mut slot = shared.sink.lock().await;
    *slot = None;
    for entry in shared.lock_channels().values_mut() {
        entry.subscribed = false;
    }
    drop(slot);
    shared.wake_all();
}

/// Dispatches messages until the connection ends or fails a ping (false), or the listener is
/// dropped (true).
async fn listen(
    shared: &Weak<Shared>,
    mut stream: PubSubStream,
    stop: &mut oneshot::Receiver<()>,
) -> bool {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    housekeeping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    tracing::warn!("pub/sub connection to Redis lost; reconnecting");
                    return false;
                };
                let Some(shared) = shared.upgrade() else {
                    return true;
                };
                shared.dispatch(message.get_channel_name().as_bytes(), message.get_payload_bytes());
            }
            _ = housekeeping.tick() => {
                let Some(shared) = shared.upgrade() else {
                    return true;
                };
                if let Err(error) = housekeep(&shared).await {
                    tracing::warn!(%error, "pub/sub connection to Redis failed; reconnecting");
                    return false;
                }
            }
            _ = &mut *stop => return true,
        }
    }
}

/// Pings the connection and drops idle subscriptions.
async fn housekeep(shared: &Shared) -> redis::RedisResult<()> {
    let mut slot = shared.sink.lock().await;
    let Some(sink) = slot.as_mut() else {
        return Ok(());
    };
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        sink.ping::<redis::Value>().await?;
        shared.sweep(sink).await
    })
    .await
    .map_err(|_| timed_out("pinging"))?
}

fn timed_out(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}
