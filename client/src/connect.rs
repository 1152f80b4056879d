//! One URL picks the broker: `redis://` / `rediss://` (optionally `?namespace=NAME`) talks to
//! Redis; `memory://` is a fresh in-process broker. [`AnyBroker`] dispatches to either.

use std::future::Future;
use std::time::Duration;

use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{
    Broker, Delivery, Enqueued, Error, Lease, Mark, NewTask, Revoked, Settle, Settled,
};
use crate::message::TaskRecord;
use crate::registry::{ComponentRecord, Upload};

/// The namespace when the URL names none: every key is `wtq:{default}:…`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A broker chosen by URL.
#[derive(Clone)]
pub enum AnyBroker {
    Redis(RedisBroker),
    Memory(MemoryBroker),
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
        "http" | "https" => Err(bad("the HTTP service is not available yet; use redis://")),
        _ => Err(bad("unknown scheme; use redis:// or rediss://")),
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
    async fn a_bad_url_does_not_show_its_password() {
        let error = connect("redis://:hunter2@127.0.0.1:1?namespace=bad!")
            .await
            .err()
            .expect("refused");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
