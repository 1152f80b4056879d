//! Workflows (Celery's canvas): signatures composed into chains, groups, chords, chunks and
//! maps. [`Node`] is the JSON document (`wtq workflow submit`, `POST /v1/workflows`) and the
//! Rust builder; [`compile`] turns it into a [`Plan`] of tasks and joins that a broker stores
//! whole; the broker carries the links out atomically as tasks end, so a chord's callback
//! fires exactly once with no polling task; [`WorkflowResult`] reads the outcome back.

mod compile;
mod doc;
mod plan;
mod result;

pub use compile::MAX_WORKFLOW_TASKS;
pub(crate) use compile::plan;

pub use doc::{Kind, Node, Options, Signature, chain, chord, group, task};

pub use plan::{Input, JoinSlot, Links, Parked, Plan, PlannedJoin, PlannedTask, TaskLeaf, Tree};
pub use result::WorkflowResult;
