//! The registry's data: components by name, each version stored under its sha-256 digest, and
//! how a task is addressed (`NAME.TASK` for the current version, `NAME@DIGEST_PREFIX.TASK`
//! pinned). Storage is the broker's; validation of uploads is the host's (it needs wasmtime).

use serde::{Deserialize, Serialize};

use crate::tenancy::Rate;

/// One task of a component, as the component lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    #[serde(default)]
    pub doc: String,
    /// Parameter names in positional order.
    #[serde(default)]
    pub params: Vec<String>,
}

/// One deployed version of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// sha-256 of the component's bytes, in hex.
    pub digest: String,
    pub deployed_ms: u64,
    pub tasks: Vec<TaskInfo>,
    /// Size of the component in bytes (uncompressed).
    pub size: u64,
}

/// A registry name and its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub name: String,
    /// Newest first; the first is the current version.
    pub versions: Vec<Version>,
}

impl ComponentRecord {
    /// The version `NAME.TASK` runs.
    pub fn current(&self) -> Option<&Version> {
        self.versions.first()
    }

    /// The version whose digest starts with `prefix`, if exactly one does.
    pub fn pinned(&self, prefix: &str) -> Result<&Version, AddressError> {
        let matching: Vec<&Version> = self
            .versions
            .iter()
            .filter(|version| version.digest.starts_with(prefix))
            .collect();
        match matching.as_slice() {
            [version] => Ok(version),
            [] => Err(AddressError(format!(
                "component `{}` has no version with digest {prefix}…; deployed: {}",
                self.name,
                self.versions
                    .iter()
                    .map(|v| &v.digest[..12.min(v.digest.len())])
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Err(AddressError(format!(
                "digest prefix {prefix} of `{}` matches {} versions; give more digits",
                self.name,
                matching.len()
            ))),
        }
    }
}

/// What an operator set for one task at run time (`wtq deploy --rate-limit`, `wtq control
/// rate-limit|time-limit`), held by the broker for every worker. Keyed by the task's address
/// without a version, `component.task`: a pinned call (`math@3f2a.add`) has the same policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPolicy {
    /// At most this many of its messages are leased per period, across every worker of the
    /// namespace (the broker's reserve enforces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    /// Its time limit, in place of the worker's default (the worker applies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
}

/// A component to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub name: String,
    pub version: Version,
    /// The component's bytes, gzip-compressed.
    pub compressed: Vec<u8>,
}

/// A task address that cannot be used; the message says why and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// A parsed task address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub component: String,
    /// A digest prefix when pinned.
    pub digest: Option<String>,
    pub task: String,
}

/// Shortest digest prefix accepted in a pinned address.
pub const MIN_DIGEST_PREFIX: usize = 4;

impl Address {
    /// Parses `NAME.TASK` or `NAME@DIGEST_PREFIX.TASK`.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let usage = || {
            AddressError(format!(
                "invalid task address `{text}`: use NAME.TASK (current version) or NAME@DIGEST.TASK (pinned), e.g. math.add"
            ))
        };
        let (head, task) = text.rsplit_once('.').ok_or_else(usage)?;
        let (component, digest) = match head.split_once('@') {
            Some((component, digest)) => (component, Some(digest)),
            None => (head, None),
        };
        if !valid_name(component) || !valid_name(task) {
            return Err(usage());
        }
        if let Some(digest) = digest
            && (digest.len() < MIN_DIGEST_PREFIX
                || digest.len() > 64
                || !digest.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(AddressError(format!(
                "invalid digest `{digest}` in `{text}`: use {MIN_DIGEST_PREFIX} to 64 hex digits of the version's sha-256"
            )));
        }
        Ok(Address {
            component: component.to_string(),
            digest: digest.map(|d| d.to_ascii_lowercase()),
            task: task.to_string(),
        })
    }
}

/// Component, task, parameter and queue names: 1 to 128 ASCII letters, digits, `_` or `-`.
/// They appear in addresses, keys and command lines.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let check = |text: &str, expected: Option<(&str, Option<&str>, &str)>| {
            let got = Address::parse(text).ok();
            let got = got
                .as_ref()
                .map(|a| (a.component.as_str(), a.digest.as_deref(), a.task.as_str()));
            assert_eq!(got, expected, "{text}");
        };
        check("math.add", Some(("math", None, "add")));
        check("math@3f2A.add", Some(("math", Some("3f2a"), "add")));
        check(
            "my-tasks.word_count",
            Some(("my-tasks", None, "word_count")),
        );
        check("math", None);
        check("math.", None);
        check(".add", None);
        check("math@3f.add", None);
        check("math@xyz1.add", None);
        check("a b.add", None);
    }
}
