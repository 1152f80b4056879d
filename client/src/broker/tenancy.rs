//! The storage side of the hosted service's tenancy: the tenant and token registry (global
//! keys, shared by every namespace), and the per-namespace quota machinery (the concurrency
//! cap that `reserve` enforces, rate buckets, usage counters, the event log).
//!
//! Global keys (the only keys outside a namespace; the service's key-scan test allow-lists
//! exactly these): `wtq:tenants` (hash: name → `Tenant` JSON) and `wtq:tokens` (hash: SHA-256
//! hex of a token → `TokenRecord` JSON). A token's plaintext is never stored.
//!
//! Also here, shared by both brokers so they agree to the microsecond: the rate limiter's
//! arithmetic ([`gcra`], mirrored line by line by `redis/scripts/rate.lua`), what a settlement
//! adds to the usage counters ([`Metered`]), and the [`Tenancy`] dispatch of [`AnyBroker`].

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Error, Settlement};
use crate::connect::AnyBroker;
use crate::tenancy::{Event, Rate, RateDecision, Tenant, TokenRecord, Usage};

/// Tenants, tokens and quotas. Implemented by every broker.
pub trait Tenancy: Send + Sync + 'static {
    /// The same broker over the keys of `namespace`, sharing its connections (cheap; a
    /// worker or service holds one per tenant). `namespace` must be valid (see
    /// [`crate::tenancy::namespace_of`]).
    fn namespaced(&self, namespace: &str) -> Result<Self, Error>
    where
        Self: Sized;

    /// Creates or replaces a tenant, and sets the concurrency cap that `reserve` enforces in
    /// its namespace (`Quotas::concurrency`; none: uncapped).
    fn put_tenant(&self, tenant: &Tenant) -> impl Future<Output = Result<(), Error>> + Send;

    fn tenant(&self, name: &str) -> impl Future<Output = Result<Option<Tenant>, Error>> + Send;

    /// Every tenant, sorted by name.
    fn tenants(&self) -> impl Future<Output = Result<Vec<Tenant>, Error>> + Send;

    /// Stores a token's record under the hash of the token.
    fn put_token(
        &self,
        hash: &str,
        record: &TokenRecord,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The record of the token with this hash, if it exists (not revoked).
    fn token(&self, hash: &str) -> impl Future<Output = Result<Option<TokenRecord>, Error>> + Send;

    /// Every token record, sorted by id.
    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>, Error>> + Send;

    /// Deletes the token with this id; false if there was none.
    fn revoke_token(&self, id: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Takes `n` units from this namespace's bucket `bucket` under `rate` (GCRA: at most
    /// `rate.count` in any window of `rate.per_ms`), atomically across every process. Nothing
    /// is taken when the answer is `Limited`. `n` must not exceed `rate.count`.
    fn take_rate(
        &self,
        bucket: &str,
        rate: Rate,
        n: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<RateDecision, Error>> + Send;

    /// This namespace's usage counters, which `settle` increments in the same atomic step
    /// that commits an attempt: a finish counts a task and an attempt (with its fuel, CPU time
    /// and memory × time), a retry an attempt, a dead-letter settlement a task. A stale
    /// settlement counts nothing; tasks revoked, purged or expired before they ran, and leases
    /// the reaper dead-letters, are not metered (no attempt of theirs reported anything).
    fn usage(&self) -> impl Future<Output = Result<Usage, Error>> + Send;

    /// Turns this namespace's event log on for `ttl` (extended by calling again): while on,
    /// every state change a record takes is appended, in the same atomic step
    /// (`task-sent` at enqueue, release, reap and dead-letter retry; `task-received` at
    /// reserve; `task-started` and `task-progress` marks; the settlement's
    /// `task-succeeded`/`task-failed`/`task-retried` with the attempt's figures;
    /// `task-revoked` at revoke, purge and expiry; `task-failed` at dead-lettering), as are
    /// workers' [`Tenancy::record_event`]s. Off, none is written: the log costs the hot path
    /// one read per call. The log keeps the last `cap` events (Redis: about `cap`).
    fn enable_events(
        &self,
        cap: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Appends a worker's event (online, heartbeat, offline) to the log, if it is on.
    fn record_event(&self, event: &Event) -> impl Future<Output = Result<(), Error>> + Send;

    /// The log's events after `after` (a cursor of an earlier event, or
    /// [`crate::tenancy::EVENTS_FROM_START`]; `None`: from now on), then each new one as it is
    /// written, until the receiver is dropped. Keeps the log on while the receiver lives (at
    /// its current cap, [`crate::tenancy::EVENT_LOG_CAP`] if it was off). Events arrive in log order, which is
    /// each task's order. A receiver that stalls for long may find its cursor trimmed away:
    /// it then continues at the oldest event kept.
    fn events(
        &self,
        after: Option<String>,
    ) -> impl Future<Output = Result<mpsc::Receiver<Event>, Error>> + Send;
}

/// Events an `events()` receiver holds before its reader waits: the reader then reads no
/// further from the log until the consumer catches up (nothing is dropped).
pub(crate) const EVENTS_BUFFER: usize = 1024;

/// The error of a namespace that cannot name keys (see `redis::keys::valid_namespace`).
// `Error` has no variant of its own for this yet; the namespace is the "address" that is
// unusable, as it is when it comes with a broker URL.
pub(crate) fn invalid_namespace(namespace: &str) -> Error {
    Error::Url {
        url: format!("namespace `{namespace}`"),
        reason: "use 1 to 64 ASCII letters, digits, `_` or `-`".to_string(),
    }
}

/// Longest period a rate may have; longer ones count as this. Keeps every GCRA time (Unix
/// µs) below 2^53, where the Lua script's doubles are still exact integers.
const MAX_RATE_PERIOD_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// A rate as GCRA's emission interval (µs between two units at the sustained rate, at least 1)
/// and window (µs of burst: `count` intervals). The interval is rounded to a whole µs, so the
/// sustained rate is off by at most half a µs per unit; a burst of exactly `count` is always
/// allowed.
pub(crate) fn gcra_params(rate: Rate) -> (u64, u64) {
    let count = u64::from(rate.count.max(1));
    let period_us = rate.per_ms.clamp(1, MAX_RATE_PERIOD_MS) * 1000;
    let interval = ((period_us + count / 2) / count).max(1);
    (interval, interval.saturating_mul(count))
}

/// GCRA's cost of `n` units: `n` intervals, capped so that the script's sum stays exact (a
/// cost above the window is refused either way).
pub(crate) fn gcra_cost(rate: Rate, n: u32) -> u64 {
    let (interval, window) = gcra_params(rate);
    interval
        .saturating_mul(u64::from(n))
        .min(window.saturating_add(1))
}

/// One step of a rate bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GcraStep {
    /// Taken: store `tat_us` as the bucket's theoretical arrival time; it is idle (as good as
    /// absent) after `ttl_ms`.
    Allowed { tat_us: u64, ttl_ms: u64 },
    /// Nothing taken; `n` units fit after this long.
    Limited { retry_after_ms: u64 },
}

/// The generic cell rate algorithm: a bucket is one number, its theoretical arrival time
/// (TAT). Taking `n` units moves it `n` intervals on from `max(TAT, now)`; allowed when that
/// is at most one window ahead of now. `rate.lua` computes exactly this.
pub(crate) fn gcra(stored_tat_us: Option<u64>, rate: Rate, n: u32, now_ms: u64) -> GcraStep {
    let (_, window) = gcra_params(rate);
    let now = now_ms.saturating_mul(1000);
    let tat = stored_tat_us.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(gcra_cost(rate, n));
    let ahead = new_tat - now;
    if ahead > window {
        GcraStep::Limited {
            retry_after_ms: (ahead - window).div_ceil(1000).max(1),
        }
    } else {
        GcraStep::Allowed {
            tat_us: new_tat,
            ttl_ms: ahead.div_ceil(1000).max(1),
        }
    }
}

/// Most a single settlement adds to one counter. The Redis script sums a batch (up to 1000
/// settlements) in Lua doubles, exact below 2^53; no real attempt comes near this (2^43 fuel
/// is hours of compute).
const MAX_METERED: u64 = 1 << 43;

/// What one committed settlement adds to its namespace's [`Usage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Metered {
    pub tasks: u64,
    pub attempts: u64,
    pub fuel: u64,
    pub cpu_us: u64,
    pub memory_kib_ms: u64,
}

impl Metered {
    /// A finish is a final task and an attempt that ran; a retry an attempt; a dead-letter
    /// settlement a final task whose attempt never ran; a release nothing.
    pub(crate) fn of(settlement: &Settlement) -> Metered {
        let ran = |attempt: &crate::message::Attempt, tasks: u64| {
            // `as` from f64 saturates (and maps NaN to 0): a nonsense report meters 0 or the
            // cap, never wraps.
            let memory_kib_ms = attempt.peak_memory.unwrap_or(0) as f64 / 1024.0
                * attempt.duration_ms.unwrap_or(0.0);
            Metered {
                tasks,
                attempts: 1,
                fuel: attempt.fuel.unwrap_or(0).min(MAX_METERED),
                cpu_us: ((attempt.cpu_ms.unwrap_or(0.0) * 1000.0).round() as u64).min(MAX_METERED),
                memory_kib_ms: (memory_kib_ms.round() as u64).min(MAX_METERED),
            }
        };
        match settlement {
            Settlement::Finish(attempt) => ran(attempt, 1),
            Settlement::Retry { attempt, .. } => ran(attempt, 0),
            Settlement::DeadLetter(_) => Metered {
                tasks: 1,
                ..Metered::default()
            },
            Settlement::Release => Metered::default(),
        }
    }
}

/// Dispatches like `Broker for AnyBroker` (in `connect.rs`).
macro_rules! dispatch {
    ($self:ident, $broker:ident => $call:expr) => {
        async move {
            match $self {
                AnyBroker::Redis($broker) => $call.await,
                AnyBroker::Memory($broker) => $call.await,
            }
        }
    };
}

// Written as `fn … -> impl Future + Send` with `async move` bodies, as the trait declares, so
// the compiler checks each delegated future is `Send`.
#[allow(clippy::manual_async_fn)]
impl Tenancy for AnyBroker {
    fn namespaced(&self, namespace: &str) -> Result<AnyBroker, Error> {
        Ok(match self {
            AnyBroker::Redis(broker) => AnyBroker::Redis(broker.namespaced(namespace)?),
            AnyBroker::Memory(broker) => AnyBroker::Memory(broker.namespaced(namespace)?),
        })
    }

    fn put_tenant(&self, tenant: &Tenant) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, broker => broker.put_tenant(tenant))
    }

    fn tenant(&self, name: &str) -> impl Future<Output = Result<Option<Tenant>, Error>> + Send {
        dispatch!(self, broker => broker.tenant(name))
    }

    fn tenants(&self) -> impl Future<Output = Result<Vec<Tenant>, Error>> + Send {
        dispatch!(self, broker => broker.tenants())
    }

    fn put_token(
        &self,
        hash: &str,
        record: &TokenRecord,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, broker => broker.put_token(hash, record))
    }

    fn token(&self, hash: &str) -> impl Future<Output = Result<Option<TokenRecord>, Error>> + Send {
        dispatch!(self, broker => broker.token(hash))
    }

    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>, Error>> + Send {
        dispatch!(self, broker => broker.tokens())
    }

    fn revoke_token(&self, id: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        dispatch!(self, broker => broker.revoke_token(id))
    }

    fn take_rate(
        &self,
        bucket: &str,
        rate: Rate,
        n: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<RateDecision, Error>> + Send {
        dispatch!(self, broker => broker.take_rate(bucket, rate, n, now_ms))
    }

    fn usage(&self) -> impl Future<Output = Result<Usage, Error>> + Send {
        dispatch!(self, broker => broker.usage())
    }

    fn enable_events(
        &self,
        cap: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, broker => broker.enable_events(cap, ttl))
    }

    fn record_event(&self, event: &Event) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, broker => broker.record_event(event))
    }

    fn events(
        &self,
        after: Option<String>,
    ) -> impl Future<Output = Result<mpsc::Receiver<Event>, Error>> + Send {
        dispatch!(self, broker => broker.events(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Attempt, State};

    const NOW: u64 = 1_700_000_000_000;

    fn per_second(count: u32) -> Rate {
        Rate {
            count,
            per_ms: 1000,
        }
    }

    /// Takes `n` at `now_ms` from a bucket kept in `tat`, as a broker does.
    fn take(tat: &mut Option<u64>, rate: Rate, n: u32, now_ms: u64) -> GcraStep {
        let step = gcra(*tat, rate, n, now_ms);
        if let GcraStep::Allowed { tat_us, .. } = step {
            *tat = Some(tat_us);
        }
        step
    }

    #[test]
    fn a_full_burst_then_one_per_interval() {
        for count in [1, 3, 7, 10, 1000] {
            let rate = per_second(count);
            let mut tat = None;
            for i in 0..count {
                let step = take(&mut tat, rate, 1, NOW);
                assert!(matches!(step, GcraStep::Allowed { .. }), "{count}: #{i}");
            }
            let (interval, _) = gcra_params(rate);
            let expected = interval.div_ceil(1000).max(1);
            assert_eq!(
                take(&mut tat, rate, 1, NOW),
                GcraStep::Limited {
                    retry_after_ms: expected
                },
                "{count}/s"
            );
            let later = NOW + expected;
            assert!(matches!(
                take(&mut tat, rate, 1, later),
                GcraStep::Allowed { .. }
            ));
        }
    }

    #[test]
    fn a_refusal_takes_nothing_and_n_counts_n() {
        let rate = per_second(10);
        let mut tat = None;
        assert!(matches!(
            take(&mut tat, rate, 8, NOW),
            GcraStep::Allowed { .. }
        ));
        let before = tat;
        assert_eq!(
            take(&mut tat, rate, 3, NOW),
            GcraStep::Limited {
                retry_after_ms: 100
            }
        );
        assert_eq!(tat, before, "a refusal takes nothing");
        assert!(matches!(
            take(&mut tat, rate, 2, NOW),
            GcraStep::Allowed { .. }
        ));
        // Idle buckets refill to a full burst, and no further.
        let idle = NOW + 60_000;
        assert!(matches!(
            take(&mut tat, rate, 10, idle),
            GcraStep::Allowed { .. }
        ));
        assert!(matches!(
            take(&mut tat, rate, 1, idle),
            GcraStep::Limited { .. }
        ));
    }

    #[test]
    fn the_bucket_expires_when_it_is_full_again() {
        let step = gcra(None, per_second(4), 2, NOW);
        assert_eq!(
            step,
            GcraStep::Allowed {
                tat_us: NOW * 1000 + 500_000,
                ttl_ms: 500
            }
        );
    }

    #[test]
    fn extreme_rates_stay_exact() {
        let check = |rate: Rate, interval: u64, window: u64| {
            assert_eq!(gcra_params(rate), (interval, window), "{rate}");
            assert!(NOW * 1000 + 2 * window < 1 << 53);
        };
        check(per_second(3), 333_333, 999_999);
        check(per_second(u32::MAX), 1, u64::from(u32::MAX));
        check(
            Rate {
                count: 0,
                per_ms: u64::MAX,
            },
            MAX_RATE_PERIOD_MS * 1000,
            MAX_RATE_PERIOD_MS * 1000,
        );
    }

    fn attempt(state: State) -> Attempt {
        Attempt {
            attempt: 1,
            worker: "w".to_string(),
            digest: None,
            received_ms: NOW,
            started_ms: Some(NOW),
            finished_ms: NOW,
            state,
            output: None,
            error: None,
            duration_ms: Some(250.0),
            cpu_ms: Some(1.5),
            fuel: Some(7),
            peak_memory: Some(2 << 20),
            log: String::new(),
        }
    }

    #[test]
    fn settlements_are_metered() {
        let check = |settlement: Settlement, expected: Metered| {
            assert_eq!(Metered::of(&settlement), expected, "{settlement:?}");
        };
        let ran = Metered {
            tasks: 1,
            attempts: 1,
            fuel: 7,
            cpu_us: 1500,
            memory_kib_ms: 2048 * 250,
        };
        check(Settlement::Finish(attempt(State::Success)), ran);
        check(
            Settlement::Retry {
                attempt: attempt(State::Retry),
                eta_ms: NOW,
            },
            Metered { tasks: 0, ..ran },
        );
        check(
            Settlement::DeadLetter(crate::message::TaskFailure {
                kind: "x".into(),
                message: "y".into(),
            }),
            Metered {
                tasks: 1,
                ..Metered::default()
            },
        );
        check(Settlement::Release, Metered::default());
        let absurd = Attempt {
            fuel: Some(u64::MAX),
            cpu_ms: Some(f64::NAN),
            duration_ms: Some(-1.0),
            ..attempt(State::Success)
        };
        check(
            Settlement::Finish(absurd),
            Metered {
                tasks: 1,
                attempts: 1,
                fuel: MAX_METERED,
                cpu_us: 0,
                memory_kib_ms: 0,
            },
        );
    }
}
