//! Reading a workflow back: its result (a chain's last result, a group's list in group order,
//! a chord's body's, chunks' lists concatenated), its progress, every member's record, and
//! revoking what has not finished.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::plan::Tree;
use crate::broker::{Error, Revoked};
use crate::client::{AsyncResult, ResultError};
use crate::message::{State, TaskRecord};
use crate::producer::Producer;

/// A handle on a submitted workflow, as Celery's `AsyncResult` of a canvas (`GroupResult`
/// for a group).
#[derive(Clone)]
pub struct WorkflowResult<P> {
    id: String,
    tree: Tree,
    producer: P,
}

impl<P> std::fmt::Debug for WorkflowResult<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowResult")
            .field("id", &self.id)
            .field("tree", &self.tree)
            .finish_non_exhaustive()
    }
}

impl<P: Producer> WorkflowResult<P> {
    pub fn new(id: String, tree: Tree, producer: P) -> Self {
        WorkflowResult { id, tree, producer }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The workflow's shape with every task id.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The tasks whose results make the workflow's result, in order.
    pub fn result_ids(&self) -> Vec<&str> {
        let mut ids = Vec::new();
        result_ids(&self.tree, &mut ids);
        ids
    }

    /// Waits up to `timeout` (without polling) for the workflow's result. For a group, the
    /// results in group order, as Celery's `GroupResult.join`. The first failed or revoked
    /// task among those the result is made of is the error (a chain's or chord's failure
    /// reaches its last task, which names the task that failed).
    #[doc(alias = "join")]
    pub async fn get(&self, timeout: Duration) -> Result<Value, ResultError> {
        let deadline = Instant::now() + timeout;
        let mut outputs = HashMap::new();
        for id in self.result_ids() {
            let left = deadline.saturating_duration_since(Instant::now());
            let task = AsyncResult::new(id.to_string(), self.producer.clone());
            let output = task.get(left).await.map_err(|error| match error {
                // The workflow's whole wait, not what was left of it for this task.
                ResultError::Timeout { id, state, .. } => {
                    ResultError::Timeout { id, timeout, state }
                }
                other => other,
            })?;
            outputs.insert(id.to_string(), output);
        }
        Ok(value(&self.tree, &mut outputs))
    }

    /// How many of the tasks the result is made of succeeded (Celery's `completed_count`).
    pub async fn completed_count(&self) -> Result<usize, Error> {
        let mut count = 0;
        for id in self.result_ids() {
            if let Some(record) = self.producer.record(id).await?
                && record.state == State::Success
            {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Whether every task the result is made of finished.
    pub async fn ready(&self) -> Result<bool, Error> {
        for id in self.result_ids() {
            match self.producer.record(id).await? {
                Some(record) if record.state.is_final() => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Every task's record (callbacks included), by id; absent when expired.
    pub async fn records(&self) -> Result<HashMap<String, TaskRecord>, Error> {
        let mut records = HashMap::new();
        for id in self.tree.ids() {
            if let Some(record) = self.producer.record(&id).await? {
                records.insert(id, record);
            }
        }
        Ok(records)
    }

    /// Revokes every task not yet finished (a running one is stopped with `terminate`);
    /// tasks that wait for them end REVOKED too. Returns how many were revoked or asked to
    /// stop. Last first: callbacks and later steps are revoked while still parked, before
    /// revoking what they wait for could start an errback.
    pub async fn revoke(&self, terminate: bool) -> Result<usize, Error> {
        let mut count = 0;
        for id in self.tree.ids().into_iter().rev() {
            match self.producer.revoke(&id, terminate).await? {
                Revoked::Revoked | Revoked::Running { terminating: true } => count += 1,
                Revoked::Running { terminating: false }
                | Revoked::AlreadyFinal(_)
                | Revoked::Unknown => {}
            }
        }
        Ok(count)
    }
}

fn result_ids<'a>(tree: &'a Tree, out: &mut Vec<&'a str>) {
    match tree {
        Tree::Task(leaf) => out.push(&leaf.id),
        Tree::Chain(members) => {
            if let Some(last) = members.last() {
                result_ids(last, out);
            }
        }
        Tree::Group(members) | Tree::Chunks(members) => {
            members.iter().for_each(|member| result_ids(member, out));
        }
        Tree::Chord { body, .. } => result_ids(body, out),
        Tree::Linked { node, .. } => result_ids(node, out),
    }
}

fn value(tree: &Tree, outputs: &mut HashMap<String, Value>) -> Value {
    match tree {
        Tree::Task(leaf) => outputs.remove(&leaf.id).unwrap_or(Value::Null),
        Tree::Chain(members) => members
            .last()
            .map_or(Value::Null, |last| value(last, outputs)),
        Tree::Group(members) => Value::Array(
            members
                .iter()
                .map(|member| value(member, outputs))
                .collect(),
        ),
        Tree::Chunks(members) => Value::Array(
            members
                .iter()
                .flat_map(|member| match value(member, outputs) {
                    Value::Array(items) => items,
                    other => vec![other],
                })
                .collect(),
        ),
        Tree::Chord { body, .. } => value(body, outputs),
        Tree::Linked { node, .. } => value(node, outputs),
    }
}
