//! Tasks' run-time limits set by operators (`wtq control time-limit`), as a lane sees them:
//! read from the broker at most once a second, and at once after a `policies-changed`
//! request. (Rate limits need nothing here: the broker applies them when it leases.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wtq_client::broker::Broker;
use wtq_client::registry::TaskPolicy;

/// How long the policies read are trusted: a change reaches running workers within this
/// time even when its announcement was missed.
const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Policies {
    /// When they were last read (or last failed to be read), and what was read.
    cached: tokio::sync::Mutex<Option<(Instant, BTreeMap<String, TaskPolicy>)>>,
}

impl Policies {
    /// The time limit an operator set for `component.task`, if any.
    pub(super) async fn time_limit<B: Broker>(
        &self,
        broker: &B,
        component: &str,
        task: &str,
    ) -> Option<Duration> {
        let mut cached = self.cached.lock().await;
        let stale = cached
            .as_ref()
            .is_none_or(|(read_at, _)| read_at.elapsed() >= FRESH_FOR);
        if stale {
            match broker.task_policies().await {
                Ok(read) => *cached = Some((Instant::now(), read)),
                Err(error) => {
                    tracing::warn!(%error, "cannot read task policies; using the last ones read");
                    let kept = cached.take().map(|(_, kept)| kept).unwrap_or_default();
                    *cached = Some((Instant::now(), kept));
                }
            }
        }
        let (_, policies) = cached.as_ref()?;
        let limit = policies
            .get(&format!("{component}.{task}"))?
            .time_limit_ms?;
        Some(Duration::from_millis(limit))
    }

    /// Forgets what was read: the next call reads again.
    pub(super) async fn changed(&self) {
        *self.cached.lock().await = None;
    }
}
