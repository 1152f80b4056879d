//! Measurements of the sandbox itself, for `wtq bench sandbox`: the raw cost of a fresh
//! instance per call on each metering mode, without the bookkeeping of a real call.

use std::time::{Duration, Instant};

use super::bindings::TaskContext;
use super::state::HostState;
use super::{Component, Error, MAX_TIME_LIMIT, Metering};

/// Wall time of one fresh store + instantiate + call + drop of `task(args)` on an engine that
/// meters `metering` (with a budget that cannot run out), `rounds` times; the guest's result is
/// ignored.
pub async fn raw_calls(
    component: &Component,
    metering: Metering,
    task: &str,
    args: &str,
    rounds: u32,
) -> Result<Vec<Duration>, Error> {
    let (prepared, _) = component.0.prepare(metering)?;
    let fuel = (metering == Metering::Fuel).then_some(u64::MAX);
    let mut times = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let started = Instant::now();
        let context = TaskContext {
            task_id: String::new(),
            task_name: String::new(),
            attempt: 1,
            tenant: String::new(),
            deadline_unix_ms: 0,
        };
        let state = HostState::new(context, 1 << 30, 1 << 16);
        let mut store = super::new_store(&prepared, state, fuel, started + MAX_TIME_LIMIT)?;
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
