//! [`Schedules`] over Redis: the `schedules` and `schedule-fired` hashes and the beat lease
//! (`beat-leader`, `beat-fence`) of the namespace. The lease's take/renew, release and the
//! fenced state write are one script each (`scripts/beat_*.lua`); the rest are plain commands.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;

use super::RedisBroker;
use crate::broker::Error;
use crate::broker::schedule::{Schedules, lease_value};
use crate::schedule::{Fired, ScheduleEntry};

/// The beat scripts, hashed once (constants: the script text never changes at run time).
static LEAD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/beat_lead.lua")));
static RESIGN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/beat_resign.lua")));
static FIRED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/beat_fired.lua")));

impl Schedules for RedisBroker {
    async fn put_schedule(&self, entry: &ScheduleEntry) -> Result<(), Error> {
        let _: i64 = self
            .query(
                redis::cmd("HSET")
                    .arg(self.keys().schedules())
                    .arg(&entry.name)
                    .arg(super::json(entry)),
            )
            .await?;
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleEntry>, Error> {
        let all: Vec<(String, Vec<u8>)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().schedules()))
            .await?;
        let mut entries = all
            .iter()
            .map(|(name, json)| {
                serde_json::from_slice::<ScheduleEntry>(json)
                    .map_err(|error| Error::Corrupt(format!("schedule entry `{name}`: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, Error> {
        // One slot, one MULTI: the entry and its state go together.
        let (removed, _): (i64, i64) = redis::pipe()
            .atomic()
            .hdel(self.keys().schedules(), name)
            .hdel(self.keys().schedule_fired(), name)
            .query_async(&mut self.inner.shared.commands.clone())
            .await
            .map_err(|error| self.failed(error))?;
        Ok(removed > 0)
    }

    async fn fired(&self) -> Result<HashMap<String, Fired>, Error> {
        let all: Vec<(String, Vec<u8>)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().schedule_fired()))
            .await?;
        all.into_iter()
            .map(|(name, json)| {
                let fired = serde_json::from_slice::<Fired>(&json).map_err(|error| {
                    Error::Corrupt(format!("state of schedule entry `{name}`: {error}"))
                })?;
                Ok((name, fired))
            })
            .collect()
    }

    async fn lead(
        &self,
        holder: &str,
        held: Option<u64>,
        lease_ms: u64,
        _now_ms: u64,
    ) -> Result<Option<u64>, Error> {
        // Redis's own clock runs the expiry (PX), so every beat agrees on it.
        let mut call = LEAD.key(self.keys().beat_leader());
        call.key(self.keys().beat_fence())
            .arg(holder)
            .arg(lease_ms.max(1))
            .arg(held.map(|token| token.to_string()).unwrap_or_default());
        let token: u64 = self.run(&call).await?;
        Ok((token > 0).then_some(token))
    }

    async fn resign(&self, holder: &str, token: u64) -> Result<(), Error> {
        let mut call = RESIGN.key(self.keys().beat_leader());
        call.arg(lease_value(holder, token));
        let _: i64 = self.run(&call).await?;
        Ok(())
    }

    async fn record_fired(
        &self,
        name: &str,
        fired: &Fired,
        holder: &str,
        token: u64,
        _now_ms: u64,
    ) -> Result<bool, Error> {
        let mut call = FIRED.key(self.keys().beat_leader());
        call.key(self.keys().schedule_fired())
            .arg(lease_value(holder, token))
            .arg(name)
            .arg(super::json(fired));
        let written: i64 = self.run(&call).await?;
        Ok(written == 1)
    }
}
