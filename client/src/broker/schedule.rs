//! The storage side of `wtq beat`: run-time schedule entries, each entry's last handled tick,
//! and the beat lease that lets exactly one of several beat processes fire. Implemented by
//! every broker (Redis: `redis/schedule.rs`; memory: `memory_schedule.rs`) and dispatched by
//! [`AnyBroker`](crate::AnyBroker).
//!
//! The lease is a value `<token>:<holder>` that expires unless renewed; the token comes from a
//! counter, so each tenure has its own and a holder that lost the lease (stalled past its
//! expiry, taken over) can no longer write: [`Schedules::record_fired`] checks it. Firing is
//! idempotent on its own as well (an idempotency key per entry and tick), so even a stale
//! leader's enqueue, made before it noticed, is not a second task.

use std::collections::HashMap;
use std::future::Future;

use super::Error;
use crate::schedule::{Fired, ScheduleEntry};

/// Schedule entries, their state and the beat lease, in one namespace.
pub trait Schedules: Send + Sync + 'static {
    /// Creates or replaces the entry of that name. The caller has validated it.
    fn put_schedule(&self, entry: &ScheduleEntry)
    -> impl Future<Output = Result<(), Error>> + Send;

    /// Every stored entry, sorted by name.
    fn schedules(&self) -> impl Future<Output = Result<Vec<ScheduleEntry>, Error>> + Send;

    /// Deletes the entry and its state; false if there was none.
    fn remove_schedule(&self, name: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Every entry's last handled tick (stored entries and the beat's file entries alike), by
    /// entry name.
    fn fired(&self) -> impl Future<Output = Result<HashMap<String, Fired>, Error>> + Send;

    /// Takes the beat lease for `holder` if nobody holds it, or renews it when `held` is the
    /// token of `holder`'s current tenure; either way for `lease_ms` from now. Returns the
    /// tenure's token, or `None` while someone else (or an earlier tenure) holds it.
    fn lead(
        &self,
        holder: &str,
        held: Option<u64>,
        lease_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// Gives the lease up if this tenure still holds it (a clean shutdown: another beat takes
    /// over at once rather than after the lease time).
    fn resign(&self, holder: &str, token: u64) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stores `name`'s last handled tick, only while `holder`'s tenure `token` holds the lease
    /// (checked in the same atomic step). Returns false, writing nothing, when it does not.
    fn record_fired(
        &self,
        name: &str,
        fired: &Fired,
        holder: &str,
        token: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// The lease's value for a tenure (the same spelling in both brokers).
pub(crate) fn lease_value(holder: &str, token: u64) -> String {
    format!("{token}:{holder}")
}
