//! What every request shares: the root broker, the sandbox, the settings, and two short-lived
//! caches (token lookups and tenant contexts, each at most [`CACHE_TTL`] old) so a burst of
//! requests costs the broker one lookup. Not here: deciding who a request is ([`super::auth`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wtq_client::broker::{self, Tenancy};
use wtq_client::tenancy::{Tenant, TokenRecord, namespace_of};
use wtq_client::{AnyBroker, Client};

use super::error::{ApiError, ApiResult};
use super::metrics::ServiceMetrics;
use crate::sandbox::Sandbox;

/// How long a token lookup or a tenant's record (its quotas) is reused: a revoked token or a
/// changed quota takes effect on every service process within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// Cached entries past which stale ones are swept on insert, so the caches stay as small as
/// the set of tokens and tenants actually in use.
const CACHE_SWEEP: usize = 4096;

/// The state every handler sees.
pub type AppState = Arc<Shared>;

/// See the module docs.
pub struct Shared {
    /// The root broker: the tenant and token registry; tenants' brokers derive from it.
    pub broker: AnyBroker,
    pub sandbox: Sandbox,
    pub broker_timeout: Duration,
    pub max_body: u64,
    /// `Some` in local mode: the one tenant every request acts for.
    pub local: Option<Arc<TenantContext>>,
    /// Flips to `true` when the service starts shutting down, ending event streams and waits.
    pub shutdown: watch::Receiver<bool>,
    /// What `GET /metrics` shows.
    pub metrics: ServiceMetrics,
    tokens: Mutex<HashMap<String, CachedToken>>,
    tenants: Mutex<HashMap<String, Arc<TenantContext>>>,
}

/// A token lookup, kept [`CACHE_TTL`].
struct CachedToken {
    hash: String,
    record: TokenRecord,
    fetched: Instant,
}

/// One tenant as requests see it: its record (quotas) and its namespace's broker and client.
pub struct TenantContext {
    pub tenant: Tenant,
    /// The broker over the tenant's namespace: everything the tenant does goes through it.
    pub broker: AnyBroker,
    /// Checks calls against the tenant's registry (caching it for a second).
    pub client: Client<AnyBroker>,
    fetched: Instant,
}

impl TenantContext {
    /// The context of `tenant`, whose keys are in `namespace`.
    pub fn new(
        root: &AnyBroker,
        tenant: Tenant,
        namespace: &str,
    ) -> Result<TenantContext, broker::Error> {
        let broker = root.namespaced(namespace)?;
        Ok(TenantContext {
            tenant,
            client: Client::with_broker(broker.clone()),
            broker,
            fetched: Instant::now(),
        })
    }
}

impl Shared {
    /// The shared state; `local` is the local tenant's context in local mode.
    pub fn new(
        broker: AnyBroker,
        sandbox: Sandbox,
        broker_timeout: Duration,
        max_body: u64,
        local: Option<TenantContext>,
        shutdown: watch::Receiver<bool>,
    ) -> Shared {
        Shared {
            broker,
            sandbox,
            broker_timeout,
            max_body,
            local: local.map(Arc::new),
            shutdown,
            metrics: ServiceMetrics::new(
                super::routes::routes()
                    .iter()
                    .map(|route| (route.method, route.path))
                    .collect(),
            ),
            tokens: Mutex::default(),
            tenants: Mutex::default(),
        }
    }

    /// Runs one broker call under the broker timeout: a broker that does not answer is a 503
    /// within about a second, never a hang.
    pub async fn call<T, E: Into<ApiError>>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> ApiResult<T> {
        match tokio::time::timeout(self.broker_timeout, call).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The 503 for a broker that did not answer within the broker timeout. It claims nothing
    /// either way: a write may have landed just as the timeout fired.
    pub fn timed_out(&self) -> ApiError {
        tracing::warn!(timeout = ?self.broker_timeout, "broker did not answer in time");
        ApiError::unavailable(format!(
            "the broker did not answer within {} ms; retry shortly (an enqueue with the same task_id or idempotency_key is safe to repeat)",
            self.broker_timeout.as_millis()
        ))
    }

    /// Resolves once the service starts shutting down (never, if it cannot any more).
    pub async fn shutting_down(&self) {
        let mut shutdown = self.shutdown.clone();
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The record of the token whose hash is `hash`, from the cache when fresh.
    pub async fn token(&self, hash: &str) -> ApiResult<Option<TokenRecord>> {
        if let Some(cached) = lock(&self.tokens).get(hash)
            && cached.fetched.elapsed() < CACHE_TTL
            // The map found it by hash already; the comparison that decides is constant-time.
            && super::token::same_hash(&cached.hash, hash)
        {
            return Ok(Some(cached.record.clone()));
        }
        let record = self.call(self.broker.token(hash)).await?;
        let mut tokens = lock(&self.tokens);
        match &record {
            // Only tokens that exist are cached: caching misses would let anyone grow the
            // cache by sending random tokens.
            Some(record) => {
                sweep(&mut tokens, |entry| entry.fetched);
                tokens.insert(
                    hash.to_string(),
                    CachedToken {
                        hash: hash.to_string(),
                        record: record.clone(),
                        fetched: Instant::now(),
                    },
                );
            }
            None => {
                tokens.remove(hash);
            }
        }
        Ok(record)
    }

    /// Forgets cached lookups of the token `id` (revoked by this process: at once here).
    pub fn forget_token(&self, id: &str) {
        lock(&self.tokens).retain(|_, entry| entry.record.id != id);
    }

    /// The context of tenant `name`, its record at most [`CACHE_TTL`] old; `None` if there
    /// is no such tenant.
    pub async fn tenant(&self, name: &str) -> ApiResult<Option<Arc<TenantContext>>> {
        let cached = lock(&self.tenants).get(name).cloned();
        if let Some(context) = &cached
            && context.fetched.elapsed() < CACHE_TTL
        {
            return Ok(cached);
        }
        let Some(tenant) = self.call(self.broker.tenant(name)).await? else {
            lock(&self.tenants).remove(name);
            return Ok(None);
        };
        // The namespace's broker and client (with its registry cache) outlive a refresh of
        // the tenant's record.
        let context = match cached {
            Some(old) => TenantContext {
                tenant,
                broker: old.broker.clone(),
                client: old.client.clone(),
                fetched: Instant::now(),
            },
            None => TenantContext::new(&self.broker, tenant, &namespace_of(name))?,
        };
        let context = Arc::new(context);
        let mut tenants = lock(&self.tenants);
        sweep(&mut tenants, |entry| entry.fetched);
        tenants.insert(name.to_string(), Arc::clone(&context));
        Ok(Some(context))
    }

    /// Forgets the cached record of tenant `name` (changed by this process: at once here).
    pub fn forget_tenant(&self, name: &str) {
        lock(&self.tenants).remove(name);
    }
}

/// Locks a cache. The guard is never held across an await, and a panic while holding it
/// leaves at worst a stale entry, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops stale entries once the map has grown past [`CACHE_SWEEP`].
fn sweep<V>(map: &mut HashMap<String, V>, fetched: impl Fn(&V) -> Instant) {
    if map.len() >= CACHE_SWEEP {
        map.retain(|_, entry| fetched(entry).elapsed() < CACHE_TTL);
    }
}
