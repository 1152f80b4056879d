//! [`Tenancy`] over Redis: the global tenant and token hashes (`wtq:tenants`, `wtq:tokens`,
//! the only keys outside a namespace), and the per-namespace `quota`, `rate:<bucket>`, `usage`
//! and `events` that the scripts maintain. The concurrency cap is enforced by `reserve.lua`,
//! metering by `settle.lua`, events by every script that changes a state (see `prelude.lua`).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::keys::{Keys, TENANTS, TOKENS};
use super::{Inner, RedisBroker};
use crate::broker::Error;
use crate::broker::Tenancy;
use crate::broker::tenancy::{gcra_cost, gcra_params, invalid_namespace};
use crate::tenancy::{Rate, RateDecision, TaskEvent, Tenant, TokenRecord, Usage, namespace_of};

/// Events an `events()` receiver holds before further ones are dropped (with a warning): a
/// watcher (an SSE stream) drains it continuously; one that stalls loses events rather than
/// growing without bound.
const EVENTS_BUFFER: usize = 4096;

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

    async fn events(&self) -> Result<mpsc::Receiver<TaskEvent>, Error> {
        let keys = self.keys();
        self.inner
            .shared
            .listener
            .events(keys.events_channel(), keys.events_watched(), EVENTS_BUFFER)
            .await
            .map_err(|error| self.failed(error))
    }
}

/// Decodes a registry entry; `what` names it for the error.
fn parse<T: serde::de::DeserializeOwned>(
    json: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, Error> {
    serde_json::from_slice(json).map_err(|error| Error::Corrupt(format!("{}: {error}", what())))
}
