//! Schedule entries as people write them: the TOML schedule file of `wtq beat --schedule` and
//! the flags of `wtq schedule add`, with human units (`every = "2s"`, `at = "2026-…Z"`), turned
//! into checked [`ScheduleEntry`]s.
//!
//! ```toml
//! [[schedule]]
//! name = "sum"
//! task = "math.add"
//! args = [1, 2]
//! every = "2s"              # or: cron = "*/5 * * * *" (tz = "Europe/Paris"), or at = "…Z"
//! missed = "catch_up"       # or "skip" (the default)
//! catch_up_window = "10m"
//! overlap = "skip"          # or "allow" (the default)
//! queue = "default"
//! priority = 5
//! time_limit = "30s"
//! ```

use serde::Deserialize;
use serde_json::Value;
use wtq_client::api::EnqueueRequest;
use wtq_client::schedule::{Missed, Overlap, ScheduleEntry, Trigger};

use super::plan::Plan;
use crate::units;

/// A schedule file: a list of `[[schedule]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    schedule: Vec<Spec>,
}

/// One entry with human units.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub task: String,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub kwargs: Option<Value>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub tz: Option<String>,
    #[serde(default)]
    pub every: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub missed: Option<Missed>,
    #[serde(default)]
    pub catch_up_window: Option<String>,
    #[serde(default)]
    pub overlap: Option<Overlap>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub time_limit: Option<String>,
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

impl Spec {
    /// The checked entry.
    pub fn entry(self) -> Result<ScheduleEntry, String> {
        let duration_ms = |text: &str, what: &str| {
            units::parse_duration(text)
                .map(|duration| duration.as_millis() as u64)
                .map_err(|error| format!("{what}: {error}"))
        };
        let trigger = match (&self.cron, &self.every, &self.at) {
            (Some(expr), None, None) => Trigger::Cron {
                expr: expr.clone(),
                tz: self.tz.clone(),
            },
            (None, Some(every), None) if self.tz.is_none() => {
                Trigger::EveryMs(duration_ms(every, "every")?)
            }
            (None, None, Some(at)) if self.tz.is_none() => {
                Trigger::AtMs(units::parse_rfc3339(at).map_err(|error| error.to_string())?)
            }
            (None, None, None) => return Err("give one of cron, every or at".to_string()),
            _ if self.tz.is_some() && self.cron.is_none() => {
                return Err("tz applies to cron only".to_string());
            }
            _ => return Err("give only one of cron, every or at".to_string()),
        };
        let optional_ms = |text: &Option<String>, what: &str| {
            text.as_deref()
                .map(|text| duration_ms(text, what))
                .transpose()
        };
        let entry = ScheduleEntry {
            call: EnqueueRequest {
                task: self.task,
                args: self.args,
                kwargs: self.kwargs,
                queue: self.queue,
                priority: self.priority,
                time_limit_ms: optional_ms(&self.time_limit, "time_limit")?,
                expires_ms: optional_ms(&self.expires, "expires")?,
                max_retries: self.max_retries,
                ..EnqueueRequest::default()
            },
            trigger,
            missed: self.missed.unwrap_or_default(),
            catch_up_window_ms: optional_ms(&self.catch_up_window, "catch_up_window")?,
            overlap: self.overlap.unwrap_or_default(),
            name: self.name,
        };
        Plan::compile(&entry)?;
        Ok(entry)
    }
}

/// The entries of a schedule file's text; errors name the entry.
pub fn parse_file(text: &str) -> Result<Vec<ScheduleEntry>, String> {
    let file: File = toml::from_str(text).map_err(|error| error.to_string())?;
    let mut names = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(file.schedule.len());
    for spec in file.schedule {
        let name = spec.name.clone();
        let entry = spec
            .entry()
            .map_err(|error| format!("schedule `{name}`: {error}"))?;
        if !names.insert(name.clone()) {
            return Err(format!("schedule `{name}` is defined twice"));
        }
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_every_kind_of_trigger() {
        let entries = parse_file(
            r#"
            [[schedule]]
            name = "sum"
            task = "math.add"
            args = [1, 2]
            every = "2s"
            overlap = "skip"

            [[schedule]]
            name = "paris"
            task = "text.slugify"
            kwargs = { text = "bonjour" }
            cron = "0 9 * * 1-5"
            tz = "Europe/Paris"
            missed = "catch_up"
            catch_up_window = "10m"
            queue = "high"
            priority = 5
            time_limit = "30s"

            [[schedule]]
            name = "once"
            task = "math.add"
            args = [0, 0]
            at = "2030-01-01T00:00:00Z"
            "#,
        )
        .expect("valid file");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].trigger, Trigger::EveryMs(2000));
        assert_eq!(entries[0].overlap, Overlap::Skip);
        assert_eq!(entries[0].call.args, Some(serde_json::json!([1, 2])));
        assert_eq!(entries[1].catch_up_window_ms, Some(600_000));
        assert_eq!(entries[1].call.time_limit_ms, Some(30_000));
        assert_eq!(
            entries[1].call.kwargs,
            Some(serde_json::json!({"text": "bonjour"}))
        );
        assert_eq!(entries[2].trigger, Trigger::AtMs(1_893_456_000_000));
    }

    #[test]
    fn mistakes_name_the_entry() {
        let check = |text: &str, fragment: &str| {
            let error = parse_file(text).expect_err(fragment);
            assert!(error.contains(fragment), "{error}");
        };
        let entry = |body: &str| format!("[[schedule]]\nname = \"x\"\ntask = \"math.add\"\n{body}");
        check(&entry(""), "schedule `x`: give one of cron, every or at");
        check(&entry("every = \"2s\"\ncron = \"* * * * *\""), "only one");
        check(
            &entry("every = \"2s\"\ntz = \"UTC\""),
            "tz applies to cron only",
        );
        check(&entry("every = \"soon\""), "every");
        check(&entry("every = \"2s\"\nsurprise = 1"), "surprise");
        check(&entry("cron = \"* * * * *\"\nmissed = \"later\""), "later");
        check(
            &format!("{}\n{}", entry("every = \"2s\""), entry("every = \"3s\"")),
            "defined twice",
        );
    }
}
