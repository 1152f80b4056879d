//! Measurements of the sandbox itself, for `wtq bench sandbox`: the raw cost of a fresh
//! instance per call on each metering mode, without the limits bookkeeping of a real call.

use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::TaskContext;
use super::state::HostState;
use super::{Component, Error, Metering};

/// Wall time of one fresh store + instantiate + call + drop of `task(args)` on an engine that
/// meters `metering`, `rounds` times; the guest's result is ignored.
pub async fn raw_calls(
    component: &Component,
    metering: Metering,
    task: &str,
    args: &str,
    rounds: usize,
) -> Result<Vec<Duration>, Error> {
    let (prepared, _) = component.0.prepare(metering)?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let context = TaskContext {
            task_id: String::new(),
            task_name: String::new(),
            attempt: 1,
            tenant: String::new(),
            deadline_unix_ms: 0,
        };
        let mut store = Store::new(
            &prepared.runtime.engine,
            HostState::new(context, 1 << 30, 1 << 16),
        );
        store.limiter(|state| &mut state.limiter);
        match metering {
            Metering::Fuel => {
                store
                    .set_fuel(u64::MAX)
                    .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
                store.set_epoch_deadline(u64::MAX / 2);
            }
            Metering::Epoch => store.set_epoch_deadline(u64::MAX / 2),
            Metering::None => {}
        }
        let instance = prepared
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
        let _ = instance
            .wtq_task_tasks()
            .call_call(&mut store, task, args)
            .await;
        drop(store);
        times.push(started.elapsed());
    }
    Ok(times)
}
