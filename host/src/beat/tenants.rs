//! `wtq beat --tenants`: one beat per tenant of the hosted service's registry, each over its
//! tenant's namespace (its stored entries and its own lease), followed as tenants come and
//! go. Several such processes share the work the way single beats do: per tenant, one leads.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wtq_client::broker::{Broker, Schedules, Tenancy};
use wtq_client::tenancy::namespace_of;

use super::BeatConfig;

/// How often the tenant registry is read again: a new tenant's entries fire within this.
const TENANT_REFRESH: Duration = Duration::from_secs(2);

/// A tenant's beat and the switch that stops it.
struct Running {
    stop: watch::Sender<bool>,
    beat: JoinHandle<()>,
}

/// Runs a beat for every tenant in `root`'s registry until `shutdown` resolves; each then
/// gives its lease up. `config.entries` must be empty: a schedule file belongs to one
/// namespace.
pub async fn run_tenants<B>(config: BeatConfig, root: B, shutdown: impl Future<Output = ()>)
where
    B: Broker + Schedules + Tenancy + Clone,
{
    let mut running: HashMap<String, Running> = HashMap::new();
    tokio::pin!(shutdown);
    let mut refresh = tokio::time::interval(TENANT_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = refresh.tick() => {}
        }
        let tenants = match root.tenants().await {
            Ok(tenants) => tenants,
            Err(error) => {
                tracing::warn!(%error, "beat: cannot read the tenant registry; will retry");
                continue;
            }
        };
        for tenant in &tenants {
            if running.contains_key(&tenant.name) {
                continue;
            }
            let broker = match root.namespaced(&namespace_of(&tenant.name)) {
                Ok(broker) => broker,
                Err(error) => {
                    tracing::warn!(tenant = %tenant.name, %error, "beat: cannot serve tenant");
                    continue;
                }
            };
            tracing::info!(tenant = %tenant.name, "beat: firing tenant's schedules");
            let (stop, mut stopped) = watch::channel(false);
            let until_stopped = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let beat = tokio::spawn(super::run(
                BeatConfig {
                    entries: Vec::new(),
                    ..config.clone()
                },
                broker,
                until_stopped,
            ));
            running.insert(tenant.name.clone(), Running { stop, beat });
        }
        let gone: Vec<String> = running
            .keys()
            .filter(|name| !tenants.iter().any(|tenant| &tenant.name == *name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(beat) = running.remove(&name) {
                tracing::info!(tenant = %name, "beat: tenant removed");
                beat.stop.send_replace(true);
                let _ = beat.beat.await;
            }
        }
    }
    for beat in running.values() {
        beat.stop.send_replace(true);
    }
    for (_, beat) in running {
        let _ = beat.beat.await;
    }
}
