//! `wtq beat`: fires periodic tasks. Entries come from a schedule file (given at start) and
//! from the broker (added at run time with `wtq schedule add` or `POST /v1/schedules`).
//!
//! Several beats may run against one broker: each asks for the beat lease
//! ([`Schedules::lead`]) every third of the lease time, and only its holder fires. Firing is
//! idempotent besides: a tick is enqueued with the idempotency key `beat:<entry>:<tick>` and
//! its scheduled time as ETA, so a leader that stalled past its lease, or one that died between
//! the enqueue and recording it, cannot make a second task of it. After each entry the leader
//! records the last tick it handled (fenced by the lease); the next leader starts from there,
//! firing what was missed as the entry's missed-run policy says.
//!
//! Entry points: [`run`], and [`run_tenants`] for every tenant of the hosted service. Not here: parsing and tick arithmetic ([`plan`]), the file format
//! ([`spec`]).

pub mod plan;
pub mod spec;
mod tenants;

pub use tenants::run_tenants;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use wtq_client::broker::{Broker, Error, Schedules};
use wtq_client::message::now_ms;
use wtq_client::schedule::{Fired, Overlap, ScheduleEntry, tick_key};
use wtq_client::{Client, ClientError};

use self::plan::Plan;

/// The lease time when none is given: a dead leader's successor fires within this (plus a
/// third of it).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Longest sleep of a leader: entries added at run time are seen within this.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long after a tick the leader wakes for it: the tick is then in the past on this
/// machine's clock, whatever the timer's rounding.
const WAKE_MARGIN_MS: u64 = 5;
/// Pause after a broker error before trying again.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// What a beat runs.
#[derive(Debug, Clone)]
pub struct BeatConfig {
    /// This process's name in the lease (for operators: who leads).
    pub holder: String,
    pub lease: Duration,
    /// The schedule file's entries, already checked. A stored entry of the same name is
    /// ignored (with a warning).
    pub entries: Vec<ScheduleEntry>,
}

/// Runs the beat until `shutdown` resolves; then gives the lease up, so another beat takes
/// over at once. Broker errors are logged and retried; they never end the beat.
pub async fn run<B>(config: BeatConfig, broker: B, shutdown: impl Future<Output = ()>)
where
    B: Broker + Schedules + Clone,
{
    let mut beat = Beat {
        client: Client::with_broker(broker.clone()),
        broker,
        lease_ms: config.lease.as_millis().max(3) as u64,
        holder: config.holder,
        file: config.entries,
        token: None,
        warned: HashSet::new(),
    };
    tokio::pin!(shutdown);
    loop {
        let pause = match beat.step().await {
            Ok(pause) => pause,
            Err(error) => {
                tracing::warn!(%error, "beat: broker call failed; retrying");
                ERROR_PAUSE
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if let Some(token) = beat.token
        && let Err(error) = beat.broker.resign(&beat.holder, token).await
    {
        tracing::warn!(%error, "beat: could not give the lease up; it expires on its own");
    }
}

struct Beat<B: Broker + Clone> {
    broker: B,
    client: Client<B>,
    holder: String,
    lease_ms: u64,
    file: Vec<ScheduleEntry>,
    /// The token of the tenure this beat holds, if it leads.
    token: Option<u64>,
    /// Entries already reported as unusable (reported once, not every second).
    warned: HashSet<String>,
}

impl<B: Broker + Schedules + Clone> Beat<B> {
    /// Takes or renews the lease, fires what is due if this beat leads, and says how long to
    /// sleep.
    async fn step(&mut self) -> Result<Duration, Error> {
        let renew_every = Duration::from_millis(self.lease_ms / 3).min(MAX_SLEEP);
        let started = Instant::now();
        let token = self
            .broker
            .lead(&self.holder, self.token, self.lease_ms, now_ms())
            .await?;
        if token != self.token {
            match token {
                Some(token) => tracing::info!(holder = %self.holder, token, "beat: leading"),
                None => tracing::info!(holder = %self.holder, "beat: another beat leads"),
            }
        }
        self.token = token;
        let Some(token) = token else {
            return Ok(renew_every);
        };
        // Fire only while the lease is surely ours on this clock: a third of it is left for a
        // slow round of enqueues (the state writes are fenced besides).
        let deadline = started + Duration::from_millis(self.lease_ms * 2 / 3);
        let next = self.fire(token, deadline).await?;
        let now = now_ms();
        let until_next = next.map_or(renew_every, |next| {
            Duration::from_millis(next.saturating_sub(now) + WAKE_MARGIN_MS)
        });
        Ok(until_next.min(renew_every))
    }

    /// Fires every entry's due ticks; returns the earliest next tick.
    async fn fire(&mut self, token: u64, deadline: Instant) -> Result<Option<u64>, Error> {
        let stored = self.broker.schedules().await?;
        let fired = self.broker.fired().await?;
        let mut entries: Vec<ScheduleEntry> = self.file.clone();
        let file_names: HashSet<String> = entries.iter().map(|e| e.name.clone()).collect();
        for entry in stored {
            if file_names.contains(&entry.name) {
                self.warn_once(
                    &entry.name,
                    "a stored entry has the name of a file entry; the file's is used",
                );
            } else {
                entries.push(entry);
            }
        }
        let mut next: Option<u64> = None;
        for entry in &entries {
            if Instant::now() >= deadline {
                break;
            }
            let plan = match Plan::compile(entry) {
                Ok(plan) => plan,
                Err(reason) => {
                    self.warn_once(&entry.name, &reason);
                    continue;
                }
            };
            let now = now_ms();
            let Some(state) = fired.get(&entry.name) else {
                // A new entry: its ticks start now.
                let start = Fired {
                    tick_ms: now,
                    task: None,
                };
                if !self.record(&entry.name, &start, token).await? {
                    return Ok(None);
                }
                next = earliest(next, plan.next_after(now));
                continue;
            };
            let due = plan.due(state.tick_ms, now);
            let mut last = state.clone();
            let mut changed = false;
            for tick in due.fire {
                if entry.overlap == Overlap::Skip && self.running(last.task.as_deref()).await? {
                    tracing::info!(entry = %entry.name, tick, "beat: previous run not final; tick skipped");
                } else {
                    match self.enqueue(entry, tick).await {
                        Ok(id) => {
                            tracing::debug!(entry = %entry.name, tick, %id, "beat: fired");
                            last.task = Some(id);
                        }
                        Err(ClientError::Broker(error)) => {
                            // Not handled: the next round fires it again (the idempotency key
                            // makes that safe), after recording what did fire.
                            if changed {
                                self.record(&entry.name, &last, token).await?;
                            }
                            return Err(error);
                        }
                        Err(error) => {
                            tracing::error!(entry = %entry.name, tick, %error, "beat: the call was refused; tick skipped");
                        }
                    }
                }
                last.tick_ms = tick;
                changed = true;
            }
            if let Some(handled) = due.handled
                && handled > last.tick_ms
            {
                last.tick_ms = handled;
                changed = true;
            }
            if changed && !self.record(&entry.name, &last, token).await? {
                return Ok(None);
            }
            next = earliest(next, plan.next_after(last.tick_ms.max(now)));
        }
        Ok(next)
    }

    /// Stores an entry's state under the lease; on a lost lease, stops leading.
    async fn record(&mut self, name: &str, fired: &Fired, token: u64) -> Result<bool, Error> {
        let held = self
            .broker
            .record_fired(name, fired, &self.holder, token, now_ms())
            .await?;
        if !held {
            tracing::warn!(holder = %self.holder, "beat: lost the lease; another beat leads");
            self.token = None;
        }
        Ok(held)
    }

    /// Whether the task is still to finish (it exists and is not final).
    async fn running(&self, id: Option<&str>) -> Result<bool, Error> {
        let Some(id) = id else {
            return Ok(false);
        };
        Ok(Broker::record(&self.broker, id)
            .await?
            .is_some_and(|record| !record.state.is_final()))
    }

    /// Enqueues `entry`'s call for `tick`: ETA the tick, idempotency key the entry and tick.
    async fn enqueue(&self, entry: &ScheduleEntry, tick: u64) -> Result<String, ClientError> {
        let mut call = entry.call.clone();
        call.eta_ms = Some(tick);
        call.idempotency_key = Some(tick_key(&entry.name, tick));
        let enqueued = self.client.enqueue_requests(vec![call]).await?;
        enqueued
            .into_iter()
            .next()
            .map(|enqueued| enqueued.id)
            .ok_or_else(|| ClientError::InvalidOption("the broker returned no task id".into()))
    }

    fn warn_once(&mut self, name: &str, reason: &str) {
        if self.warned.insert(name.to_string()) {
            tracing::warn!(entry = %name, %reason, "beat: entry not used");
        }
    }
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Every stored entry with its state, for `wtq schedule list` and `GET /v1/schedules`.
pub async fn statuses<B: Schedules>(
    broker: &B,
) -> Result<Vec<wtq_client::schedule::ScheduleStatus>, Error> {
    let entries = broker.schedules().await?;
    let mut fired: HashMap<String, Fired> = broker.fired().await?;
    Ok(entries
        .into_iter()
        .map(|entry| wtq_client::schedule::ScheduleStatus {
            fired: fired.remove(&entry.name),
            entry,
        })
        .collect())
}
