//! `--autoscale MAX,MIN` (Celery's spelling): every second the pool grows by the backlog (tasks
//! held but not started, or else waiting in the worker's queues) up to MAX, unless the process
//! already keeps its CPUs busy; once slots have been idle for the keepalive it shrinks to what
//! is busy, down to MIN. `control autoscale` changes the bounds at run time.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use wtq_client::broker::Broker;

use super::Lane;

/// How often the autoscaler looks.
const TICK: Duration = Duration::from_secs(1);
/// Share of the process's CPUs in use above which more slots would only share the same CPUs:
/// the pool does not grow then.
const BUSY_CPU: f64 = 0.9;

/// The autoscaler's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max: usize,
    pub min: usize,
}

impl Bounds {
    /// The bounds, if 1 <= `min` <= `max`.
    pub fn new(max: usize, min: usize) -> Option<Bounds> {
        (1..=max).contains(&min).then_some(Bounds { max, min })
    }

    /// `MAX,MIN` (as Celery's `--autoscale=10,3`), or `MAX` alone for a minimum of 1.
    pub fn parse(text: &str) -> Result<Bounds, String> {
        let bad = || format!("autoscale `{text}`: use MAX,MIN with 1 <= MIN <= MAX, e.g. 10,3");
        let mut parts = text.split(',').map(str::trim);
        let max: usize = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let min: usize = match parts.next() {
            Some(n) => n.parse().map_err(|_| bad())?,
            None => 1,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Bounds::new(max, min).ok_or_else(bad)
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.max, self.min)
    }
}

/// What the autoscaler saw in one look.
#[derive(Debug, Clone, Copy)]
struct Look {
    size: usize,
    busy: usize,
    backlog: usize,
    cpu_busy: bool,
    /// How long slots have been idle with nothing waiting.
    idle_for: Duration,
}

/// The pool size the autoscaler wants after `look`.
fn decide(bounds: Bounds, look: Look, keepalive: Duration) -> usize {
    let size = look.size.clamp(bounds.min, bounds.max);
    if look.backlog > 0 && !look.cpu_busy {
        return (size + look.backlog).min(bounds.max);
    }
    if look.backlog == 0 && look.busy < size && look.idle_for >= keepalive {
        return look.busy.max(bounds.min);
    }
    size
}

/// Runs the autoscaler of a single-namespace worker until aborted; it acts only while bounds
/// are set.
pub(super) async fn run<B: Broker + Clone>(lane: Arc<Lane<B>>) {
    let process = &lane.process;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cpu = CpuMeter::new();
    let mut idle_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let cpu_share = cpu.share(cpus);
        let bounds = *process
            .autoscale
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(bounds) = bounds else {
            idle_since = None;
            continue;
        };
        let size = process.pool.size();
        let busy = process.pool.busy();
        let waiting = lane.waiting();
        let backlog = if waiting > 0 {
            waiting
        } else {
            queued(&lane).await
        };
        let idle = backlog == 0 && busy < size;
        if !idle {
            idle_since = None;
        }
        let idle_for = if idle {
            idle_since.get_or_insert_with(Instant::now).elapsed()
        } else {
            Duration::ZERO
        };
        let look = Look {
            size,
            busy,
            backlog,
            cpu_busy: cpu_share >= BUSY_CPU,
            idle_for,
        };
        let target = decide(bounds, look, process.config.autoscale_keepalive);
        if target == size {
            continue;
        }
        match process.pool.resize(target) {
            Ok(_) => {
                tracing::info!(from = size, to = target, backlog, busy, "autoscale");
                idle_since = None;
            }
            Err(error) => tracing::warn!(%error, "autoscale"),
        }
    }
}

/// Messages ready in the worker's queues (0 when the broker cannot say).
async fn queued<B: Broker + Clone>(lane: &Lane<B>) -> usize {
    let mut total = 0;
    for queue in lane.process.queues() {
        match lane.broker.depth(&queue).await {
            Ok(depth) => total += depth,
            Err(error) => tracing::debug!(%error, queue, "autoscale: cannot read the queue depth"),
        }
    }
    total
}

/// The process's CPU use between two looks.
struct CpuMeter {
    last: Option<(Instant, Duration)>,
}

impl CpuMeter {
    fn new() -> CpuMeter {
        CpuMeter {
            last: process_cpu_time().map(|used| (Instant::now(), used)),
        }
    }

    /// The share of `cpus` used since the last call, 0 to 1 (0 where it cannot be measured).
    fn share(&mut self, cpus: usize) -> f64 {
        let now = (Instant::now(), process_cpu_time());
        let share = match (self.last, now) {
            (Some((then, used_then)), (at, Some(used))) => {
                let wall = at.duration_since(then).as_secs_f64() * cpus.max(1) as f64;
                if wall > 0.0 {
                    (used.saturating_sub(used_then).as_secs_f64() / wall).min(1.0)
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last = now.1.map(|used| (now.0, used));
        share
    }
}

/// CPU time the whole process has used.
#[cfg(unix)]
pub(super) fn process_cpu_time() -> Option<Duration> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(not(unix))]
pub(super) fn process_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEPALIVE: Duration = Duration::from_secs(30);

    fn look(size: usize, busy: usize, backlog: usize) -> Look {
        Look {
            size,
            busy,
            backlog,
            cpu_busy: false,
            idle_for: Duration::ZERO,
        }
    }

    #[test]
    fn bounds_read_as_celery_writes_them() {
        assert_eq!(Bounds::parse("10,3"), Ok(Bounds { max: 10, min: 3 }));
        assert_eq!(Bounds::parse("4"), Ok(Bounds { max: 4, min: 1 }));
        assert_eq!(Bounds::parse(" 8 , 8 "), Ok(Bounds { max: 8, min: 8 }));
        for bad in ["3,10", "0", "4,0", "a,b", "", "4,2,1"] {
            assert!(Bounds::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Bounds { max: 10, min: 3 }.to_string(), "10,3");
    }

    #[test]
    fn the_pool_grows_with_the_backlog_unless_the_cpus_are_busy() {
        let bounds = Bounds { max: 8, min: 1 };
        assert_eq!(decide(bounds, look(1, 1, 3), KEEPALIVE), 4);
        assert_eq!(decide(bounds, look(4, 4, 30), KEEPALIVE), 8);
        let busy = Look {
            cpu_busy: true,
            ..look(2, 2, 30)
        };
        assert_eq!(decide(bounds, busy, KEEPALIVE), 2);
        // Out of bounds after `control autoscale`: brought inside first.
        assert_eq!(
            decide(Bounds { max: 8, min: 3 }, look(1, 0, 0), KEEPALIVE),
            3
        );
        assert_eq!(
            decide(Bounds { max: 2, min: 1 }, look(6, 6, 0), KEEPALIVE),
            2
        );
    }

    #[test]
    fn the_pool_shrinks_to_what_is_busy_after_the_keepalive() {
        let bounds = Bounds { max: 8, min: 2 };
        let idle = |idle_for| Look {
            idle_for,
            ..look(8, 1, 0)
        };
        assert_eq!(decide(bounds, idle(Duration::from_secs(10)), KEEPALIVE), 8);
        assert_eq!(decide(bounds, idle(KEEPALIVE), KEEPALIVE), 2);
        let half = Look {
            idle_for: KEEPALIVE,
            ..look(8, 5, 0)
        };
        assert_eq!(decide(bounds, half, KEEPALIVE), 5);
    }
}
