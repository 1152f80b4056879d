//! Per-task rate limits held by the broker for every worker (Celery's are per worker): the
//! slot arithmetic of the reserve step, which `redis/scripts/reserve.lua` mirrors line by line
//! and the memory broker calls. Where the limits are stored is each broker's business; what a
//! limit means is here.
//!
//! GCRA by virtual scheduling, with slots booked ahead: a limited task has one bucket, its
//! next free slot (TAT, Unix µs). A reserve that pops one of its messages takes the slot
//! `max(TAT, now)` and moves the TAT one interval (`per / count`) on. A slot that is now is
//! leased at once; a slot within the booking horizon is *booked*: the message waits in its
//! queue's delayed set until the slot, carrying it (`rate_slot`), and its delivery then takes
//! no other. A message whose slot would be further ahead takes none: it is *deferred* to the
//! delayed set until about when a slot could be booked for it, and is looked at again then.
//! Booking makes the rate exact however many workers reserve; deferring keeps a backlog of one
//! limited task out of the ready set, so other tasks of the same queue are not held back.
//!
//! Deferred messages line up behind the task's *defer cursor* (Unix µs, kept across calls and
//! workers): each is due at `max(cursor, slot - horizon)` and moves the cursor one interval
//! past that. A backlog of N is so spread over about N intervals, in the order it was popped,
//! and each message is looked at about twice: once to defer it, once near its slot. (One
//! deferred again, because its slot went to another message, a retry say, or because workers
//! were away, lines up behind the cursor again.) The broker indexes the deferred messages per
//! task, so a changed limit does not leave them waiting on the old pace.
//!
//! Burst: none beyond one. After an idle spell the first message runs at once and the next one
//! interval later, as Celery's rate limits do. A changed limit (or a removed one) starts from a
//! fresh bucket and cursor, and the task's deferred messages go back to their places in the
//! ready set; slots already booked (at most one horizon's worth) are kept. A booked message
//! that is revoked, purged or expires simply leaves its slot unused.

use crate::tenancy::Rate;

/// Shortest booking horizon: slots up to this far ahead are booked (longer for rates slower
/// than one a second: one interval). Far enough that a booked message is on time, short
/// enough that a changed limit or a new higher-priority message waits at most this long.
pub(crate) const HORIZON_MIN_US: u64 = 1_000_000;
/// Most deferred messages one `set_rate_limit` step moves back to the ready set: a larger
/// backlog takes several steps (Redis: script calls), each bounded.
pub(crate) const UNDEFER_CHUNK: usize = 10_000;
/// How far past its promoter's clock a booked slot may be and still be leased: a worker whose
/// clock is a little behind the booker's may promote and pop it.
pub(crate) const SLOT_TOLERANCE_US: u64 = 100_000;
/// Messages one reserve may examine beyond the `max` it leases while rate limits exist: a
/// queue full of limited messages costs one batch per call, not the whole queue.
pub(crate) const EXAMINE_EXTRA: usize = 100;
/// Longest period accepted, as for the tenants' rates (ten years; keeps the µs sums exact).
const MAX_PERIOD_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// A rate as stored (`task-rates` in Redis): `<count>/<per_ms>`, e.g. `10/1000`.
pub(crate) fn encode(rate: Rate) -> String {
    format!("{}/{}", rate.count, rate.per_ms)
}

/// A stored rate; `None` for text [`encode`] does not write.
pub(crate) fn decode(text: &str) -> Option<Rate> {
    let (count, per_ms) = text.split_once('/')?;
    let rate = Rate {
        count: count.parse().ok()?,
        per_ms: per_ms.parse().ok()?,
    };
    (rate.count > 0 && rate.per_ms > 0 && rate.per_ms <= MAX_PERIOD_MS).then_some(rate)
}

/// A rate's slot interval and booking horizon (µs). The interval is rounded to the nearest µs
/// (`10/s`: 100,000; `7/s`: 142,857), as the script rounds it.
pub(crate) fn params(rate: Rate) -> (u64, u64) {
    let count = u64::from(rate.count.max(1));
    let period_us = rate.per_ms.clamp(1, MAX_PERIOD_MS) * 1000;
    let interval = ((period_us + count / 2) / count).max(1);
    (interval, interval.max(HORIZON_MIN_US))
}

/// What reserve does with a popped message of a rate-limited task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Its slot is now: lease it.
    Lease,
    /// Its slot is ahead, within the horizon: it waits in the delayed set until `slot_us`
    /// (due at the millisecond [`due_ms`] gives) and then runs without taking another slot.
    Book { slot_us: u64 },
    /// No slot for it yet: back to the delayed set until `due_ms`, taking nothing.
    Defer { due_ms: u64 },
}

/// A limited task's state: its bucket's next free slot (`tat_us`) and its defer cursor
/// (`cursor_us`, the earliest due time of its next deferred message), both Unix µs; 0 when
/// absent. Passed times are as good as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Bucket {
    pub(crate) tat_us: u64,
    pub(crate) cursor_us: u64,
}

/// One message's step, given its task's bucket. Returns the step and the bucket's new state.
pub(crate) fn step(bucket: Bucket, rate: Rate, now_ms: u64) -> (Step, Bucket) {
    let (interval, horizon) = params(rate);
    let now = now_ms.saturating_mul(1000);
    let slot = bucket.tat_us.max(now);
    let taken = Bucket {
        tat_us: slot + interval,
        ..bucket
    };
    if slot == now {
        return (Step::Lease, taken);
    }
    if slot - now <= horizon {
        return (Step::Book { slot_us: slot }, taken);
    }
    // When a slot could first be booked for it, behind the task's messages deferred before.
    let bookable = bucket.cursor_us.max(slot - horizon);
    let deferred = Bucket {
        cursor_us: bookable + interval,
        ..bucket
    };
    (
        Step::Defer {
            due_ms: due_ms(bookable),
        },
        deferred,
    )
}

/// The delayed-set due time of a slot: its millisecond, rounded up, so that a message promoted
/// when due finds its slot reached.
pub(crate) fn due_ms(slot_us: u64) -> u64 {
    slot_us.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const TEN_A_SECOND: Rate = Rate {
        count: 10,
        per_ms: 1000,
    };

    #[test]
    fn stored_rates_round_trip_and_nonsense_is_no_limit() {
        let check = |text: &str, expected: Option<(u32, u64)>| {
            let got = decode(text).map(|rate| (rate.count, rate.per_ms));
            assert_eq!(got, expected, "{text}");
            if let Some(rate) = decode(text) {
                assert_eq!(encode(rate), text);
            }
        };
        check("10/1000", Some((10, 1000)));
        check("1/3600000", Some((1, 3_600_000)));
        check("0/1000", None);
        check("10/0", None);
        check("10/s", None);
        check("", None);
    }

    #[test]
    fn intervals_and_horizons() {
        let check = |count: u32, per_ms: u64, expected: (u64, u64)| {
            assert_eq!(params(Rate { count, per_ms }), expected, "{count}/{per_ms}");
        };
        check(10, 1000, (100_000, 1_000_000));
        check(7, 1000, (142_857, 1_000_000));
        check(1, 60_000, (60_000_000, 60_000_000));
        check(1000, 1000, (1000, 1_000_000));
    }

    #[test]
    fn slots_are_one_interval_apart_booked_within_the_horizon_then_deferred() {
        // Idle bucket: the first runs now, the next ten are booked 100 ms apart (the tenth
        // exactly one second ahead), the ones after are deferred until their slots are
        // bookable, one interval apart, across calls.
        let (first, mut bucket) = step(Bucket::default(), TEN_A_SECOND, NOW);
        assert_eq!(first, Step::Lease);
        for n in 1..=10 {
            let (got, next) = step(bucket, TEN_A_SECOND, NOW);
            assert_eq!(
                got,
                Step::Book {
                    slot_us: (NOW + 100 * n) * 1000
                },
                "#{n}"
            );
            bucket = next;
        }
        assert_eq!(bucket.tat_us, (NOW + 1100) * 1000);
        for n in 1..=50 {
            let (got, next) = step(bucket, TEN_A_SECOND, NOW);
            assert_eq!(
                got,
                Step::Defer {
                    due_ms: NOW + 100 * n
                },
                "#{n}"
            );
            assert_eq!(
                next.tat_us, bucket.tat_us,
                "a deferred message takes no slot"
            );
            bucket = next;
        }
        // A later call continues behind them.
        assert_eq!(
            step(bucket, TEN_A_SECOND, NOW + 50).0,
            Step::Defer { due_ms: NOW + 5100 }
        );
        // A stale cursor does not hold one back: due when its slot is bookable.
        let stale = Bucket {
            tat_us: (NOW + 3000) * 1000,
            cursor_us: 5,
        };
        assert_eq!(
            step(stale, TEN_A_SECOND, NOW).0,
            Step::Defer { due_ms: NOW + 2000 }
        );
        // A slow task's backlog is spread one interval apart, however far ahead.
        let hourly = Rate {
            count: 1,
            per_ms: 3_600_000,
        };
        let busy = Bucket {
            tat_us: (NOW + 7_200_000) * 1000,
            cursor_us: 0,
        };
        let (got, next) = step(busy, hourly, NOW);
        assert_eq!(
            got,
            Step::Defer {
                due_ms: NOW + 3_600_000
            }
        );
        assert_eq!(
            step(next, hourly, NOW).0,
            Step::Defer {
                due_ms: NOW + 7_200_000
            }
        );
        // A past TAT is an idle bucket.
        let idle = Bucket {
            tat_us: 1,
            cursor_us: 0,
        };
        assert_eq!(step(idle, TEN_A_SECOND, NOW).0, Step::Lease);
    }

    #[test]
    fn due_times_round_up() {
        assert_eq!(due_ms(1_000_001), 1001);
        assert_eq!(due_ms(1_000_000), 1000);
    }
}
