//! A workflow compiled for storage: every task it will ever run (queued now, or parked until
//! another's result starts it), the joins that gather group results, and the tree shown by
//! `wtq result`. What [`crate::broker::Broker::submit`] stores atomically.

use serde::{Deserialize, Serialize};

use crate::message::TaskMessage;

/// A compiled workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The workflow's id: `wtq result ID` shows its tree.
    pub id: String,
    pub tree: Tree,
    pub tasks: Vec<PlannedTask>,
    pub joins: Vec<PlannedJoin>,
    /// How long the tree is kept (Unix ms from submit).
    pub ttl_ms: u64,
}

/// One task of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTask {
    /// For a parked task, `args` holds its own arguments, without the input it waits for.
    pub message: TaskMessage,
    /// `None`: queued at submit.
    pub parked: Option<Parked>,
    pub links: Links,
    /// `math.add`: names the task in the failures it causes downstream.
    pub address: String,
    /// The joins whose groups this task is inside, outermost first. Its failure is collected
    /// (`{"error": …}`) only by those of them that collect failures; any other join it
    /// reaches fails, so a failure from outside a group is never mistaken for a member's.
    pub within: Vec<String>,
}

/// How a parked task waits: started by its owner with an input (a result, a list of results,
/// or a failure).
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub input: Input,
    /// A countdown counted from the start, not from submit.
    pub delay_ms: Option<u64>,
}

/// Where a parked task's input goes in its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Immutable (`si`): the input is ignored.
    Ignore,
    /// The first positional argument (its own arguments are a JSON array).
    Prepend,
    /// The first parameter, by name (its own arguments are a JSON object).
    Keyword(String),
}

/// What happens when a task or join ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// Parked tasks started with the output on success; failed (or revoked) with it otherwise.
    pub next: Vec<String>,
    /// Parked tasks started with the failure (a JSON object: `id`, `task`, `kind`,
    /// `message`, and `member` for a chord's header) on failure; skipped on success.
    pub errback: Vec<String>,
    /// The join that receives the output (or the failure).
    pub join: Option<JoinSlot>,
}

impl Links {
    pub fn is_empty(&self) -> bool {
        self.next.is_empty() && self.errback.is_empty() && self.join.is_none()
    }
}

/// A place in a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSlot {
    pub join: String,
    /// 0-based position of the result in the gathered list.
    pub index: usize,
}

/// Gathers the results of a group, in group order; when all `size` arrived, its links run
/// with the list (a chord's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJoin {
    pub id: String,
    pub size: usize,
    /// A member's failure is gathered as `{"error": failure}` instead of failing the join.
    pub collect: bool,
    /// Each result is a list (chunks): the gathered list is their concatenation.
    pub flatten: bool,
    pub links: Links,
}

/// The shape of a submitted workflow, with every task's id: what `wtq result` shows and what
/// the workflow's result is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tree {
    Task(TaskLeaf),
    /// The result is the last member's.
    Chain(Vec<Tree>),
    /// The result is the list of the members' results.
    Group(Vec<Tree>),
    /// A group of batch tasks whose result lists are concatenated.
    Chunks(Vec<Tree>),
    /// The result is the body's.
    Chord {
        header: Vec<Tree>,
        body: Box<Tree>,
    },
    /// A chain, group or chord with its own callbacks (a task has them in its leaf).
    Linked {
        node: Box<Tree>,
        link: Vec<Tree>,
        link_error: Vec<Tree>,
    },
}

/// One task in a [`Tree`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLeaf {
    pub id: String,
    /// `math.add`; `math.add` over many argument lists for map, starmap and chunks.
    pub task: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Tree>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_error: Vec<Tree>,
}

impl Tree {
    /// Every task id in the tree, callbacks included, in tree order.
    pub fn ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_ids(&mut out);
        out
    }

    fn collect_ids(&self, out: &mut Vec<String>) {
        match self {
            Tree::Task(leaf) => {
                out.push(leaf.id.clone());
                for tree in leaf.link.iter().chain(&leaf.link_error) {
                    tree.collect_ids(out);
                }
            }
            Tree::Chain(members) | Tree::Group(members) | Tree::Chunks(members) => {
                for member in members {
                    member.collect_ids(out);
                }
            }
            Tree::Chord { header, body } => {
                for member in header {
                    member.collect_ids(out);
                }
                body.collect_ids(out);
            }
            Tree::Linked {
                node,
                link,
                link_error,
            } => {
                node.collect_ids(out);
                for tree in link.iter().chain(link_error) {
                    tree.collect_ids(out);
                }
            }
        }
    }
}
