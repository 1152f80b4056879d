//! [`Tenancy`] over Redis: the global tenant and token hashes (`wtq:tenants`, `wtq:tokens`,
//! the only keys outside a namespace), and the per-namespace `quota`, `rate:<bucket>`, `usage`
//! and `events` that the scripts maintain. The concurrency cap is enforced by `reserve.lua`,
//! metering by `settle.lua`, the event log by every script that changes a state (see `event()`
//! in `prelude.lua`) while `events-on` exists.
//!
//! The log is read by one task per [`Tenancy::events`] receiver, blocking in XREAD on a
//! connection of its own (a blocked read on the shared command connection would hold up every
//! command behind it), and keeping `events-on` alive while its receiver lives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, Value};
use tokio::sync::mpsc;

use super::keys::{Keys, TENANTS, TOKENS};
use super::{Inner, RedisBroker};
use crate::broker::Error;
use crate::broker::Tenancy;
use crate::broker::tenancy::{EVENTS_BUFFER, gcra_cost, gcra_params, invalid_namespace};
use crate::message::{Progress, State, TaskFailure};
use crate::tenancy::{
    EVENT_LOG_CAP, EVENTS_ON_TTL, EVENTS_REFRESH, Event, Rate, RateDecision, Tenant, TokenRecord,
    Usage, namespace_of,
};

/// How long one XREAD blocks: the reader then checks its receiver is still wanted and keeps
/// the log on. Its connection's response timeout is this plus [`EVENTS_READ_MARGIN`].
const EVENTS_BLOCK: Duration = Duration::from_secs(5);
const EVENTS_READ_MARGIN: Duration = Duration::from_secs(5);
/// Most entries one XREAD returns.
const EVENTS_READ_COUNT: usize = 500;
/// Wait before a reader reconnects after its connection failed.
const EVENTS_RETRY: Duration = Duration::from_secs(1);

/// Field of the `quota` hash that `reserve.lua` reads.
const CONCURRENCY_FIELD: &str = "concurrency";

/// The usage hash's fields, in [`Usage`]'s order (`settle.lua` spells them too).
const USAGE_FIELDS: [&str; 5] = ["tasks", "attempts", "fuel", "cpu_us", "memory_kib_ms"];

impl Tenancy for RedisBroker {
    fn namespaced(&self, namespace: &str) -> Result<RedisBroker, Error> {
        let keys = Keys::new(namespace).map_err(|_| invalid_namespace(namespace))?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                keys,
                shared: Arc::clone(&self.inner.shared),
            }),
        })
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        let namespace = namespace_of(&tenant.name);
        let keys = Keys::new(&namespace).map_err(|_| invalid_namespace(&namespace))?;
        // Two slots (the registry's and the tenant's namespace), so no one script can write
        // both; a pipeline sends them together. The cap goes first: a reader that sees the
        // new tenant also sees its cap in force.
        let mut pipe = redis::pipe();
        match tenant.quotas.concurrency {
            Some(cap) => pipe.hset(keys.quota(), CONCURRENCY_FIELD, cap),
            None => pipe.hdel(keys.quota(), CONCURRENCY_FIELD),
        };
        pipe.hset(TENANTS, &tenant.name, super::json(tenant));
        let _: (i64, i64) = pipe
            .query_async(&mut self.inner.shared.commands.clone())
            .await
            .map_err(|error| self.failed(error))?;
        Ok(())
    }

    async fn tenant(&self, name: &str) -> Result<Option<Tenant>, Error> {
        let json: Option<Vec<u8>> = self
            .query(redis::cmd("HGET").arg(TENANTS).arg(name))
            .await?;
        json.map(|json| parse(&json, || format!("tenant `{name}`")))
            .transpose()
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, Error> {
        let all: Vec<(String, Vec<u8>)> = self.query(redis::cmd("HGETALL").arg(TENANTS)).await?;
        let mut tenants = all
            .iter()
            .map(|(name, json)| parse::<Tenant>(json, || format!("tenant `{name}`")))
            .collect::<Result<Vec<_>, _>>()?;
        tenants.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tenants)
    }

    async fn put_token(&self, hash: &str, record: &TokenRecord) -> Result<(), Error> {
        self.query(
            redis::cmd("HSET")
                .arg(TOKENS)
                .arg(hash)
                .arg(super::json(record)),
        )
        .await
    }

    async fn token(&self, hash: &str) -> Result<Option<TokenRecord>, Error> {
        let json: Option<Vec<u8>> = self.query(redis::cmd("HGET").arg(TOKENS).arg(hash)).await?;
        // The hash is a secret's digest: an error names the token by nothing of it.
        json.map(|json| parse(&json, || "a token record".to_string()))
            .transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        let all: Vec<(String, Vec<u8>)> = self.query(redis::cmd("HGETALL").arg(TOKENS)).await?;
        let mut tokens = all
            .iter()
            .map(|(_, json)| parse::<TokenRecord>(json, || "a token record".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        tokens.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(tokens)
    }

    async fn revoke_token(&self, id: &str) -> Result<bool, Error> {
        // Tokens are looked up by hash on every request, so that is the key; revoking (rare,
        // by an admin) scans. Ids are unique, so deleting whatever matched is exact even if
        // the hash changed in between.
        let all: Vec<(String, Vec<u8>)> = self.query(redis::cmd("HGETALL").arg(TOKENS)).await?;
        let hashes: Vec<&String> = all
            .iter()
            .filter(|(_, json)| {
                // One unreadable record must not keep an admin from revoking another token.
                match serde_json::from_slice::<TokenRecord>(json) {
                    Ok(record) => record.id == id,
                    Err(error) => {
                        tracing::warn!(%error, "skipping an unreadable token record");
                        false
                    }
                }
            })
            .map(|(hash, _)| hash)
            .collect();
        if hashes.is_empty() {
            return Ok(false);
        }
        let deleted: usize = self
            .query(redis::cmd("HDEL").arg(TOKENS).arg(hashes))
            .await?;
        Ok(deleted > 0)
    }

    async fn take_rate(
        &self,
        bucket: &str,
        rate: Rate,
        n: u32,
        now_ms: u64,
    ) -> Result<RateDecision, Error> {
        let (_, window) = gcra_params(rate);
        let mut call = self.scripts().rate.key(self.keys().rate(bucket));
        call.arg(now_ms.saturating_mul(1000))
            .arg(window)
            .arg(gcra_cost(rate, n));
        let (taken, wait_us): (i64, u64) = self.run(&call).await?;
        Ok(if taken == 1 {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after_ms: wait_us.div_ceil(1000).max(1),
            }
        })
    }

    async fn usage(&self) -> Result<Usage, Error> {
        let values: Vec<Option<String>> = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.keys().usage())
                    .arg(&USAGE_FIELDS[..]),
            )
            .await?;
        let mut counters = [0u64; USAGE_FIELDS.len()];
        for ((counter, value), field) in counters.iter_mut().zip(values).zip(USAGE_FIELDS) {
            if let Some(value) = value {
                *counter = value.parse().map_err(|_| {
                    Error::Corrupt(format!(
                        "usage counter `{field}` of {} is `{value}`",
                        self.keys().usage()
                    ))
                })?;
            }
        }
        let [tasks, attempts, fuel, cpu_us, memory_kib_ms] = counters;
        Ok(Usage {
            tasks,
            attempts,
            fuel,
            cpu_us,
            memory_kib_ms,
        })
    }

    async fn enable_events(&self, cap: u64, ttl: Duration) -> Result<(), Error> {
        self.query(
            redis::cmd("SET")
                .arg(self.keys().events_on())
                .arg(cap.max(1))
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64),
        )
        .await
    }

    async fn record_event(&self, event: &Event) -> Result<(), Error> {
        let keys = self.keys();
        let cap: Option<u64> = self.query(redis::cmd("GET").arg(keys.events_on())).await?;
        let Some(cap) = cap else {
            return Ok(());
        };
        let mut command = redis::cmd("XADD");
        command
            .arg(keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(cap)
            .arg("*")
            .arg("type")
            .arg(&event.kind)
            .arg("at_ms")
            .arg(event.at_ms);
        if let Some(worker) = &event.worker {
            command.arg("worker").arg(worker);
        }
        let _: String = self.query(&command).await?;
        Ok(())
    }

    async fn events(&self, after: Option<String>) -> Result<mpsc::Receiver<Event>, Error> {
        let keys = self.keys();
        keep_on(&mut self.inner.shared.commands.clone(), &keys.events_on())
            .await
            .map_err(|error| self.failed(error))?;
        // "From now" is the newest entry now, not XREAD's `$`: events written between this
        // call and the reader's first read are not lost.
        let cursor = match after {
            Some(cursor) => cursor,
            None => {
                let newest: Vec<(String, Value)> = self
                    .query(
                        redis::cmd("XREVRANGE")
                            .arg(keys.events())
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(1),
                    )
                    .await?;
                newest
                    .into_iter()
                    .next()
                    .map_or_else(|| "0-0".to_string(), |(id, _)| id)
            }
        };
        let connection = self.reader().await?;
        let (sender, receiver) = mpsc::channel(EVENTS_BUFFER);
        tokio::spawn(read_events(
            self.inner.shared.client.clone(),
            self.inner.shared.commands.clone(),
            connection,
            keys.events(),
            keys.events_on(),
            cursor,
            sender,
        ));
        Ok(receiver)
    }
}

impl RedisBroker {
    /// A connection of its own for a blocking reader.
    async fn reader(&self) -> Result<redis::aio::MultiplexedConnection, Error> {
        open_reader(&self.inner.shared.client)
            .await
            .map_err(|error| self.failed(error))
    }
}

async fn open_reader(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(EVENTS_READ_MARGIN))
        .set_response_timeout(Some(EVENTS_BLOCK + EVENTS_READ_MARGIN));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Turns the log on at the cap it has, or [`EVENT_LOG_CAP`] if it was off, for
/// [`EVENTS_ON_TTL`].
async fn keep_on(
    commands: &mut redis::aio::ConnectionManager,
    events_on: &str,
) -> redis::RedisResult<()> {
    let ttl = EVENTS_ON_TTL.as_millis() as u64;
    let _: (Value, Value) = redis::pipe()
        .cmd("SET")
        .arg(events_on)
        .arg(EVENT_LOG_CAP)
        .arg("NX")
        .arg("PX")
        .arg(ttl)
        .cmd("PEXPIRE")
        .arg(events_on)
        .arg(ttl)
        .query_async(commands)
        .await?;
    Ok(())
}

/// One `events()` receiver's reader: XREAD BLOCK after `cursor`, forwarding every entry, until
/// the receiver is dropped. Keeps the log on every [`EVENTS_REFRESH`]; reconnects after
/// failures (a Redis restart) and carries on from the last entry forwarded.
async fn read_events(
    client: redis::Client,
    mut commands: redis::aio::ConnectionManager,
    mut connection: redis::aio::MultiplexedConnection,
    stream: String,
    events_on: String,
    mut cursor: String,
    sender: mpsc::Sender<Event>,
) {
    let mut refreshed = Instant::now();
    let mut healthy = true;
    while !sender.is_closed() {
        if refreshed.elapsed() >= EVENTS_REFRESH {
            if let Err(error) = keep_on(&mut commands, &events_on).await {
                tracing::warn!(%error, key = events_on, "cannot keep the event log on");
            }
            refreshed = Instant::now();
        }
        if !healthy {
            tokio::time::sleep(EVENTS_RETRY).await;
            match open_reader(&client).await {
                Ok(fresh) => {
                    connection = fresh;
                    healthy = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot reconnect the event log reader");
                    continue;
                }
            }
        }
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(EVENTS_READ_COUNT)
            .arg("BLOCK")
            .arg(EVENTS_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&cursor)
            .query_async(&mut connection)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(%error, "reading the event log failed; reconnecting");
                healthy = false;
                continue;
            }
        };
        for (id, fields) in stream_entries(reply) {
            cursor.clone_from(&id);
            let Some(event) = decode_event(id, fields) else {
                tracing::warn!(cursor, "ignoring an unreadable event");
                continue;
            };
            if sender.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// The entries of an XREAD reply (RESP2 arrays or RESP3 maps; nil when the block timed out).
fn stream_entries(reply: Value) -> Vec<(String, Vec<(String, String)>)> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop().expect("two parts");
            let id = parts.pop().expect("two parts");
            let (Ok(id), Ok(fields)) = (
                redis::from_redis_value::<String>(id),
                redis::from_redis_value::<Vec<String>>(fields),
            ) else {
                continue;
            };
            let pairs = fields
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            out.push((id, pairs));
        }
    }
    out
}

/// The figures `prelude.lua` copies from an ended attempt.
#[derive(serde::Deserialize)]
struct Figures {
    attempt: Option<u32>,
    duration_ms: Option<f64>,
    fuel: Option<u64>,
    peak_memory: Option<u64>,
    worker: Option<String>,
    digest: Option<String>,
}

/// An entry of the log as an [`Event`]; `None` without a type and a time.
fn decode_event(cursor: String, fields: Vec<(String, String)>) -> Option<Event> {
    let mut kind = None;
    let mut at_ms = None;
    let mut event = Event::worker("", "", 0);
    event.worker = None;
    for (field, value) in fields {
        match field.as_str() {
            "type" => kind = Some(value),
            "at_ms" => at_ms = value.parse().ok(),
            "id" => event.id = Some(value),
            "state" => event.state = State::parse(&value),
            "task" => event.task = Some(value),
            "worker" => event.worker = Some(value),
            "error" => event.error = serde_json::from_str::<TaskFailure>(&value).ok(),
            "progress" => event.progress = serde_json::from_str::<Progress>(&value).ok(),
            "attempt" => {
                if let Ok(figures) = serde_json::from_str::<Figures>(&value) {
                    event.attempt = figures.attempt;
                    event.runtime_ms = figures.duration_ms;
                    event.fuel = figures.fuel;
                    event.peak_memory = figures.peak_memory;
                    event.digest = figures.digest;
                    if figures.worker.is_some() {
                        event.worker = figures.worker;
                    }
                }
            }
            _ => {}
        }
    }
    event.kind = kind?;
    event.at_ms = at_ms?;
    event.cursor = cursor;
    Some(event)
}

/// Decodes a registry entry; `what` names it for the error.
fn parse<T: serde::de::DeserializeOwned>(
    json: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, Error> {
    serde_json::from_slice(json).map_err(|error| Error::Corrupt(format!("{}: {error}", what())))
}
