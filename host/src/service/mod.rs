//! The hosted service: `wtq serve` and `wtq up`, the HTTP API of `docs/http-api.md` over the
//! broker, for many tenants. Entry point: [`Service::bind`] then [`Service::run`].
//!
//! # Layout
//! - [`routes`](self::routes): the one list of routes, the router, `/healthz`, `/openapi.json`,
//!   `/metrics` (counted per route by `metrics`).
//! - `auth`: who a request acts for (bearer token or the local tenant).
//! - `state`: what requests share; token and tenant caches (at most a second old: a revoked
//!   token or a changed quota takes effect on every process within a second).
//! - `tasks`, `components`, `events`, `admin`: the handlers, thin over the broker and client.
//! - `quota`: caps, rate, storage. `body`: size-limited bodies, gzip, extractors in the API's
//!   error shape. `error`: that shape. `openapi`: the document. [`token`]: token secrets.
//!
//! Every broker call runs under [`ServiceConfig::broker_timeout`]: a broker that does not
//! answer is a 503 within about that long, never a hang and never a 2xx it did not confirm.
//! A tenant reaches its own namespace only (`namespace_of(tenant)`), so another tenant's
//! objects are simply not there. Tokens are never logged: no layer here logs headers.

mod admin;
mod auth;
mod body;
mod components;
mod error;
mod events;
mod metrics;
mod openapi;
mod quota;
mod routes;
mod state;
mod tasks;
pub mod token;
mod workflows;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wtq_client::AnyBroker;
use wtq_client::message::now_ms;
use wtq_client::tenancy::{Quotas, Tenant};

use crate::sandbox::Sandbox;
use state::{Shared, TenantContext};

/// Default [`ServiceConfig::broker_timeout`].
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`ServiceConfig::max_body`]: the default upload limit, so the largest component a
/// worker accepts can be deployed raw.
pub const DEFAULT_MAX_BODY: u64 = crate::registry::DEFAULT_MAX_UPLOAD;

/// How the service is run.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where to listen (port 0: any free port; see [`Service::local_addr`]).
    pub listen: SocketAddr,
    pub auth: Auth,
    /// Longest wait for one broker call before answering 503.
    pub broker_timeout: Duration,
    /// Largest request body accepted at all (bytes); uploads are also capped by the tenant's
    /// `max_upload`.
    pub max_body: u64,
}

impl ServiceConfig {
    /// Listening on `listen` with `auth` and the default timeout and body limit.
    pub fn new(listen: SocketAddr, auth: Auth) -> ServiceConfig {
        ServiceConfig {
            listen,
            auth,
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Who requests act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Bearer tokens looked up in the tenant registry.
    Tokens,
    /// Every request acts for one local tenant without a token (`wtq up` on loopback); its
    /// keys are in this namespace.
    Local { namespace: String },
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}; choose another address or port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("local namespace `{namespace}`: {source}")]
    Namespace {
        namespace: String,
        source: wtq_client::broker::Error,
    },
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet running, service.
pub struct Service {
    listener: TcpListener,
    router: Router,
    stop: watch::Sender<bool>,
}

impl Service {
    /// Binds the listener and builds the router; `broker` is the root broker (the tenant
    /// registry), from which each tenant's namespaced broker is derived.
    pub async fn bind(
        config: ServiceConfig,
        broker: AnyBroker,
        sandbox: Sandbox,
    ) -> Result<Service, ServiceError> {
        let (router, stop) = app(&config, broker, sandbox)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServiceError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Service {
            listener,
            router,
            stop,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has an address; the configured one is the fallback.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves, then stops accepting, ends event streams and waits,
    /// and returns once in-flight requests are answered.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let stop = self.stop;
        let signal = async move {
            shutdown.await;
            // Open event streams and long polls end now, or the graceful shutdown would wait
            // for them (a stream forever).
            stop.send_replace(true);
        };
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(signal)
            .await
            .map_err(ServiceError::Serve)
    }
}

/// The router for `config`, and the switch that tells long requests the service is stopping.
fn app(
    config: &ServiceConfig,
    broker: AnyBroker,
    sandbox: Sandbox,
) -> Result<(Router, watch::Sender<bool>), ServiceError> {
    let local = match &config.auth {
        Auth::Tokens => None,
        Auth::Local { namespace } => {
            let tenant = Tenant {
                name: namespace.clone(),
                created_ms: now_ms(),
                quotas: Quotas::default(),
            };
            let context = TenantContext::new(&broker, tenant, namespace).map_err(|source| {
                ServiceError::Namespace {
                    namespace: namespace.clone(),
                    source,
                }
            })?;
            Some(context)
        }
    };
    let (stop, stopping) = watch::channel(false);
    let shared = Shared::new(
        broker,
        sandbox,
        config.broker_timeout,
        config.max_body,
        local,
        stopping,
    );
    Ok((routes::router(Arc::new(shared)), stop))
}
