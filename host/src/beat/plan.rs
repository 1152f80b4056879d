//! When an entry fires: a schedule entry compiled into a [`Plan`] (cron expression parsed, time
//! zone resolved, call checked), and the pure arithmetic of ticks — which are due given the
//! last handled one and the time, under the missed-run policy, and when the next one comes.
//! No I/O and no clock: `now` is always passed in, so the tests pin every case.

use std::str::FromStr;

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use wtq_client::schedule::{Missed, ScheduleEntry, Trigger, valid_name};

/// Shortest `every` interval: ticks are planned to the second, as cron's are.
pub const MIN_INTERVAL_MS: u64 = 1000;
/// The catch-up window when an entry names none.
pub const DEFAULT_CATCH_UP_WINDOW_MS: u64 = 3600 * 1000;
/// Most missed ticks one entry fires at once when catching up: the newest are kept. Bounds
/// the burst after a long outage of an every-second entry.
pub const MAX_CATCH_UP: usize = 1000;
/// Most cron steps looked at for one answer, so that an expression with rare matches (a leap
/// day) cannot stall the beat.
const MAX_CRON_STEPS: usize = 100_000;

/// A validated entry's timing.
#[derive(Debug, Clone)]
pub struct Plan {
    timing: Timing,
    missed: Missed,
    catch_up_window_ms: u64,
}

#[derive(Debug, Clone)]
enum Timing {
    Cron {
        schedule: Box<cron::Schedule>,
        tz: Tz,
    },
    Every(u64),
    At(u64),
}

/// What a leader does for one entry now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Ticks to fire, oldest first.
    pub fire: Vec<u64>,
    /// The entry's new last handled tick (the skipped ticks are handled too), if any passed.
    pub handled: Option<u64>,
}

impl Plan {
    /// Checks an entry (name, call, trigger) and compiles its timing.
    pub fn compile(entry: &ScheduleEntry) -> Result<Plan, String> {
        if !valid_name(&entry.name) {
            return Err(format!(
                "schedule name `{}`: use 1 to {} ASCII letters, digits, `_`, `-` or `.`",
                entry.name,
                wtq_client::schedule::MAX_NAME_LEN
            ));
        }
        let call = &entry.call;
        if call.task.is_empty() {
            return Err("a schedule entry needs a task (`math.add`)".to_string());
        }
        for (set, option) in [
            (call.task_id.is_some(), "task_id"),
            (call.idempotency_key.is_some(), "idempotency_key"),
            (call.eta_ms.is_some(), "eta"),
            (call.countdown_ms.is_some(), "countdown"),
        ] {
            if set {
                return Err(format!(
                    "a schedule entry's call cannot set {option}: the beat sets it for each tick"
                ));
            }
        }
        let timing = match &entry.trigger {
            Trigger::Cron { expr, tz } => Timing::Cron {
                schedule: Box::new(parse_cron(expr)?),
                tz: match tz {
                    Some(tz) => Tz::from_str(tz).map_err(|_| {
                        format!("unknown time zone `{tz}`; use an IANA name such as Europe/Paris")
                    })?,
                    None => Tz::UTC,
                },
            },
            Trigger::EveryMs(ms) if *ms < MIN_INTERVAL_MS => {
                return Err(format!(
                    "an `every` interval of {ms} ms is shorter than the shortest, 1s"
                ));
            }
            Trigger::EveryMs(ms) => Timing::Every(*ms),
            Trigger::AtMs(ms) => Timing::At(*ms),
        };
        Ok(Plan {
            timing,
            missed: entry.missed,
            catch_up_window_ms: entry
                .catch_up_window_ms
                .unwrap_or(DEFAULT_CATCH_UP_WINDOW_MS),
        })
    }

    /// The ticks due at `now_ms` for an entry whose last handled tick is `handled_ms`: with
    /// `skip`, only the latest passed tick (however late); with `catch_up`, every passed tick
    /// no older than the window (at most [`MAX_CATCH_UP`], the newest), oldest first.
    pub fn due(&self, handled_ms: u64, now_ms: u64) -> Due {
        let (after, limit) = match self.missed {
            Missed::Skip => (handled_ms, 1),
            Missed::CatchUp => (
                handled_ms.max(now_ms.saturating_sub(self.catch_up_window_ms + 1)),
                MAX_CATCH_UP,
            ),
        };
        let mut fire = self.ticks_back(after, now_ms, limit);
        fire.reverse();
        // Ticks before the window, skipped by catch_up, are handled as well.
        let handled = match self.missed {
            Missed::Skip => fire.last().copied(),
            Missed::CatchUp => fire
                .last()
                .copied()
                .or_else(|| self.ticks_back(handled_ms, now_ms, 1).first().copied()),
        };
        Due { fire, handled }
    }

    /// The first tick after `after_ms`, if there is one.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match &self.timing {
            Timing::Every(every) => Some((after_ms / every + 1) * every),
            Timing::At(at) => (*at > after_ms).then_some(*at),
            Timing::Cron { schedule, tz } => {
                let start = instant(tz, after_ms)?;
                schedule
                    .after(&start)
                    .take(MAX_CRON_STEPS)
                    .map(|tick| tick.timestamp_millis())
                    .find_map(|ms| u64::try_from(ms).ok().filter(|ms| *ms > after_ms))
            }
        }
    }

    /// Up to `limit` ticks in `(after_ms, until_ms]`, newest first.
    fn ticks_back(&self, after_ms: u64, until_ms: u64, limit: usize) -> Vec<u64> {
        let mut ticks = Vec::new();
        if until_ms <= after_ms {
            return ticks;
        }
        match &self.timing {
            Timing::Every(every) => {
                let mut tick = until_ms - until_ms % every;
                while tick > after_ms && ticks.len() < limit {
                    ticks.push(tick);
                    match tick.checked_sub(*every) {
                        Some(earlier) => tick = earlier,
                        None => break,
                    }
                }
            }
            Timing::At(at) => {
                if *at > after_ms && *at <= until_ms {
                    ticks.push(*at);
                }
            }
            Timing::Cron { schedule, tz } => {
                // Walk back from just past `until` (the iterator's start is exclusive).
                let Some(start) = instant(tz, until_ms.saturating_add(1000)) else {
                    return ticks;
                };
                for tick in schedule.after(&start).rev().take(MAX_CRON_STEPS) {
                    let Ok(ms) = u64::try_from(tick.timestamp_millis()) else {
                        break;
                    };
                    if ms <= after_ms || ticks.len() >= limit {
                        break;
                    }
                    if ms <= until_ms {
                        ticks.push(ms);
                    }
                }
            }
        }
        ticks
    }
}

/// `ms` (Unix) as a time in `tz`.
fn instant(tz: &Tz, ms: u64) -> Option<DateTime<Tz>> {
    tz.timestamp_millis_opt(i64::try_from(ms).ok()?).single()
}

/// A cron expression: 5 fields (crontab: `min hour dom month dow`, days 0-7 with 0 and 7
/// Sunday), or the `cron` crate's 6 or 7 (seconds first, years last; days 1-7 from Sunday),
/// or its `@hourly`-style shorthands.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let full = match fields.as_slice() {
        [minute, hour, day, month, weekday] => format!(
            "0 {minute} {hour} {day} {month} {}",
            crontab_weekdays(weekday).map_err(|reason| format!("cron `{expr}`: {reason}"))?
        ),
        [shorthand] if shorthand.starts_with('@') => shorthand.to_string(),
        fields if fields.len() == 6 || fields.len() == 7 => fields.join(" "),
        _ => {
            return Err(format!(
                "cron `{expr}`: expected 5 fields (min hour day month weekday) or 6-7 with seconds"
            ));
        }
    };
    cron::Schedule::from_str(&full).map_err(|error| format!("cron `{expr}`: {error}"))
}

/// Crontab's day-of-week field (0-7, 0 and 7 Sunday) in the `cron` crate's numbering (1-7, 1
/// Sunday). Names and `*` pass through.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    let day = |text: &str| -> Result<Option<u8>, String> {
        if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() {
            match text.parse::<u8>() {
                Ok(n @ 0..=6) => Ok(Some(n + 1)),
                Ok(7) => Ok(Some(1)),
                _ => Err(format!("day of week `{text}` is not 0-7")),
            }
        } else {
            Ok(None)
        }
    };
    let mut parts = Vec::new();
    for part in field.split(',') {
        let (base, step) = match part.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (part, None),
        };
        let base = match base.split_once('-') {
            Some((from, to)) => match (day(from)?, day(to)?) {
                (Some(from), Some(1)) if from > 1 && to == "7" && step.is_none() => {
                    // `5-7` (Friday to Sunday) wraps past the crate's last day.
                    format!("{from}-7,1")
                }
                (Some(_), Some(1)) if to == "7" => {
                    return Err(format!(
                        "day range `{part}` ending on 7 with a step: write 0-6 or use names"
                    ));
                }
                (Some(from), Some(to)) => format!("{from}-{to}"),
                _ => base.to_string(),
            },
            None => match day(base)? {
                Some(n) => n.to_string(),
                None => base.to_string(),
            },
        };
        parts.push(match step {
            Some(step) => format!("{base}/{step}"),
            None => base,
        });
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use wtq_client::api::EnqueueRequest;
    use wtq_client::schedule::Overlap;

    use super::*;

    fn entry(trigger: Trigger, missed: Missed, window_ms: Option<u64>) -> ScheduleEntry {
        ScheduleEntry {
            name: "e".into(),
            call: EnqueueRequest {
                task: "math.add".into(),
                ..EnqueueRequest::default()
            },
            trigger,
            missed,
            catch_up_window_ms: window_ms,
            overlap: Overlap::Allow,
        }
    }

    fn plan(trigger: Trigger, missed: Missed) -> Plan {
        Plan::compile(&entry(trigger, missed, Some(10_000))).expect("valid entry")
    }

    fn cron(expr: &str, tz: Option<&str>) -> Trigger {
        Trigger::Cron {
            expr: expr.into(),
            tz: tz.map(str::to_string),
        }
    }

    /// Unix ms of an RFC 3339 time.
    fn at(text: &str) -> u64 {
        crate::units::parse_rfc3339(text).expect("valid time")
    }

    #[test]
    fn intervals_tick_at_multiples_of_the_interval() {
        let every = plan(Trigger::EveryMs(2000), Missed::Skip);
        let check = |handled: u64, now: u64, fire: &[u64], handled_after: Option<u64>| {
            let due = every.due(handled, now);
            assert_eq!(due.fire, fire, "handled {handled}, now {now}");
            assert_eq!(due.handled, handled_after);
        };
        check(10_000, 10_500, &[], None);
        check(10_000, 12_000, &[12_000], Some(12_000));
        // Skip fires the latest missed tick only.
        check(10_000, 17_900, &[16_000], Some(16_000));
        assert_eq!(every.next_after(12_000), Some(14_000));
        assert_eq!(every.next_after(12_001), Some(14_000));

        let catch_up = plan(Trigger::EveryMs(2000), Missed::CatchUp);
        assert_eq!(catch_up.due(10_000, 17_900).fire, [12_000, 14_000, 16_000]);
        // Outside the 10 s window: skipped, but handled.
        let due = catch_up.due(0, 30_000);
        assert_eq!(due.fire, [20_000, 22_000, 24_000, 26_000, 28_000, 30_000]);
        assert_eq!(due.handled, Some(30_000));
    }

    #[test]
    fn one_off_fires_once() {
        let once = plan(Trigger::AtMs(5000), Missed::Skip);
        assert_eq!(once.due(1000, 4999).fire, Vec::<u64>::new());
        assert_eq!(once.due(1000, 9000).fire, [5000]);
        assert_eq!(once.due(5000, 9000).fire, Vec::<u64>::new());
        assert_eq!(once.next_after(1000), Some(5000));
        assert_eq!(once.next_after(5000), None);
    }

    #[test]
    fn crontab_and_seconds_forms() {
        let every_minute = plan(cron("* * * * *", None), Missed::CatchUp);
        let t = at("2026-03-01T10:00:30Z");
        assert_eq!(every_minute.next_after(t), Some(at("2026-03-01T10:01:00Z")));
        let every_second = plan(cron("* * * * * *", None), Missed::CatchUp);
        assert_eq!(
            every_second.due(t, t + 3500).fire,
            [t + 1000, t + 2000, t + 3000]
        );
        let every_two = plan(cron("*/2 * * * * *", None), Missed::Skip);
        assert_eq!(every_two.due(t, t + 3500).fire, [t + 2000]);
        // Skip after a long gap: only the latest.
        let hourly = plan(cron("0 * * * *", None), Missed::Skip);
        let due = hourly.due(at("2026-03-01T00:00:00Z"), at("2026-03-01T05:30:00Z"));
        assert_eq!(due.fire, [at("2026-03-01T05:00:00Z")]);
    }

    #[test]
    fn time_zones_follow_local_time_across_daylight_saving() {
        // 09:00 in Paris: 08:00Z in winter, 07:00Z in summer (DST began 2026-03-29).
        let paris = plan(cron("0 9 * * *", Some("Europe/Paris")), Missed::Skip);
        assert_eq!(
            paris.next_after(at("2026-03-27T12:00:00Z")),
            Some(at("2026-03-28T08:00:00Z"))
        );
        assert_eq!(
            paris.next_after(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T07:00:00Z"))
        );
        let new_york = plan(cron("30 17 * * *", Some("America/New_York")), Missed::Skip);
        assert_eq!(
            new_york.next_after(at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-01T21:30:00Z"))
        );
    }

    #[test]
    fn crontab_weekdays_count_from_sunday_zero() {
        // 2026-03-01 is a Sunday.
        let check = |weekdays: &str, after: &str, expected: &str| {
            let plan = plan(cron(&format!("0 12 * * {weekdays}"), None), Missed::Skip);
            assert_eq!(plan.next_after(at(after)), Some(at(expected)), "{weekdays}");
        };
        check("0", "2026-02-28T13:00:00Z", "2026-03-01T12:00:00Z");
        check("7", "2026-02-28T13:00:00Z", "2026-03-01T12:00:00Z");
        check("1-5", "2026-02-28T13:00:00Z", "2026-03-02T12:00:00Z");
        check("6", "2026-03-01T13:00:00Z", "2026-03-07T12:00:00Z");
        check("5-7", "2026-03-01T13:00:00Z", "2026-03-06T12:00:00Z");
        check("mon", "2026-03-01T13:00:00Z", "2026-03-02T12:00:00Z");
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let check = |entry: ScheduleEntry, fragment: &str| {
            let error = Plan::compile(&entry).expect_err(fragment);
            assert!(error.contains(fragment), "{error}");
        };
        check(
            entry(cron("* * *", None), Missed::Skip, None),
            "expected 5 fields",
        );
        check(entry(cron("61 * * * *", None), Missed::Skip, None), "cron");
        check(
            entry(cron("* * * * 8", None), Missed::Skip, None),
            "not 0-7",
        );
        check(
            entry(cron("* * * * *", Some("Mars/Olympus")), Missed::Skip, None),
            "unknown time zone",
        );
        check(entry(Trigger::EveryMs(10), Missed::Skip, None), "shortest");
        let mut named = entry(Trigger::EveryMs(1000), Missed::Skip, None);
        named.name = "a b".into();
        check(named, "schedule name");
        let mut pinned = entry(Trigger::EveryMs(1000), Missed::Skip, None);
        pinned.call.task_id = Some("x".into());
        check(pinned, "task_id");
    }
}
