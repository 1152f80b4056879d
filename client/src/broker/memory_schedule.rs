//! [`Schedules`] in memory: the same entries, states and lease as the Redis broker's, per
//! namespace, in the universe's schedule table. The lease's expiry runs on the times callers
//! pass in (as everything in the memory broker does).
//!
//! Declared from `memory.rs` (as its child, so it reaches the broker's universe and store);
//! kept in its own file so the memory broker's main file stays about tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use super::MemoryBroker;
use crate::broker::Error;
use crate::broker::schedule::{Schedules, lease_value};
use crate::schedule::{Fired, ScheduleEntry};

/// Every namespace's schedule state, keyed by the address of the namespace's store (stores
/// live as long as their universe, so an address names one namespace for that long).
pub(super) type Table = Mutex<HashMap<usize, Space>>;

/// One namespace's schedules: what Redis keeps in `schedules`, `schedule-fired`,
/// `beat-leader` and `beat-fence`.
#[derive(Debug, Default)]
pub(super) struct Space {
    entries: BTreeMap<String, ScheduleEntry>,
    fired: HashMap<String, Fired>,
    /// The lease value and when it expires (Unix ms).
    leader: Option<(String, u64)>,
    fence: u64,
}

impl MemoryBroker {
    /// Runs `f` on this namespace's schedule state, in one short synchronous section.
    fn schedule_space<T>(&self, f: impl FnOnce(&mut Space) -> T) -> T {
        let key = Arc::as_ptr(&self.store) as usize;
        // Poisoning is ignored for the reason given at `MemoryBroker::lock`.
        let mut table = self
            .universe
            .schedules
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(table.entry(key).or_default())
    }
}

impl Schedules for MemoryBroker {
    async fn put_schedule(&self, entry: &ScheduleEntry) -> Result<(), Error> {
        self.schedule_space(|space| space.entries.insert(entry.name.clone(), entry.clone()));
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleEntry>, Error> {
        Ok(self.schedule_space(|space| space.entries.values().cloned().collect()))
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, Error> {
        Ok(self.schedule_space(|space| {
            space.fired.remove(name);
            space.entries.remove(name).is_some()
        }))
    }

    async fn fired(&self) -> Result<HashMap<String, Fired>, Error> {
        Ok(self.schedule_space(|space| space.fired.clone()))
    }

    async fn lead(
        &self,
        holder: &str,
        held: Option<u64>,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<u64>, Error> {
        let expiry = now_ms.saturating_add(lease_ms.max(1));
        Ok(self.schedule_space(|space| {
            if let Some((value, until)) = &space.leader
                && *until > now_ms
            {
                return match held {
                    Some(token) if *value == lease_value(holder, token) => {
                        space.leader = Some((value.clone(), expiry));
                        Some(token)
                    }
                    _ => None,
                };
            }
            space.fence += 1;
            space.leader = Some((lease_value(holder, space.fence), expiry));
            Some(space.fence)
        }))
    }

    async fn resign(&self, holder: &str, token: u64) -> Result<(), Error> {
        self.schedule_space(|space| {
            if space
                .leader
                .as_ref()
                .is_some_and(|(value, _)| *value == lease_value(holder, token))
            {
                space.leader = None;
            }
        });
        Ok(())
    }

    async fn record_fired(
        &self,
        name: &str,
        fired: &Fired,
        holder: &str,
        token: u64,
        now_ms: u64,
    ) -> Result<bool, Error> {
        Ok(self.schedule_space(|space| {
            let holds = space.leader.as_ref().is_some_and(|(value, until)| {
                *until > now_ms && *value == lease_value(holder, token)
            });
            if holds {
                space.fired.insert(name.to_string(), fired.clone());
            }
            holds
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Tenancy;

    #[tokio::test]
    async fn one_holder_at_a_time_until_the_lease_expires() {
        let broker = MemoryBroker::new();
        let a = broker.lead("a", None, 1000, 0).await.expect("lead");
        assert_eq!(a, Some(1));
        assert_eq!(broker.lead("b", None, 1000, 500).await.expect("lead"), None);
        assert_eq!(broker.lead("a", a, 1000, 900).await.expect("renew"), a);
        let fired = Fired {
            tick_ms: 5,
            task: None,
        };
        assert!(
            broker
                .record_fired("x", &fired, "a", 1, 950)
                .await
                .expect("write")
        );
        // a stalls past its expiry: b takes over with a new token, a's writes are refused.
        let b = broker.lead("b", None, 1000, 1901).await.expect("lead");
        assert_eq!(b, Some(2));
        assert!(
            !broker
                .record_fired("x", &fired, "a", 1, 1902)
                .await
                .expect("fenced")
        );
        assert_eq!(broker.lead("a", a, 1000, 1903).await.expect("lead"), None);
        broker.resign("b", 2).await.expect("resign");
        assert_eq!(
            broker.lead("a", None, 1000, 1904).await.expect("lead"),
            Some(3)
        );
        // Namespaces are separate.
        let other = broker.namespaced("other").expect("namespace");
        assert!(other.fired().await.expect("fired").is_empty());
        assert_eq!(broker.fired().await.expect("fired")["x"], fired);
    }
}
