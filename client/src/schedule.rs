//! Periodic tasks as data: a schedule entry (what to call, when, and what to do about missed
//! and overlapping runs) and the per-entry state `wtq beat` keeps in the broker. Plain
//! serialisable types: parsing cron expressions and computing fire times is the beat's job
//! (`wtq::beat`), storing them the broker's ([`crate::broker::Schedules`]).
//!
//! The JSON form is the HTTP API's (`POST /v1/schedules`) and the stored one:
//!
//! ```json
//! {"name": "nightly", "call": {"task": "math.add", "args": [1, 2]},
//!  "trigger": {"cron": {"expr": "0 3 * * *", "tz": "Europe/Paris"}},
//!  "missed": "catch_up", "catch_up_window_ms": 3600000, "overlap": "skip"}
//! ```

use serde::{Deserialize, Serialize};

use crate::api::EnqueueRequest;

/// Longest schedule entry name.
pub const MAX_NAME_LEN: usize = 128;

/// One periodic task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    /// Unique within a namespace: 1 to 128 ASCII letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// The call made at each tick, checked against the registry as `wtq call` is. It may not
    /// set `task_id`, `idempotency_key`, `eta_ms` or `countdown_ms`: the beat sets the first
    /// two from the entry and the tick (so a tick is enqueued once, whoever fires it) and
    /// `eta_ms` to the tick's scheduled time.
    pub call: EnqueueRequest,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Missed::is_default")]
    pub missed: Missed,
    /// With `missed: catch_up`: ticks older than this are skipped (default: one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Overlap::is_default")]
    pub overlap: Overlap,
}

/// When an entry fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A crontab expression: 5 fields (`min hour dom month dow`, as crontab) or the `cron`
    /// crate's 6 or 7 (with seconds first, and years last), evaluated in `tz` (IANA, e.g.
    /// `Europe/Paris`; default UTC).
    Cron {
        expr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tz: Option<String>,
    },
    /// Every this many ms, at multiples of the interval since the Unix epoch (so every beat
    /// process computes the same ticks).
    EveryMs(u64),
    /// Once, at this time (Unix ms).
    AtMs(u64),
}

/// What a beat does about ticks that passed while no beat was leading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Fire only the latest missed tick (late), skip the others.
    #[default]
    Skip,
    /// Fire every missed tick within the catch-up window, oldest first.
    CatchUp,
}

impl Missed {
    fn is_default(&self) -> bool {
        *self == Missed::Skip
    }
}

/// What a beat does when a tick comes while the entry's previous run is not final.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Fire anyway.
    #[default]
    Allow,
    /// Skip this tick.
    Skip,
}

impl Overlap {
    fn is_default(&self) -> bool {
        *self == Overlap::Allow
    }
}

/// The last tick an entry's leader handled (fired, or skipped by a policy), kept in the broker
/// so that the next leader continues where this one stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    /// The tick's scheduled time (Unix ms); for an entry never fired, when a leader first saw
    /// it (ticks after it are due).
    pub tick_ms: u64,
    /// The task enqueued for the latest fired tick (what `overlap: skip` checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// A schedule entry with its state, as `wtq schedule list` and `GET /v1/schedules` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    #[serde(flatten)]
    pub entry: ScheduleEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired: Option<Fired>,
}

/// Whether `name` may name a schedule entry (it goes into idempotency keys and Redis hash
/// fields).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The idempotency key of `name`'s tick at `tick_ms`: the same whichever beat fires it, so a
/// tick is enqueued once even across a leader handover.
pub fn tick_key(name: &str, tick_ms: u64) -> String {
    format!("beat:{name}:{tick_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_as_json() {
        let json = serde_json::json!({
            "name": "nightly",
            "call": {"task": "math.add", "args": [1, 2]},
            "trigger": {"cron": {"expr": "0 3 * * *", "tz": "Europe/Paris"}},
            "missed": "catch_up",
            "overlap": "skip"
        });
        let entry: ScheduleEntry = serde_json::from_value(json.clone()).expect("valid entry");
        assert_eq!(entry.missed, Missed::CatchUp);
        assert_eq!(serde_json::to_value(&entry).expect("serialises"), json);
        let every: Trigger =
            serde_json::from_value(serde_json::json!({"every_ms": 2000})).expect("every");
        assert_eq!(every, Trigger::EveryMs(2000));
    }

    #[test]
    fn names() {
        let check = |name: &str, valid: bool| assert_eq!(valid_name(name), valid, "{name:?}");
        check("nightly.report-2", true);
        check("", false);
        check("a b", false);
        check("a:b", false);
        check(&"a".repeat(MAX_NAME_LEN + 1), false);
    }
}
