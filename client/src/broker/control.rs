//! Remote control of live workers (`wtq inspect`, `wtq control`, Celery's spellings): a
//! request is broadcast to every worker of a namespace, the workers it names answer, and the
//! sender collects the replies until every worker that heard it answered or a timeout passed.
//! Implemented by every broker (Redis: `redis/control.rs`, pub/sub; memory:
//! `memory_control.rs`) and dispatched by [`AnyBroker`](crate::AnyBroker).
//!
//! Nothing is stored: a worker that is not running when a request is sent never sees it, as
//! with Celery's broadcast. What must outlive workers (rate and time limits) is stored by the
//! broker itself and only announced through here.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Error;

/// Requests a worker may buffer before the oldest are dropped (it is slow or stuck).
pub const REQUEST_BUFFER: usize = 64;

/// One broadcast: what to do, and which workers should do it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// Unique per request; replies carry it.
    pub id: String,
    /// Worker names (`-d`); empty means every worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination: Vec<String>,
    #[serde(flatten)]
    pub command: Command,
}

impl ControlRequest {
    /// A request with a fresh id.
    pub fn new(command: Command, destination: Vec<String>) -> ControlRequest {
        ControlRequest {
            id: uuid::Uuid::new_v4().to_string(),
            destination,
            command,
        }
    }

    /// Whether the worker called `name` should act on it.
    pub fn is_for(&self, name: &str) -> bool {
        self.destination.is_empty() || self.destination.iter().any(|d| d == name)
    }
}

/// What a worker is asked to do or to tell (Celery's inspect and control commands).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Answer at once.
    Ping,
    /// The tasks it is running.
    Active,
    /// The tasks it holds that have not started (prefetched).
    Reserved,
    /// The tasks waiting for their ETA, countdown or retry in its queues.
    Scheduled,
    /// Its pool, counters, queues and resource use.
    Stats,
    /// The tasks it can run, with their run-time limits.
    Registered,
    /// Shut down warmly, as on SIGTERM.
    Shutdown,
    /// Add `n` slots.
    PoolGrow { n: usize },
    /// Remove `n` slots (running calls finish first).
    PoolShrink { n: usize },
    /// Scale between `min` and `max` slots with the backlog.
    Autoscale { max: usize, min: usize },
    /// Start consuming `queue`.
    AddConsumer { queue: String },
    /// Stop consuming `queue`.
    CancelConsumer { queue: String },
    /// A task's rate or time limit changed in the broker: read them again now.
    PoliciesChanged,
}

/// One worker's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// The request answered.
    pub request: String,
    /// The worker's name.
    pub worker: String,
    /// What it did or reports (JSON), or why it could not.
    #[serde(flatten)]
    pub outcome: ReplyOutcome,
}

/// A reply's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    Ok(serde_json::Value),
    Error(String),
}

/// Broadcasting control requests and answering them, in one namespace.
pub trait Control: Send + Sync + 'static {
    /// Sends `request` to the namespace's live workers and collects their replies until every
    /// worker that heard it answered (those it does not name do not answer), or `timeout`.
    fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<ControlReply>, Error>> + Send;

    /// The requests broadcast to this namespace from now on. The receiver ends only with the
    /// broker.
    fn control_requests(
        &self,
    ) -> impl Future<Output = Result<mpsc::Receiver<ControlRequest>, Error>> + Send;

    /// Sends a worker's reply to the request's sender.
    fn reply(&self, reply: &ControlReply) -> impl Future<Output = Result<(), Error>> + Send;

    /// The first `limit` messages of `queue`'s delayed set (ETA, countdown, retry, a booked
    /// rate-limit slot): their ids and due times (Unix ms), soonest first.
    fn delayed(
        &self,
        queue: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, Error>> + Send;
}

/// Collects replies to a request heard by `heard` workers: stops when every one of them has
/// answered (an addressed request: when each named worker has), or at `deadline`.
pub(crate) async fn collect(
    request: &ControlRequest,
    heard: usize,
    replies: &mut mpsc::Receiver<ControlReply>,
    timeout: Duration,
) -> Vec<ControlReply> {
    let expected = if request.destination.is_empty() {
        heard
    } else {
        heard.min(request.destination.len())
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut collected: Vec<ControlReply> = Vec::new();
    while collected.len() < expected {
        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Some(reply)) if reply.request == request.id => {
                // A worker name used twice answers twice; both are kept, as they are two workers.
                collected.push(reply);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    collected.sort_by(|a, b| a.worker.cmp(&b.worker));
    collected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_have_a_stable_wire_form() {
        let request = ControlRequest {
            id: "r1".into(),
            destination: vec!["w1".into()],
            command: Command::PoolGrow { n: 2 },
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"id":"r1","destination":["w1"],"command":"pool-grow","n":2}"#
        );
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&json).unwrap(),
            request
        );
        let reply = ControlReply {
            request: "r1".into(),
            worker: "w1".into(),
            outcome: ReplyOutcome::Ok(serde_json::json!({"concurrency": 3})),
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"request":"r1","worker":"w1","ok":{"concurrency":3}}"#
        );
        assert_eq!(serde_json::from_str::<ControlReply>(&json).unwrap(), reply);
        assert!(request.is_for("w1") && !request.is_for("w2"));
        assert!(ControlRequest::new(Command::Ping, vec![]).is_for("anyone"));
    }
}
