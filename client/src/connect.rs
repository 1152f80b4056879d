//! One URL picks where tasks go: `redis://` / `rediss://` (optionally `?namespace=NAME`) talks
//! to Redis; `memory://` is a fresh in-process broker; `http://` / `https://` is the service
//! (`wtq serve`, `wtq up`). [`AnyBroker`] dispatches to either broker (what a worker needs);
//! [`Endpoint`] to a broker or the service (what a producer needs).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use crate::api::{EnqueueRequest, WorkflowResponse};
use crate::broker::control::{ControlReply, ControlRequest};
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{
    Broker, Delivery, Enqueued, Error, Lease, Mark, NewTask, Revoked, Settle, Settled,
};
use crate::broker::{Control, Schedules};
use crate::client::ClientError;
use crate::http::HttpApi;
use crate::message::TaskRecord;
use crate::producer::{self, ComponentCache};
use crate::registry::{ComponentRecord, Upload};
use crate::schedule::{Fired, ScheduleEntry};
use crate::workflow::{Node, Plan, Tree};

/// The namespace when the URL names none: every key is `wtq:{default}:…`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A broker chosen by URL.
#[derive(Clone)]
pub enum AnyBroker {
    Redis(RedisBroker),
    Memory(MemoryBroker),
}

/// Where a producer's calls go, chosen by URL.
#[derive(Clone)]
pub enum Endpoint {
    /// `redis://`, `rediss://`, `memory://`: the broker itself.
    Broker(AnyBroker),
    /// `http://`, `https://`: the service's API.
    Http(HttpApi),
}

impl Endpoint {
    /// Connects to what `url` names; `token` is the service's API token (a broker URL ignores
    /// it, so one `WTQ_TOKEN` in the environment does not get in the way of Redis).
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Endpoint, Error> {
        if is_http(url) {
            Ok(Endpoint::Http(HttpApi::new(url, token)?))
        } else {
            Ok(Endpoint::Broker(connect(url).await?))
        }
    }
}

/// Whether `url` names the service (`http://`, `https://`) rather than a broker.
pub fn is_http(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    })
}

/// Connects to the broker a URL names.
pub async fn connect(url: &str) -> Result<AnyBroker, Error> {
    let bad = |reason: &str| Error::Url {
        // A password in the URL must not reach an error message or a log.
        url: crate::broker::redis::redact(url),
        reason: reason.to_string(),
    };
    let (scheme, _) = url
        .split_once("://")
        .ok_or_else(|| bad("expected redis://HOST:PORT"))?;
    match scheme {
        "redis" | "rediss" => {
            let (base, namespace) = split_namespace(url).map_err(|reason| bad(&reason))?;
            Ok(AnyBroker::Redis(
                RedisBroker::connect(&base, &namespace).await?,
            ))
        }
        "memory" => Ok(AnyBroker::Memory(MemoryBroker::new())),
        "http" | "https" => Err(bad(
            "that is the service's API; this needs the broker itself: redis://HOST:PORT",
        )),
        _ => Err(bad("unknown scheme; use redis://, rediss:// or http(s)://")),
    }
}

/// Takes `namespace=NAME` out of the URL's query, leaving the rest for the Redis client.
fn split_namespace(url: &str) -> Result<(String, String), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), DEFAULT_NAMESPACE.to_string()));
    };
    let mut namespace = DEFAULT_NAMESPACE.to_string();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("namespace", value)) => namespace = value.to_string(),
            _ => rest.push(pair),
        }
    }
    if !crate::registry::valid_name(&namespace) || namespace.len() > 64 {
        return Err(format!(
            "namespace `{namespace}`: use 1 to 64 ASCII letters, digits, `_` or `-`"
        ));
    }
    let base = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((base, namespace))
}

macro_rules! endpoint {
    ($self:ident, $producer:ident => $call:expr) => {
        async move {
            match $self {
                Endpoint::Broker($producer) => $call.await,
                Endpoint::Http($producer) => $call.await,
            }
        }
    };
}

// As for `AnyBroker` below: `async move` bodies so each delegated future is checked `Send`.
// Calls name the trait: a broker is both a `Broker` and a `Producer`.
#[allow(clippy::manual_async_fn)]
impl producer::Producer for Endpoint {
    fn enqueue_calls(
        &self,
        calls: Vec<EnqueueRequest>,
        components: &ComponentCache,
    ) -> impl Future<Output = Result<Vec<crate::broker::Enqueued>, ClientError>> + Send {
        endpoint!(self, p => producer::Producer::enqueue_calls(p, calls, components))
    }

    fn record(&self, id: &str) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        endpoint!(self, p => producer::Producer::record(p, id))
    }

    fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        endpoint!(self, p => producer::Producer::wait(p, id, timeout))
    }

    fn revoke(
        &self,
        id: &str,
        terminate: bool,
    ) -> impl Future<Output = Result<Revoked, Error>> + Send {
        endpoint!(self, p => producer::Producer::revoke(p, id, terminate))
    }

    fn purge(&self, queue: &str) -> impl Future<Output = Result<usize, Error>> + Send {
        endpoint!(self, p => producer::Producer::purge(p, queue))
    }

    fn dead(&self, limit: usize) -> impl Future<Output = Result<Vec<TaskRecord>, Error>> + Send {
        endpoint!(self, p => producer::Producer::dead(p, limit))
    }

    fn retry_dead(&self, id: Option<&str>) -> impl Future<Output = Result<usize, Error>> + Send {
        endpoint!(self, p => producer::Producer::retry_dead(p, id))
    }

    fn purge_dead(&self) -> impl Future<Output = Result<usize, Error>> + Send {
        endpoint!(self, p => producer::Producer::purge_dead(p))
    }

    fn components(&self) -> impl Future<Output = Result<Vec<ComponentRecord>, Error>> + Send {
        endpoint!(self, p => producer::Producer::components(p))
    }

    fn component(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, Error>> + Send {
        endpoint!(self, p => producer::Producer::component(p, name))
    }

    fn submit_workflow(
        &self,
        workflow: &Node,
        id: Option<String>,
        components: &ComponentCache,
    ) -> impl Future<Output = Result<WorkflowResponse, ClientError>> + Send {
        endpoint!(self, p => producer::Producer::submit_workflow(p, workflow, id, components))
    }

    fn workflow(&self, id: &str) -> impl Future<Output = Result<Option<Tree>, Error>> + Send {
        endpoint!(self, p => producer::Producer::workflow(p, id))
    }
}

macro_rules! dispatch {
    ($self:ident, $broker:ident => $call:expr) => {
        async move {
            match $self {
                AnyBroker::Redis($broker) => $call.await,
                AnyBroker::Memory($broker) => $call.await,
            }
        }
    };
}

// Written as `fn … -> impl Future + Send` with `async move` bodies, as the trait declares, so
// the compiler checks each delegated future is `Send`.
#[allow(clippy::manual_async_fn)]
impl Broker for AnyBroker {
    fn enqueue(
        &self,
        tasks: Vec<NewTask>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Enqueued>, Error>> + Send {
        dispatch!(self, b => b.enqueue(tasks, now_ms))
    }

    fn reserve(
        &self,
        worker: &str,
        queues: &[String],
        max: usize,
        lease_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Delivery>, Error>> + Send {
        dispatch!(self, b => b.reserve(worker, queues, max, lease_ms, now_ms))
    }

    fn renew(
        &self,
        leases: &[Lease],
        lease_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<bool>, Error>> + Send {
        dispatch!(self, b => b.renew(leases, lease_ms, now_ms))
    }

    fn mark(&self, marks: &[Mark]) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.mark(marks))
    }

    fn settle(
        &self,
        settles: Vec<Settle>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Settled>, Error>> + Send {
        dispatch!(self, b => b.settle(settles, now_ms))
    }

    fn reap(&self, now_ms: u64, limit: usize) -> impl Future<Output = Result<usize, Error>> + Send {
        dispatch!(self, b => b.reap(now_ms, limit))
    }

    fn wait_for_work(
        &self,
        queues: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.wait_for_work(queues, timeout))
    }

    fn record(&self, id: &str) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        dispatch!(self, b => b.record(id))
    }

    fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskRecord>, Error>> + Send {
        dispatch!(self, b => b.wait(id, timeout))
    }

    fn revoke(
        &self,
        id: &str,
        terminate: bool,
        now_ms: u64,
    ) -> impl Future<Output = Result<Revoked, Error>> + Send {
        dispatch!(self, b => b.revoke(id, terminate, now_ms))
    }

    fn terminations(
        &self,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<String>, Error>> + Send {
        dispatch!(self, b => b.terminations())
    }

    fn terminating(&self, id: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        dispatch!(self, b => b.terminating(id))
    }

    fn purge(&self, queue: &str, now_ms: u64) -> impl Future<Output = Result<usize, Error>> + Send {
        dispatch!(self, b => b.purge(queue, now_ms))
    }

    fn dead(&self, limit: usize) -> impl Future<Output = Result<Vec<TaskRecord>, Error>> + Send {
        dispatch!(self, b => b.dead(limit))
    }

    fn retry_dead(
        &self,
        id: Option<&str>,
        now_ms: u64,
    ) -> impl Future<Output = Result<usize, Error>> + Send {
        dispatch!(self, b => b.retry_dead(id, now_ms))
    }

    fn purge_dead(&self) -> impl Future<Output = Result<usize, Error>> + Send {
        dispatch!(self, b => b.purge_dead())
    }

    fn put_component(
        &self,
        upload: Upload,
    ) -> impl Future<Output = Result<ComponentRecord, Error>> + Send {
        dispatch!(self, b => b.put_component(upload))
    }

    fn components(&self) -> impl Future<Output = Result<Vec<ComponentRecord>, Error>> + Send {
        dispatch!(self, b => b.components())
    }

    fn component(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, Error>> + Send {
        dispatch!(self, b => b.component(name))
    }

    fn blob(&self, digest: &str) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send {
        dispatch!(self, b => b.blob(digest))
    }

    fn depth(&self, queue: &str) -> impl Future<Output = Result<usize, Error>> + Send {
        dispatch!(self, b => b.depth(queue))
    }

    fn submit(&self, plan: Plan, now_ms: u64) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.submit(plan, now_ms))
    }

    fn workflow(&self, id: &str) -> impl Future<Output = Result<Option<Tree>, Error>> + Send {
        dispatch!(self, b => b.workflow(id))
    }

    fn set_rate_limit(
        &self,
        task: &str,
        rate: Option<crate::tenancy::Rate>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.set_rate_limit(task, rate))
    }

    fn set_time_limit(
        &self,
        task: &str,
        limit_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.set_time_limit(task, limit_ms))
    }

    fn task_policies(
        &self,
    ) -> impl Future<
        Output = Result<std::collections::BTreeMap<String, crate::registry::TaskPolicy>, Error>,
    > + Send {
        dispatch!(self, b => b.task_policies())
    }
}

// As for `Broker` above.
#[allow(clippy::manual_async_fn)]
impl Control for AnyBroker {
    fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<ControlReply>, Error>> + Send {
        dispatch!(self, b => b.broadcast(request, timeout))
    }

    fn control_requests(
        &self,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<ControlRequest>, Error>> + Send
    {
        dispatch!(self, b => b.control_requests())
    }

    fn reply(&self, reply: &ControlReply) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.reply(reply))
    }

    fn delayed(
        &self,
        queue: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, Error>> + Send {
        dispatch!(self, b => b.delayed(queue, limit))
    }
}

// As for `Broker` above.
#[allow(clippy::manual_async_fn)]
impl Schedules for AnyBroker {
    fn put_schedule(
        &self,
        entry: &ScheduleEntry,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.put_schedule(entry))
    }

    fn schedules(&self) -> impl Future<Output = Result<Vec<ScheduleEntry>, Error>> + Send {
        dispatch!(self, b => b.schedules())
    }

    fn remove_schedule(&self, name: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        dispatch!(self, b => b.remove_schedule(name))
    }

    fn fired(&self) -> impl Future<Output = Result<HashMap<String, Fired>, Error>> + Send {
        dispatch!(self, b => b.fired())
    }

    fn lead(
        &self,
        holder: &str,
        held: Option<u64>,
        lease_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send {
        dispatch!(self, b => b.lead(holder, held, lease_ms, now_ms))
    }

    fn resign(&self, holder: &str, token: u64) -> impl Future<Output = Result<(), Error>> + Send {
        dispatch!(self, b => b.resign(holder, token))
    }

    fn record_fired(
        &self,
        name: &str,
        fired: &Fired,
        holder: &str,
        token: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        dispatch!(self, b => b.record_fired(name, fired, holder, token, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_come_from_the_query() {
        let split = |url: &str| split_namespace(url);
        assert_eq!(
            split("redis://h:1"),
            Ok(("redis://h:1".into(), "default".into()))
        );
        assert_eq!(
            split("redis://h:1?namespace=acme"),
            Ok(("redis://h:1".into(), "acme".into()))
        );
        assert_eq!(
            split("redis://h:1/0?protocol=resp3&namespace=a"),
            Ok(("redis://h:1/0?protocol=resp3".into(), "a".into()))
        );
        assert!(split("redis://h:1?namespace=a{b}").is_err());
    }

    #[tokio::test]
    async fn the_scheme_picks_broker_or_service() {
        for (url, http) in [
            ("http://127.0.0.1:7878", true),
            ("HTTPS://wtq.example.com", true),
            ("memory://", false),
        ] {
            let endpoint = Endpoint::connect(url, Some("secret")).await.expect(url);
            assert_eq!(matches!(endpoint, Endpoint::Http(_)), http, "{url}");
        }
        for url in ["redis://h:1", "rediss://h:1", "memory://"] {
            assert!(!is_http(url), "{url}");
        }
        for bad in ["ftp://h", "127.0.0.1:7878", "http://", "http://h:99999"] {
            let error = Endpoint::connect(bad, Some("secret"))
                .await
                .err()
                .expect(bad);
            assert!(matches!(error, Error::Url { .. }), "{bad}: {error}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_worker_cannot_use_the_service() {
        let error = connect("http://127.0.0.1:7878")
            .await
            .err()
            .expect("refused");
        assert!(error.to_string().contains("redis://"), "{error}");
    }

    #[tokio::test]
    async fn a_bad_url_does_not_show_its_password() {
        let error = connect("redis://:hunter2@127.0.0.1:1?namespace=bad!")
            .await
            .err()
            .expect("refused");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
