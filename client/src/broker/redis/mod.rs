//! The Redis broker: the [`Broker`] contract over Redis, for production. Entry point:
//! [`RedisBroker::connect`].
//!
//! - Every key is built by [`keys`] (`wtq:{<namespace>}:…`, one cluster slot per namespace;
//!   the layout table is there).
//! - Every multi-key transition is one Lua script in `scripts/`, taking a whole batch per call:
//!   enqueue, reserve, renew, mark and settle cost one round trip per batch. A task costs Redis
//!   about 20 µs of CPU from enqueue to settle (`examples/redis_bench.rs`), mostly per-command
//!   overhead inside the scripts, so they make as few calls per task as they can (2 to enqueue,
//!   2 to reserve, 3 to finish). Scripts derive per-task and per-queue keys from the namespace
//!   prefix they are given (all in the namespace's slot) and declare the fixed keys in `KEYS`.
//! - Fencing: reserve mints a token per lease from the `fence` counter and stores it in the
//!   task hash; renew, mark and settle act only while the stored token matches; settle and
//!   reap empty it (the field is non-empty exactly while the id is in `leases`).
//! - Tenancy ([`tenancy`]): [`Tenancy::namespaced`](super::Tenancy::namespaced) gives a broker
//!   over another namespace's keys sharing this one's connections, scripts and listener. The
//!   reserve script enforces the namespace's concurrency cap (one HGET per call) and the
//!   per-task rate limits (`super::task_rate`; one HLEN per call while none is set), settle meters
//!   usage (one HINCRBY per counter per call) and every state change publishes a task event
//!   only while someone watches (one EXISTS per call that changes a state); the tenant and token
//!   hashes are the only keys outside a namespace.
//! - Commands go through a [`ConnectionManager`], which reconnects with backoff after Redis
//!   restarts (a call that meets the broken connection fails; later ones succeed once Redis is
//!   back, so workers resume by themselves). Waiting uses one shared pub/sub connection
//!   ([`listener`]); nothing blocks the command connection.
//!
//! `rediss://` connects over TLS (rustls; the server certificate is checked against the
//! system's roots, plus `SSL_CERT_FILE`; a `#insecure` fragment skips the check).
//!
//! Not here: Redis Cluster routing (the scripts are slot-safe, but [`ConnectionManager`] talks
//! to one node), durable-mode `WAIT`.

mod control;
mod keys;
mod listener;
mod record;
mod schedule;
mod tenancy;

pub(crate) use self::keys::valid_namespace;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, FromRedisValue, Script, ScriptInvocation, Value};
use serde::Serialize;
use tokio::sync::mpsc;

use self::keys::{Keys, rank_base};
use self::listener::Listener;
use super::task_rate;
use super::tenancy::Metered;
use super::{
    Broker, Delivery, Enqueued, Error, IDEMPOTENCY_TTL_MS, Lease, Mark, NewTask, Revoked, Settle,
    Settled, Settlement,
};
use crate::message::{State, TaskFailure, TaskMessage, TaskRecord};
use crate::registry::{ComponentRecord, TaskPolicy, Upload};
use crate::tenancy::Rate;
use crate::workflow::{Input, Links, Plan, PlannedTask, Tree};

/// How long one connection attempt may take (and one reply during `connect`'s checks).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);
/// How long `connect` may take in all before it reports Redis unreachable: callers (and
/// operators at a prompt) learn within 2 s that nothing answers.
const CONNECT_DEADLINE: Duration = Duration::from_millis(1500);
/// How long a command may wait for its reply before the connection counts as broken. Scripts
/// are bounded by the batch sizes below and finish in milliseconds.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnection backoff of the command connection: from the first delay, doubling, capped,
/// for this many attempts per failed call (the next call starts over).
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
const RECONNECT_ATTEMPTS: usize = 5;
/// Most items per script call: bounds the time one call holds Redis (a few ms) and the Lua
/// stack (`unpack` of 2 values per item).
const MAX_BATCH: usize = 1000;
/// Most delayed messages one reserve promotes per queue; the next reserve takes the rest.
const PROMOTE_LIMIT: usize = 1000;
/// Messages per call of the purge and dead-letter maintenance scripts, which loop until done.
const MAINTENANCE_BATCH: usize = 1000;
/// Ids a worker's termination channel holds before further requests are dropped (with a
/// warning): a worker drains it continuously and also checks `terminating` at each delivery.
const TERMINATION_BUFFER: usize = 1024;
/// How often a waiter re-checks while the pub/sub connection is down (it cannot be woken).
const DISCONNECTED_RECHECK: Duration = Duration::from_millis(500);
/// Shortest wait of `wait_for_work` when a delayed message is already due by this machine's
/// clock: its reserve will promote it, unless the caller's clock disagrees, and this keeps
/// such a caller from spinning.
const MIN_DUE_WAIT: Duration = Duration::from_millis(10);
/// Compare-and-set rounds of `put_component` before giving up under heavy contention.
const REGISTRY_CAS_ROUNDS: usize = 16;

/// Failure kinds the broker itself assigns (the scripts spell `expired` and `dead_lettered`).
const KIND_REVOKED: &str = "revoked";
const KIND_PURGED: &str = "purged";

/// The Redis broker of one namespace. Clones, and brokers of other namespaces made with
/// [`Tenancy::namespaced`](super::Tenancy::namespaced), share the connections.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Keys,
    shared: Arc<Shared>,
}

/// What every namespace's broker of one `connect` shares. The listener's channels are full
/// names (`wtq:{ns}:…`), so one pub/sub connection serves every namespace without mixing
/// them up.
struct Shared {
    /// The URL as given, password hidden: for error messages.
    url: String,
    commands: ConnectionManager,
    scripts: Scripts,
    listener: Listener,
    /// For the event log's readers: each blocks (XREAD BLOCK) on a connection of its own, never
    /// on `commands`.
    client: redis::Client,
}

/// The Lua scripts, hashed once; each is sent with EVALSHA, and loaded when Redis does not
/// know it (first use, or after a restart).
struct Scripts {
    enqueue: Script,
    reserve: Script,
    renew: Script,
    mark: Script,
    settle: Script,
    reap: Script,
    revoke: Script,
    purge: Script,
    retry_dead: Script,
    purge_dead: Script,
    put_component: Script,
    watch: Script,
    rate: Script,
    set_rate_limit: Script,
}

impl Scripts {
    fn load() -> Scripts {
        // Every script starts with the shared prelude (Lua scripts cannot import one another).
        let script =
            |body: &str| Script::new(&format!("{}{body}", include_str!("scripts/prelude.lua")));
        Scripts {
            enqueue: script(include_str!("scripts/enqueue.lua")),
            reserve: script(include_str!("scripts/reserve.lua")),
            renew: script(include_str!("scripts/renew.lua")),
            mark: script(include_str!("scripts/mark.lua")),
            settle: script(include_str!("scripts/settle.lua")),
            reap: script(include_str!("scripts/reap.lua")),
            revoke: script(include_str!("scripts/revoke.lua")),
            purge: script(include_str!("scripts/purge.lua")),
            retry_dead: script(include_str!("scripts/retry_dead.lua")),
            purge_dead: script(include_str!("scripts/purge_dead.lua")),
            put_component: script(include_str!("scripts/put_component.lua")),
            watch: script(include_str!("scripts/watch.lua")),
            rate: script(include_str!("scripts/rate.lua")),
            set_rate_limit: script(include_str!("scripts/set_rate_limit.lua")),
        }
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.shared.url)
            .field("prefix", &self.inner.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to Redis at `url` (`redis://` or `rediss://`) for the keys of `namespace`
    /// (1 to 64 of `[A-Za-z0-9_-]`). Fails with [`Error::Unreachable`] within
    /// [`CONNECT_DEADLINE`] when nothing answers, and with [`Error::Evicting`] when Redis may
    /// evict keys.
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisBroker, Error> {
        let shown = redact(url);
        let invalid = |reason: String| Error::Url {
            url: shown.clone(),
            reason,
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(invalid(
                "use redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss:// for TLS".to_string(),
            ));
        }
        // The namespace comes with the URL (`?namespace=`, see `crate::connect`), so a bad one
        // is reported as the broker address being unusable.
        let keys = Keys::new(namespace).map_err(|error| invalid(error.to_string()))?;
        let client = redis::Client::open(url).map_err(|error| invalid(error.to_string()))?;

        let unreachable = |message: String| Error::Unreachable {
            url: shown.clone(),
            message,
        };
        // A first, plain connection proves Redis answers, quickly; the manager below would
        // retry with backoff instead.
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        tokio::time::timeout(CONNECT_DEADLINE, async {
            let mut probe = client
                .get_multiplexed_async_connection_with_config(&probe_config)
                .await
                .map_err(|error| unreachable(error.to_string()))?;
            check_eviction(&mut probe, &shown).await
        })
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_DEADLINE:?}")))??;

        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_min_delay(RECONNECT_FIRST_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY)
            .set_number_of_retries(RECONNECT_ATTEMPTS);
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|error| unreachable(error.to_string()))?;
        let listener = Listener::new(client.clone(), commands.clone());
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                keys,
                shared: Arc::new(Shared {
                    url: shown,
                    commands,
                    scripts: Scripts::load(),
                    listener,
                    client,
                }),
            }),
        })
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn scripts(&self) -> &Scripts {
        &self.inner.shared.scripts
    }

    /// Runs a script (EVALSHA, loading it first if Redis does not have it).
    async fn run<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, Error> {
        invocation
            .invoke_async(&mut self.inner.shared.commands.clone())
            .await
            .map_err(|error| self.failed(error))
    }

    async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Error> {
        command
            .query_async(&mut self.inner.shared.commands.clone())
            .await
            .map_err(|error| self.failed(error))
    }

    /// Connection trouble is [`Error::Unreachable`]; anything else Redis said is
    /// [`Error::Redis`].
    fn failed(&self, error: redis::RedisError) -> Error {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            Error::Unreachable {
                url: self.inner.shared.url.clone(),
                message: error.to_string(),
            }
        } else {
            Error::Redis(error.to_string())
        }
    }

    /// Calls a batch script once per chunk of at most [`MAX_BATCH`] items.
    async fn chunked<'s, I, T>(
        &'s self,
        items: &[I],
        call: impl Fn(&[I]) -> ScriptInvocation<'s>,
    ) -> Result<Vec<T>, Error>
    where
        T: FromRedisValue,
    {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH) {
            let reply: Vec<T> = self.run(&call(chunk)).await?;
            out.extend(reply);
        }
        Ok(out)
    }
}

/// Refuses a Redis that may evict keys: evicting a task hash or a queue loses tasks silently.
async fn check_eviction(
    connection: &mut redis::aio::MultiplexedConnection,
    url: &str,
) -> Result<(), Error> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(connection)
        .await;
    match reply {
        Ok(pair) => match pair.as_slice() {
            [_, policy] if policy != "noeviction" => Err(Error::Evicting {
                url: url.to_string(),
                policy: policy.clone(),
            }),
            [_, _] => Ok(()),
            _ => {
                tracing::warn!(
                    url,
                    "Redis did not report its maxmemory-policy; make sure it is noeviction"
                );
                Ok(())
            }
        },
        Err(error) if error.is_io_error() || error.is_timeout() => Err(Error::Unreachable {
            url: url.to_string(),
            message: error.to_string(),
        }),
        // Managed Redis services often refuse CONFIG; their policy is set in their console.
        Err(error) => {
            tracing::warn!(url, %error, "cannot read Redis's maxmemory-policy; make sure it is noeviction, or tasks may be lost");
            Ok(())
        }
    }
}

/// The URL with its password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// JSON of plain data: the message model has only string keys and no custom serialisers.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("the message model always serialises")
}

/// An optional number as a script argument: `''` for none.
fn optional(value: Option<u64>) -> String {
    value.map_or_else(String::new, |value| value.to_string())
}

fn failure_json(kind: &str, message: String) -> String {
    json(&TaskFailure {
        kind: kind.to_string(),
        message,
    })
}

/// A settlement as the settle script's kind, operand, attempt JSON and error JSON.
fn settle_args(settlement: &Settlement) -> (&'static str, String, String, String) {
    let error = |error: &Option<TaskFailure>| error.as_ref().map(json).unwrap_or_default();
    match settlement {
        Settlement::Finish(attempt) => (
            "F",
            attempt.state.as_str().to_string(),
            json(attempt),
            error(&attempt.error),
        ),
        Settlement::Retry { attempt, eta_ms } => (
            "R",
            eta_ms.to_string(),
            json(attempt),
            error(&attempt.error),
        ),
        Settlement::Release => ("L", String::new(), String::new(), String::new()),
        Settlement::DeadLetter(failure) => ("D", String::new(), String::new(), json(failure)),
    }
}

/// The enqueue script's values for one message: the 10 fixed ones, then its extra hash
/// fields (a workflow task's links).
fn message_args(
    call: &mut ScriptInvocation<'_>,
    task: &NewTask,
    parked: &str,
    extra: &[(&str, String)],
) {
    let message = &task.message;
    call.arg(&message.id)
        .arg(json(message))
        .arg(&message.queue)
        .arg(rank_base(message.priority))
        .arg(optional(message.eta_ms))
        .arg(optional(message.expires_ms))
        .arg(message.max_deliveries)
        .arg(message.result_expires_ms)
        .arg(task.idempotency_key.as_deref().unwrap_or(""))
        .arg(parked)
        .arg(extra.len());
    for (field, value) in extra {
        call.arg(*field).arg(value);
    }
}

/// A task's or join's links as hash fields.
fn link_fields(links: &Links, out: &mut Vec<(&'static str, String)>) {
    if !links.next.is_empty() {
        out.push(("next", links.next.join(" ")));
    }
    if !links.errback.is_empty() {
        out.push(("errback", links.errback.join(" ")));
    }
    if let Some(slot) = &links.join {
        out.push(("join", slot.join.clone()));
        out.push(("jidx", slot.index.to_string()));
    }
}

/// A workflow task's extra hash fields and its `parked` value.
fn planned_fields(task: &PlannedTask) -> (&'static str, Vec<(&'static str, String)>) {
    let mut fields = vec![("flow", "1".to_string()), ("addr", task.address.clone())];
    link_fields(&task.links, &mut fields);
    if !task.within.is_empty() {
        fields.push(("within", task.within.join(" ")));
    }
    let Some(parked) = &task.parked else {
        return ("", fields);
    };
    // The message around its arguments, for the script to splice the input in: serde
    // writes `"args":""` once, at the top level (inside a JSON string every `"` is escaped).
    let template = json(&TaskMessage {
        args: String::new(),
        ..task.message.clone()
    });
    let at = template
        .find(",\"args\":\"\"")
        .expect("a serialised message has an args field")
        + ",\"args\":".len();
    fields.push(("head", template[..at].to_string()));
    fields.push(("tail", template[at + 2..].to_string()));
    fields.push(("pargs", task.message.args.clone()));
    if let Some(delay) = parked.delay_ms {
        fields.push(("delay", delay.to_string()));
    }
    let mode = match &parked.input {
        Input::Ignore => "i",
        Input::Prepend => "p",
        Input::Keyword(name) => {
            fields.push(("pkey", name.clone()));
            "k"
        }
    };
    (mode, fields)
}

/// Parses reserve's flat reply: id, token, message, deliveries, attempt, terminating per
/// delivery.
fn deliveries(reply: Vec<Value>, now_ms: u64) -> Result<Vec<Delivery>, Error> {
    let mut out = Vec::with_capacity(reply.len() / 5);
    let mut values = reply.into_iter();
    while let Some(id) = values.next() {
        let mut next = || {
            values
                .next()
                .ok_or_else(|| Error::Redis("reserve script: truncated reply".to_string()))
        };
        let id = record::text(id)?;
        let token = record::integer(next()?)?;
        let body = record::bytes(next()?)?;
        let deliveries = record::integer(next()?)?;
        let attempt = record::integer(next()?)?;
        let terminating = record::integer::<u64>(next()?)? == 1;
        let message = serde_json::from_slice(&body)
            .map_err(|error| format!("the stored message body is not a task message: {error}"));
        out.push(Delivery {
            id,
            token,
            message,
            deliveries,
            attempt,
            terminating,
            received_ms: now_ms,
        });
    }
    Ok(out)
}

impl Broker for RedisBroker {
    async fn enqueue(&self, tasks: Vec<NewTask>, now_ms: u64) -> Result<Vec<Enqueued>, Error> {
        let keys = self.keys();
        let mut out = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(MAX_BATCH) {
            let mut call = self.scripts().enqueue.key(keys.seq());
            call.arg(keys.prefix())
                .arg(now_ms)
                .arg(IDEMPOTENCY_TTL_MS)
                .arg("")
                .arg("")
                .arg(0)
                .arg(0);
            for task in chunk {
                message_args(&mut call, task, "", &[]);
            }
            let reply: Vec<String> = self.run(&call).await?;
            let mut reply = reply.into_iter();
            let duplicate = reply.next().unwrap_or_default();
            while let (Some(id), Some(created)) = (reply.next(), reply.next()) {
                out.push(Enqueued {
                    id,
                    created: created == "1",
                });
            }
            if !duplicate.is_empty() {
                return Err(Error::DuplicateId(duplicate));
            }
        }
        Ok(out)
    }

    async fn reserve(
        &self,
        worker: &str,
        queues: &[String],
        max: usize,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Delivery>, Error> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys();
        let mut call = self.scripts().reserve.key(keys.fence());
        call.key(keys.leases())
            .key(keys.terminating())
            .key(keys.quota())
            .key(keys.task_rates())
            .arg(keys.prefix())
            .arg(worker)
            .arg(now_ms)
            .arg(now_ms.saturating_add(lease_ms))
            .arg(max.min(MAX_BATCH))
            .arg(PROMOTE_LIMIT)
            .arg(queues);
        let reply: Vec<Value> = self.run(&call).await?;
        let mut parts = reply.into_iter();
        let leased = record::array(parts.next().unwrap_or(Value::Nil))?;
        let dropped = record::array(parts.next().unwrap_or(Value::Nil))?;
        for id in dropped {
            tracing::warn!(
                id = ?id,
                "dropped a queued id that has no stored message (written to Redis by hand?)"
            );
        }
        deliveries(leased, now_ms)
    }

    async fn renew(
        &self,
        leases: &[Lease],
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, Error> {
        let keys = self.keys();
        let held: Vec<i64> = self
            .chunked(leases, |chunk| {
                let mut call = self.scripts().renew.key(keys.leases());
                call.arg(keys.prefix()).arg(now_ms.saturating_add(lease_ms));
                for lease in chunk {
                    call.arg(&lease.id).arg(lease.token);
                }
                call
            })
            .await?;
        Ok(held.into_iter().map(|held| held == 1).collect())
    }

    async fn mark(&self, marks: &[Mark]) -> Result<(), Error> {
        // Only a running state may be written under a lease; anything else would let a
        // progress report end or rewind a task.
        let marks: Vec<&Mark> = marks
            .iter()
            .filter(|mark| matches!(mark.state, State::Started | State::Progress))
            .collect();
        if marks.is_empty() {
            return Ok(());
        }
        let keys = self.keys();
        let _: Vec<i64> = self
            .chunked(&marks, |chunk| {
                let mut call = self.scripts().mark.key(keys.leases());
                call.arg(keys.prefix());
                for mark in chunk {
                    call.arg(&mark.lease.id)
                        .arg(mark.lease.token)
                        .arg(mark.state.as_str())
                        .arg(mark.progress.as_ref().map(json).unwrap_or_default())
                        .arg(mark.at_ms);
                }
                call
            })
            .await?;
        Ok(())
    }

    async fn settle(&self, settles: Vec<Settle>, now_ms: u64) -> Result<Vec<Settled>, Error> {
        let keys = self.keys();
        let committed: Vec<i64> = self
            .chunked(&settles, |chunk| {
                let mut call = self.scripts().settle.key(keys.leases());
                call.key(keys.dead())
                    .key(keys.terminating())
                    .key(keys.seq())
                    .key(keys.usage())
                    .arg(keys.prefix())
                    .arg(now_ms);
                for settle in chunk {
                    let (kind, operand, attempt, error) = settle_args(&settle.settlement);
                    let metered = Metered::of(&settle.settlement);
                    call.arg(&settle.lease.id)
                        .arg(settle.lease.token)
                        .arg(kind)
                        .arg(operand)
                        .arg(attempt)
                        .arg(error)
                        .arg(metered.fuel)
                        .arg(metered.cpu_us)
                        .arg(metered.memory_kib_ms);
                }
                call
            })
            .await?;
        Ok(committed
            .into_iter()
            .map(|committed| {
                if committed == 1 {
                    Settled::Committed
                } else {
                    Settled::Stale
                }
            })
            .collect())
    }

    async fn reap(&self, now_ms: u64, limit: usize) -> Result<usize, Error> {
        if limit == 0 {
            return Ok(0);
        }
        let keys = self.keys();
        let mut call = self.scripts().reap.key(keys.leases());
        call.key(keys.dead())
            .key(keys.terminating())
            .key(keys.seq())
            .arg(keys.prefix())
            .arg(now_ms)
            .arg(limit);
        self.run(&call).await
    }

    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> Result<(), Error> {
        if queues.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(());
        }
        let keys = self.keys();
        // Subscribed before looking: work that arrives after the look wakes this watch.
        let watch = self
            .inner
            .shared
            .listener
            .watch(
                queues
                    .iter()
                    .map(|queue| keys.work_channel(queue))
                    .collect(),
            )
            .await;
        let mut look = redis::pipe();
        for queue in queues {
            look.zcard(keys.ready(queue));
            look.cmd("ZRANGE")
                .arg(keys.delayed(queue))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let replies: Vec<(usize, Vec<(String, f64)>)> = look
            .query_async(&mut self.inner.shared.commands.clone())
            .await
            .map_err(|error| self.failed(error))?;
        if replies.iter().any(|(ready, _)| *ready > 0) {
            return Ok(());
        }
        let mut wait = timeout;
        let next_due = replies
            .iter()
            .filter_map(|(_, next)| next.first().map(|(_, eta)| *eta))
            .reduce(f64::min);
        if let Some(eta_ms) = next_due {
            let until_due =
                Duration::from_millis((eta_ms as u64).saturating_sub(crate::message::now_ms()));
            wait = wait.min(until_due.max(MIN_DUE_WAIT));
        }
        if !watch.live() {
            wait = wait.min(DISCONNECTED_RECHECK);
        }
        tokio::select! {
            _ = watch.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        Ok(())
    }

    async fn record(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().task(id)))
            .await?;
        record::decode(id, fields)
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<TaskRecord>, Error> {
        // A timeout past what `Instant` can hold means no deadline (a year is as good).
        let deadline = Instant::now() + timeout.min(crate::message::MAX_DURATION);
        // Subscribed before the first read: a finish after the read wakes this watch.
        let watch = self
            .inner
            .shared
            .listener
            .watch(vec![self.keys().done_channel(id)])
            .await;
        // The first read marks the task watched, so that its finish is published.
        let fields: Vec<(Vec<u8>, Vec<u8>)> = self
            .run(&self.scripts().watch.key(self.keys().task(id)))
            .await?;
        let mut first = Some(record::decode(id, fields)?);
        loop {
            let read = match first.take() {
                Some(read) => read,
                None => self.record(id).await?,
            };
            let Some(record) = read else {
                return Ok(None);
            };
            let now = Instant::now();
            if record.state.is_final() || now >= deadline {
                return Ok(Some(record));
            }
            let mut wait = deadline - now;
            if !watch.live() {
                wait = wait.min(DISCONNECTED_RECHECK);
            }
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn revoke(&self, id: &str, terminate: bool, now_ms: u64) -> Result<Revoked, Error> {
        let keys = self.keys();
        let mut call = self.scripts().revoke.key(keys.task(id));
        call.key(keys.terminating())
            .arg(keys.prefix())
            .arg(id)
            .arg(if terminate { "1" } else { "0" })
            .arg(now_ms)
            .arg(failure_json(
                KIND_REVOKED,
                "revoked before it started".to_string(),
            ));
        let reply: Vec<String> = self.run(&call).await?;
        let unexpected = || Error::Redis(format!("revoke script: unexpected reply {reply:?}"));
        match reply.as_slice() {
            [outcome] if outcome == "unknown" => Ok(Revoked::Unknown),
            [outcome] if outcome == "revoked" => Ok(Revoked::Revoked),
            [outcome, state] if outcome == "final" => State::parse(state)
                .map(Revoked::AlreadyFinal)
                .ok_or_else(|| Error::Corrupt(format!("task {id}: state `{state}`"))),
            [outcome, terminating] if outcome == "running" => Ok(Revoked::Running {
                terminating: terminating == "1",
            }),
            _ => Err(unexpected()),
        }
    }

    async fn terminations(&self) -> Result<mpsc::Receiver<String>, Error> {
        let keys = self.keys();
        Ok(self
            .inner
            .shared
            .listener
            .terminations(
                keys.terminate_channel(),
                keys.terminating(),
                TERMINATION_BUFFER,
            )
            .await)
    }

    async fn terminating(&self, id: &str) -> Result<bool, Error> {
        self.query(
            redis::cmd("SISMEMBER")
                .arg(self.keys().terminating())
                .arg(id),
        )
        .await
    }

    async fn purge(&self, queue: &str, now_ms: u64) -> Result<usize, Error> {
        let keys = self.keys();
        let error = failure_json(KIND_PURGED, format!("purged from queue `{queue}`"));
        let mut total = 0;
        loop {
            let mut call = self.scripts().purge.key(keys.ready(queue));
            call.key(keys.delayed(queue))
                .arg(keys.prefix())
                .arg(now_ms)
                .arg(MAINTENANCE_BATCH)
                .arg(&error);
            let removed: usize = self.run(&call).await?;
            total += removed;
            if removed < MAINTENANCE_BATCH {
                return Ok(total);
            }
        }
    }

    async fn dead(&self, limit: usize) -> Result<Vec<TaskRecord>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.keys();
        let ids: Vec<String> = self
            .query(
                redis::cmd("ZREVRANGE")
                    .arg(keys.dead())
                    .arg(0)
                    .arg(limit - 1),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = redis::pipe();
        for id in &ids {
            read.hgetall(keys.task(id));
        }
        let hashes: Vec<Vec<(Vec<u8>, Vec<u8>)>> = read
            .query_async(&mut self.inner.shared.commands.clone())
            .await
            .map_err(|error| self.failed(error))?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(hashes) {
            // One unreadable entry must not hide the others: list what can be read.
            match record::decode(id, fields) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => tracing::warn!(id, "a dead-lettered id has no record"),
                Err(error) => tracing::warn!(%error, "skipping an unreadable dead letter"),
            }
        }
        Ok(records)
    }

    async fn retry_dead(&self, id: Option<&str>, now_ms: u64) -> Result<usize, Error> {
        let keys = self.keys();
        let mut total = 0;
        loop {
            let mut call = self.scripts().retry_dead.key(keys.dead());
            call.arg(keys.prefix())
                .arg(id.unwrap_or(""))
                .arg(MAINTENANCE_BATCH)
                .arg(now_ms);
            let (taken, queued): (usize, usize) = self.run(&call).await?;
            total += queued;
            if id.is_some() || taken < MAINTENANCE_BATCH {
                return Ok(total);
            }
        }
    }

    async fn purge_dead(&self) -> Result<usize, Error> {
        let keys = self.keys();
        let mut total = 0;
        loop {
            let mut call = self.scripts().purge_dead.key(keys.dead());
            call.key(keys.terminating())
                .arg(keys.prefix())
                .arg(MAINTENANCE_BATCH);
            let deleted: usize = self.run(&call).await?;
            total += deleted;
            if deleted < MAINTENANCE_BATCH {
                return Ok(total);
            }
        }
    }

    async fn put_component(&self, upload: Upload) -> Result<ComponentRecord, Error> {
        let keys = self.keys();
        let Upload {
            name,
            version,
            compressed,
        } = upload;
        // Content-addressed: the same digest is the same bytes, so the first copy stays. Stored
        // before the record names it.
        let _: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(keys.blob(&version.digest))
                    .arg(compressed)
                    .arg("NX"),
            )
            .await?;
        let mut current: Option<String> = self
            .query(redis::cmd("HGET").arg(keys.registry()).arg(&name))
            .await?;
        for _ in 0..REGISTRY_CAS_ROUNDS {
            let mut record = match &current {
                Some(json) => parse_component(&name, json.as_bytes())?,
                None => ComponentRecord {
                    name: name.clone(),
                    versions: Vec::new(),
                },
            };
            if record.current().map(|current| &current.digest) == Some(&version.digest) {
                return Ok(record);
            }
            record
                .versions
                .retain(|known| known.digest != version.digest);
            record.versions.insert(0, version.clone());
            let mut call = self.scripts().put_component.key(keys.registry());
            call.arg(&name)
                .arg(current.as_deref().unwrap_or(""))
                .arg(json(&record));
            let (written, now): (i64, String) = self.run(&call).await?;
            if written == 1 {
                return Ok(record);
            }
            current = (!now.is_empty()).then_some(now);
        }
        Err(Error::Redis(format!(
            "the registry record of `{name}` kept changing under {REGISTRY_CAS_ROUNDS} concurrent deploys; deploy again"
        )))
    }

    async fn components(&self) -> Result<Vec<ComponentRecord>, Error> {
        let all: Vec<(String, Vec<u8>)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().registry()))
            .await?;
        let mut records = all
            .iter()
            .map(|(name, json)| parse_component(name, json))
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    async fn component(&self, name: &str) -> Result<Option<ComponentRecord>, Error> {
        let json: Option<Vec<u8>> = self
            .query(redis::cmd("HGET").arg(self.keys().registry()).arg(name))
            .await?;
        json.map(|json| parse_component(name, &json)).transpose()
    }

    async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        self.query(redis::cmd("GET").arg(self.keys().blob(digest)))
            .await
    }

    async fn depth(&self, queue: &str) -> Result<usize, Error> {
        self.query(redis::cmd("ZCARD").arg(self.keys().ready(queue)))
            .await
    }

    async fn submit(&self, plan: Plan, now_ms: u64) -> Result<(), Error> {
        let keys = self.keys();
        // One call whatever the size: a workflow is stored whole or not at all.
        let mut call = self.scripts().enqueue.key(keys.seq());
        call.arg(keys.prefix())
            .arg(now_ms)
            .arg(IDEMPOTENCY_TTL_MS)
            .arg(&plan.id)
            .arg(json(&plan.tree))
            .arg(plan.ttl_ms.max(1))
            .arg(plan.joins.len());
        for join in &plan.joins {
            let mut fields = vec![
                ("size", join.size.to_string()),
                (
                    "mode",
                    if join.collect { "collect" } else { "fail" }.to_string(),
                ),
            ];
            if join.flatten {
                fields.push(("flatten", "1".to_string()));
            }
            link_fields(&join.links, &mut fields);
            call.arg(&join.id).arg(fields.len());
            for (field, value) in fields {
                call.arg(field).arg(value);
            }
        }
        for task in &plan.tasks {
            let (parked, fields) = planned_fields(task);
            let new = NewTask {
                message: task.message.clone(),
                idempotency_key: None,
            };
            message_args(&mut call, &new, parked, &fields);
        }
        let reply: Vec<String> = self.run(&call).await?;
        match reply.into_iter().next() {
            Some(duplicate) if !duplicate.is_empty() => Err(Error::DuplicateId(duplicate)),
            _ => Ok(()),
        }
    }

    async fn workflow(&self, id: &str) -> Result<Option<Tree>, Error> {
        let tree: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(self.keys().workflow(id)))
            .await?;
        tree.map(|tree| {
            serde_json::from_slice(&tree)
                .map_err(|error| Error::Corrupt(format!("workflow {id}: {error}")))
        })
        .transpose()
    }

    async fn set_rate_limit(&self, task: &str, rate: Option<Rate>) -> Result<(), Error> {
        let keys = self.keys();
        // The first call changes the limit, resets the bucket and the cursor, and starts
        // moving the deferred backlog back, atomically; the others move the rest, a bounded
        // chunk per call.
        let mut mode = if rate.is_some() { "set" } else { "del" };
        loop {
            let mut call = self.scripts().set_rate_limit.key(keys.task_rates());
            call.key(keys.task_rate(task))
                .key(keys.task_rate_defer(task))
                .key(keys.task_rate_deferred(task))
                .key(keys.task_rate_undefer(task))
                .arg(keys.prefix())
                .arg(task)
                .arg(mode)
                .arg(task_rate::UNDEFER_CHUNK);
            if let Some(rate) = rate {
                call.arg(task_rate::encode(rate));
            }
            let left: u64 = self.run(&call).await?;
            if left == 0 {
                return Ok(());
            }
            mode = "drain";
        }
    }

    async fn set_time_limit(&self, task: &str, limit_ms: Option<u64>) -> Result<(), Error> {
        let key = self.keys().task_time_limits();
        let mut command = redis::cmd(if limit_ms.is_some() { "HSET" } else { "HDEL" });
        command.arg(key).arg(task);
        if let Some(ms) = limit_ms {
            command.arg(ms);
        }
        let _: i64 = self.query(&command).await?;
        Ok(())
    }

    async fn task_policies(&self) -> Result<BTreeMap<String, TaskPolicy>, Error> {
        let keys = self.keys();
        type Fields = Vec<(String, String)>;
        let (rates, times): (Fields, Fields) = redis::pipe()
            .hgetall(keys.task_rates())
            .hgetall(keys.task_time_limits())
            .query_async(&mut self.inner.shared.commands.clone())
            .await
            .map_err(|error| self.failed(error))?;
        let mut policies: BTreeMap<String, TaskPolicy> = BTreeMap::new();
        for (task, text) in rates {
            let rate = task_rate::decode(&text).ok_or_else(|| {
                Error::Corrupt(format!("rate limit of `{task}`: `{text}` is not COUNT/MS"))
            })?;
            policies.entry(task).or_default().rate_limit = Some(rate);
        }
        for (task, text) in times {
            let ms = text.parse().map_err(|_| {
                Error::Corrupt(format!(
                    "time limit of `{task}`: `{text}` is not milliseconds"
                ))
            })?;
            policies.entry(task).or_default().time_limit_ms = Some(ms);
        }
        Ok(policies)
    }
}

fn parse_component(name: &str, json: &[u8]) -> Result<ComponentRecord, Error> {
    serde_json::from_slice(json)
        .map_err(|error| Error::Corrupt(format!("registry record of `{name}`: {error}")))
}

#[cfg(test)]
mod tests;
