//! Tenants of the hosted service: who they are, their quotas, their API tokens (stored only as
//! hashes), their usage counters and the task events they may watch. Plain data; the broker
//! stores it ([`crate::broker::Tenancy`]).

use serde::{Deserialize, Serialize};

use crate::message::State;

/// Every key of a tenant lives in this namespace: `wtq:{t-<name>}:…`.
pub fn namespace_of(tenant: &str) -> String {
    format!("t-{tenant}")
}

/// Longest tenant name: the name is part of every one of its keys.
pub const MAX_TENANT_NAME: usize = 40;

/// Whether `name` can name a tenant: 1 to 40 lowercase ASCII letters, digits or `-`, starting
/// with a letter or digit.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TENANT_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A tenant of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub created_ms: u64,
    #[serde(default)]
    pub quotas: Quotas,
}

/// A tenant's quotas; `None` means unlimited (the workers' own limits still apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Most of its tasks running at once, across all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Most tasks enqueued per period (`100/s`), across all service processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Cap on a task's time limit (ms); also its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time_ms: Option<u64>,
    /// Cap on a task's fuel; also its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fuel: Option<u64>,
    /// Cap on a task's memory (bytes); also its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// Most bytes of components stored (uncompressed sizes of every version kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<u64>,
    /// Largest component upload (bytes, uncompressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload: Option<u64>,
}

/// At most `count` per `per_ms` milliseconds, as `100/s`, `6000/m`, `10/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub count: u32,
    pub per_ms: u64,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (N ≥ 1).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("rate `{text}`: use N/s, N/m or N/h with N at least 1, e.g. 100/s");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per_ms = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, per_ms })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per_ms {
            1_000 => "s",
            60_000 => "m",
            3_600_000 => "h",
            other => return write!(f, "{}/{}ms", self.count, other),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Whether a rate-limited action may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Not now: enough capacity frees up after this long.
    Limited {
        retry_after_ms: u64,
    },
}

/// An API token as stored: never the token itself, which only its holder has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public handle, for listing and revoking (`tok_…`).
    pub id: String,
    /// The tenant it acts for; `None` for an admin token (manages tenants and tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub created_ms: u64,
}

/// A tenant's metered usage, the basis for billing. Counters only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tasks that reached a final state.
    pub tasks: u64,
    /// Attempts that ran (retries count each).
    pub attempts: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// CPU time of guest calls, microseconds.
    pub cpu_us: u64,
    /// Peak memory × wall time of guest calls, KiB·ms.
    pub memory_kib_ms: u64,
}

/// A state change of one task, as published to the tenant's watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub id: String,
    pub state: State,
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            Rate::parse("100/s"),
            Ok(Rate {
                count: 100,
                per_ms: 1000
            })
        );
        assert_eq!(
            Rate::parse("6000/m").map(|r| r.to_string()),
            Ok("6000/m".into())
        );
        for bad in ["", "0/s", "10", "10/d", "x/s", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_names_are_key_safe() {
        for good in ["acme", "a", "team-7"] {
            assert!(valid_tenant_name(good), "{good}");
        }
        for bad in ["", "-x", "Acme", "a{b}", "a:b", &"x".repeat(41)] {
            assert!(!valid_tenant_name(bad), "{bad}");
        }
    }
}
