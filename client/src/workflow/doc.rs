//! The workflow document: what `wtq workflow submit` reads, `POST /v1/workflows` accepts and
//! the Rust builder makes. One node is a task call (Celery's signature) or a composition:
//!
//! ```json
//! {"chord": {"header": [{"task": "math.add", "args": [1, 1]}, {"task": "math.add", "args": [2, 2]}],
//!            "body": {"task": "math.xsum"}},
//!  "queue": "fast"}
//! ```
//!
//! `{"chain": [...]}`, `{"group": [...]}`, `{"chunks": {"task": ..., "items": [[..], ..], "n": 10}}`,
//! `{"map": {"task": ..., "items": [..]}}` and `{"starmap": {"task": ..., "items": [[..], ..]}}`
//! likewise. The call options (`queue`, `priority`, `countdown_ms`, `expires_ms`,
//! `max_retries`, `retry_backoff`, `time_limit_ms`, `fuel`, `memory`, `max_deliveries`,
//! `result_expires_ms`) and the callbacks `link` and `link_error` are allowed on any node; on a
//! composition they apply to every task inside that does not set its own.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::Backoff;

/// One node of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawNode", into = "RawNode")]
pub struct Node {
    pub kind: Kind,
    pub options: Options,
}

/// What a node runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// One call: a signature.
    Task(Signature),
    /// Each result is prepended to the next one's arguments; the result is the last one's. A
    /// group followed by another node becomes a chord.
    Chain(Vec<Node>),
    /// In parallel; the result is the list of results, in group order.
    Group(Vec<Node>),
    /// The group `header`, then `body` with the list of its results.
    Chord { header: Vec<Node>, body: Box<Node> },
    /// `n` tasks, each calling `task` over its slice of `items` (argument lists) in one
    /// instance; the result is every call's result, in order.
    Chunks {
        task: String,
        items: Vec<Value>,
        n: usize,
    },
    /// One task calling `task` once per item (each item is its one argument).
    Map { task: String, items: Vec<Value> },
    /// One task calling `task` once per item (each item is an argument list).
    Starmap { task: String, items: Vec<Value> },
}

/// A task call: the address, its arguments and whether it takes its parent's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signature {
    /// `NAME.TASK` or `NAME@DIGEST.TASK`.
    pub task: String,
    /// Positional arguments (a JSON array), or keyword arguments as a lone object.
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    /// Celery's `si`: the parent's result is not passed in.
    pub immutable: bool,
    pub task_id: Option<String>,
}

/// Call options and callbacks of a node; unset ones come from the enclosing node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// For a task that waits for another's result, counted from when it is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_ms: Option<u64>,
    /// Counted from submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_expires_ms: Option<u64>,
    /// Started with this node's result when it succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Node>,
    /// Started with the failure (`{"id", "task", "kind", "message"}`) when it fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_error: Vec<Node>,
    /// On a group or chord: a failed member's result is `{"error": failure}` instead of
    /// failing the whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failures: bool,
}

impl Options {
    /// These options, with every unset one taken from `outer`. Callbacks are not inherited.
    pub(crate) fn under(&self, outer: &Options) -> Options {
        Options {
            queue: self.queue.clone().or_else(|| outer.queue.clone()),
            priority: self.priority.or(outer.priority),
            countdown_ms: self.countdown_ms.or(outer.countdown_ms),
            expires_ms: self.expires_ms.or(outer.expires_ms),
            max_retries: self.max_retries.or(outer.max_retries),
            retry_backoff: self.retry_backoff.or(outer.retry_backoff),
            time_limit_ms: self.time_limit_ms.or(outer.time_limit_ms),
            fuel: self.fuel.or(outer.fuel),
            memory: self.memory.or(outer.memory),
            max_deliveries: self.max_deliveries.or(outer.max_deliveries),
            result_expires_ms: self.result_expires_ms.or(outer.result_expires_ms),
            link: Vec::new(),
            link_error: Vec::new(),
            allow_failures: self.allow_failures,
        }
    }
}

/// A task call, for the builder: `task("math.add").args(json!([1, 2]))`.
pub fn task(address: &str) -> Signature {
    Signature {
        task: address.to_string(),
        ..Signature::default()
    }
}

/// Celery's `chain(a, b, c)`.
pub fn chain(nodes: impl IntoIterator<Item = impl Into<Node>>) -> Node {
    Node::new(Kind::Chain(nodes.into_iter().map(Into::into).collect()))
}

/// Celery's `group(a, b, c)`.
pub fn group(nodes: impl IntoIterator<Item = impl Into<Node>>) -> Node {
    Node::new(Kind::Group(nodes.into_iter().map(Into::into).collect()))
}

/// Celery's `chord(header)(body)`.
pub fn chord(header: impl IntoIterator<Item = impl Into<Node>>, body: impl Into<Node>) -> Node {
    Node::new(Kind::Chord {
        header: header.into_iter().map(Into::into).collect(),
        body: Box::new(body.into()),
    })
}

impl Signature {
    /// Positional arguments (a JSON array), or keyword arguments as a lone object.
    pub fn args(mut self, args: Value) -> Self {
        self.args = Some(args);
        self
    }

    pub fn kwargs(mut self, kwargs: Value) -> Self {
        self.kwargs = Some(kwargs);
        self
    }

    /// Celery's `si`: ignore the parent's result.
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    pub fn task_id(mut self, id: &str) -> Self {
        self.task_id = Some(id.to_string());
        self
    }

    /// Celery's `task.chunks(items, n)`: `n` tasks over slices of `items` (argument lists).
    pub fn chunks(self, items: Vec<Value>, n: usize) -> Node {
        Node::new(Kind::Chunks {
            task: self.task,
            items,
            n,
        })
    }

    /// Celery's `task.map(items)`.
    pub fn map(self, items: Vec<Value>) -> Node {
        Node::new(Kind::Map {
            task: self.task,
            items,
        })
    }

    /// Celery's `task.starmap(items)`.
    pub fn starmap(self, items: Vec<Value>) -> Node {
        Node::new(Kind::Starmap {
            task: self.task,
            items,
        })
    }
}

impl From<Signature> for Node {
    fn from(signature: Signature) -> Node {
        Node::new(Kind::Task(signature))
    }
}

impl Node {
    pub fn new(kind: Kind) -> Node {
        Node {
            kind,
            options: Options::default(),
        }
    }

    /// Replaces the call options (callbacks included).
    pub fn options(mut self, options: Options) -> Node {
        self.options = options;
        self
    }

    /// Adds a callback started with this node's result.
    pub fn link(mut self, callback: impl Into<Node>) -> Node {
        self.options.link.push(callback.into());
        self
    }

    /// Adds a callback started with the failure when this node fails.
    pub fn link_error(mut self, errback: impl Into<Node>) -> Node {
        self.options.link_error.push(errback.into());
        self
    }

    /// A group's or chord's failed members become `{"error": ...}` results.
    pub fn allow_failures(mut self) -> Node {
        self.options.allow_failures = true;
        self
    }

    pub fn queue(mut self, queue: &str) -> Node {
        self.options.queue = Some(queue.to_string());
        self
    }

    /// Every task address in the workflow, callbacks included.
    pub(crate) fn addresses<'a>(&'a self, out: &mut Vec<&'a str>) {
        match &self.kind {
            Kind::Task(signature) => out.push(&signature.task),
            Kind::Chain(nodes) | Kind::Group(nodes) => {
                nodes.iter().for_each(|node| node.addresses(out));
            }
            Kind::Chord { header, body } => {
                header.iter().for_each(|node| node.addresses(out));
                body.addresses(out);
            }
            Kind::Chunks { task, .. } | Kind::Map { task, .. } | Kind::Starmap { task, .. } => {
                out.push(task)
            }
        }
        for node in self.options.link.iter().chain(&self.options.link_error) {
            node.addresses(out);
        }
    }
}

/// The document's flat form: exactly one of the kinds, the options beside it. Unknown fields
/// land in `unknown` and are refused (serde does not support `deny_unknown_fields` beside
/// `flatten`).
#[derive(Serialize, Deserialize)]
struct RawNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kwargs: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    immutable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<Vec<Node>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<Vec<Node>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chord: Option<RawChord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks: Option<RawChunks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    map: Option<RawMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    starmap: Option<RawMap>,
    #[serde(flatten)]
    options: Options,
    #[serde(flatten, skip_serializing)]
    unknown: serde_json::Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChord {
    header: Vec<Node>,
    body: Box<Node>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChunks {
    task: String,
    items: Vec<Value>,
    n: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    task: String,
    items: Vec<Value>,
}

const KINDS: &str = "`task`, `chain`, `group`, `chord`, `chunks`, `map` or `starmap`";

impl TryFrom<RawNode> for Node {
    type Error = String;

    fn try_from(raw: RawNode) -> Result<Node, String> {
        if let Some(field) = raw.unknown.keys().next() {
            return Err(format!(
                "unknown field `{field}` in a workflow node; it takes one of {KINDS}, the task's `args`, `kwargs`, `immutable`, `task_id`, the call options and `link`, `link_error`, `allow_failures`"
            ));
        }
        let mut kinds = Vec::new();
        let mut kind = None;
        if let Some(task) = raw.task {
            kinds.push("task");
            kind = Some(Kind::Task(Signature {
                task,
                args: raw.args.clone(),
                kwargs: raw.kwargs.clone(),
                immutable: raw.immutable,
                task_id: raw.task_id.clone(),
            }));
        }
        if let Some(nodes) = raw.chain {
            kinds.push("chain");
            kind = Some(Kind::Chain(nodes));
        }
        if let Some(nodes) = raw.group {
            kinds.push("group");
            kind = Some(Kind::Group(nodes));
        }
        if let Some(chord) = raw.chord {
            kinds.push("chord");
            kind = Some(Kind::Chord {
                header: chord.header,
                body: chord.body,
            });
        }
        if let Some(chunks) = raw.chunks {
            kinds.push("chunks");
            kind = Some(Kind::Chunks {
                task: chunks.task,
                items: chunks.items,
                n: chunks.n,
            });
        }
        if let Some(map) = raw.map {
            kinds.push("map");
            kind = Some(Kind::Map {
                task: map.task,
                items: map.items,
            });
        }
        if let Some(map) = raw.starmap {
            kinds.push("starmap");
            kind = Some(Kind::Starmap {
                task: map.task,
                items: map.items,
            });
        }
        let kind = match (kind, kinds.len()) {
            (Some(kind), 1) => kind,
            (None, _) => return Err(format!("a workflow node needs one of {KINDS}")),
            _ => {
                return Err(format!(
                    "a workflow node has exactly one of {KINDS}; this one has {}",
                    kinds.join(" and ")
                ));
            }
        };
        if !matches!(kind, Kind::Task(_)) {
            for (field, set) in [
                ("args", raw.args.is_some()),
                ("kwargs", raw.kwargs.is_some()),
                ("immutable", raw.immutable),
                ("task_id", raw.task_id.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "`{field}` belongs on a `task` node, not beside `{}`",
                        kinds[0]
                    ));
                }
            }
        }
        Ok(Node {
            kind,
            options: raw.options,
        })
    }
}

impl From<Node> for RawNode {
    fn from(node: Node) -> RawNode {
        let mut raw = RawNode {
            task: None,
            args: None,
            kwargs: None,
            immutable: false,
            task_id: None,
            chain: None,
            group: None,
            chord: None,
            chunks: None,
            map: None,
            starmap: None,
            options: node.options,
            unknown: serde_json::Map::new(),
        };
        match node.kind {
            Kind::Task(signature) => {
                raw.task = Some(signature.task);
                raw.args = signature.args;
                raw.kwargs = signature.kwargs;
                raw.immutable = signature.immutable;
                raw.task_id = signature.task_id;
            }
            Kind::Chain(nodes) => raw.chain = Some(nodes),
            Kind::Group(nodes) => raw.group = Some(nodes),
            Kind::Chord { header, body } => raw.chord = Some(RawChord { header, body }),
            Kind::Chunks { task, items, n } => raw.chunks = Some(RawChunks { task, items, n }),
            Kind::Map { task, items } => raw.map = Some(RawMap { task, items }),
            Kind::Starmap { task, items } => raw.starmap = Some(RawMap { task, items }),
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Node, String> {
        serde_json::from_value(value).map_err(|error| error.to_string())
    }

    #[test]
    fn documents_round_trip_with_the_builder() {
        let document = json!({
            "chord": {
                "header": [{"task": "math.add", "args": [1, 1]}, {"task": "math.add", "args": [2, 2]}],
                "body": {"task": "math.xsum", "link_error": [{"task": "text.log", "immutable": true}]}
            },
            "queue": "fast"
        });
        let built = chord(
            [
                task("math.add").args(json!([1, 1])),
                task("math.add").args(json!([2, 2])),
            ],
            Node::from(task("math.xsum")).link_error(task("text.log").immutable()),
        )
        .queue("fast");
        assert_eq!(parse(document.clone()), Ok(built.clone()));
        assert_eq!(serde_json::to_value(&built).unwrap(), document);
    }

    #[test]
    fn malformed_nodes_say_what_is_wrong() {
        let refused = |value: Value, fragment: &str| {
            let error = parse(value).expect_err("should be refused");
            assert!(error.contains(fragment), "`{error}` lacks `{fragment}`");
        };
        refused(json!({"queue": "x"}), "needs one of `task`, `chain`");
        refused(
            json!({"task": "math.add", "chain": []}),
            "has task and chain",
        );
        refused(
            json!({"group": [], "args": [1]}),
            "`args` belongs on a `task`",
        );
        refused(
            json!({"task": "math.add", "agrs": [1]}),
            "unknown field `agrs`",
        );
        refused(
            json!({"chunks": {"task": "math.add", "items": []}}),
            "missing field `n`",
        );
    }
}
