//! Tasks' run-time limits set by operators (`wtq control time-limit`), as a lane sees them:
//! read from the broker at most once a second, and at once after a `policies-changed`
//! request. (Rate limits need nothing here: the broker applies them when it leases.)
//!
//! Every call looks them up, so the common path is one short lock and an `Arc` clone: only
//! the first lookup waits for the broker; later refreshes are made by one caller while the
//! others go on with what was read before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wtq_client::broker::Broker;
use wtq_client::registry::TaskPolicy;

/// How long the policies read are trusted: a change reaches running workers within this
/// time even when its announcement was missed.
const FRESH_FOR: Duration = Duration::from_secs(1);

type Table = Arc<BTreeMap<String, TaskPolicy>>;

#[derive(Default)]
pub(super) struct Policies {
    /// When they were last read (or last failed to be read; `None`: never, or forgotten),
    /// and what was read.
    cached: Mutex<(Option<Instant>, Table)>,
    /// Held by the one caller reading them again.
    refreshing: tokio::sync::Mutex<()>,
}

impl Policies {
    /// The time limit an operator set for `component.task`, if any.
    pub(super) async fn time_limit<B: Broker>(
        &self,
        broker: &B,
        component: &str,
        task: &str,
    ) -> Option<Duration> {
        let (read_at, mut table) = self.snapshot();
        let stale = read_at.is_none_or(|at| at.elapsed() >= FRESH_FOR);
        if stale {
            // Never read (or forgotten after a change): wait for a read. Merely old: only if
            // nobody else is reading them already.
            let guard = if read_at.is_none() {
                Some(self.refreshing.lock().await)
            } else {
                self.refreshing.try_lock().ok()
            };
            if let Some(_guard) = guard {
                table = self.refresh(broker).await;
            }
        }
        // Most namespaces set none: no key is built for them.
        if table.is_empty() {
            return None;
        }
        let limit = table.get(&format!("{component}.{task}"))?.time_limit_ms?;
        Some(Duration::from_millis(limit))
    }

    /// Forgets when they were read: the next lookup reads them again, and waits for it.
    pub(super) fn changed(&self) {
        self.lock().0 = None;
    }

    fn snapshot(&self) -> (Option<Instant>, Table) {
        let cached = self.lock();
        (cached.0, cached.1.clone())
    }

    /// Reads them again unless another caller just did; returns what is current.
    async fn refresh<B: Broker>(&self, broker: &B) -> Table {
        let (read_at, table) = self.snapshot();
        if read_at.is_some_and(|at| at.elapsed() < FRESH_FOR) {
            return table;
        }
        let table = match broker.task_policies().await {
            Ok(read) => Arc::new(read),
            Err(error) => {
                tracing::warn!(%error, "cannot read task policies; using the last ones read");
                table
            }
        };
        *self.lock() = (Some(Instant::now()), table.clone());
        table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Table)> {
        // Sections only swap values; a panic inside one leaves them usable.
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
