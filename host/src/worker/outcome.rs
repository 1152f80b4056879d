//! From a sandbox report to a settlement: success, failure, retry (with backoff) or revoked.
//! Pure functions of the message, the delivery and the report.

use wtq_client::broker::{Delivery, Settlement};
use wtq_client::message::{
    Attempt, Backoff, DEFAULT_MAX_RETRIES, LimitOverrides, State, TaskFailure, TaskMessage, now_ms,
};

use super::Lane;
use crate::sandbox::{CallReport, FailureKind, Limits, Outcome};

/// Longest log tail kept with an attempt.
const LOG_TAIL: usize = 4 << 10;

/// The worker's default limits with the message's overrides applied.
pub(super) fn limits(defaults: &Limits, overrides: &LimitOverrides) -> Limits {
    Limits {
        time: overrides
            .time_ms
            .map_or(defaults.time, std::time::Duration::from_millis),
        fuel: overrides.fuel.or(defaults.fuel),
        memory: overrides.memory.unwrap_or(defaults.memory),
        ..*defaults
    }
}

/// An attempt record with no outcome yet.
pub(super) fn attempt<B>(
    lane: &Lane<B>,
    delivery: &Delivery,
    digest: Option<&str>,
    started_ms: Option<u64>,
    state: State,
) -> Attempt {
    Attempt {
        attempt: delivery.attempt,
        worker: lane.process.config.name.clone(),
        digest: digest.map(str::to_string),
        received_ms: delivery.received_ms,
        started_ms,
        finished_ms: now_ms(),
        state,
        output: None,
        error: None,
        duration_ms: None,
        fuel: None,
        cpu_ms: None,
        peak_memory: None,
        log: String::new(),
    }
}

/// Failures worth another attempt: the task's own error, a crash, or running out of wall
/// time (the host may have been loaded). Limits a rerun would hit again (fuel, memory, output,
/// arguments) and bad input are final.
fn retryable(kind: FailureKind) -> bool {
    matches!(
        kind,
        FailureKind::TaskFailed | FailureKind::Trap | FailureKind::TimeLimitExceeded
    )
}

pub(super) fn settlement<B>(
    lane: &Lane<B>,
    delivery: &Delivery,
    message: &TaskMessage,
    digest: &str,
    started_ms: u64,
    report: CallReport,
) -> Settlement {
    let mut attempt = attempt(
        lane,
        delivery,
        Some(digest),
        Some(started_ms),
        State::Success,
    );
    attempt.duration_ms = Some(report.duration.as_secs_f64() * 1e3);
    attempt.cpu_ms = report.cpu.map(|cpu| cpu.as_secs_f64() * 1e3);
    attempt.fuel = report.fuel;
    attempt.peak_memory = Some(report.peak_memory);
    attempt.log = tail(report.log);
    let retry = |attempt: Attempt, countdown_ms: Option<u64>| {
        let delay = countdown_ms.unwrap_or_else(|| {
            message
                .retry_backoff
                .unwrap_or(Backoff::DEFAULT)
                .delay_ms(delivery.attempt, random())
        });
        Settlement::Retry {
            eta_ms: now_ms() + delay,
            attempt,
        }
    };
    match report.outcome {
        Outcome::Success { output } => {
            attempt.output = Some(output);
            Settlement::Finish(attempt)
        }
        Outcome::Failure {
            kind: FailureKind::Terminated,
            ..
        } => super::stopped_settlement(lane, delivery, Some(digest), Some(started_ms))
            .with_metrics(&attempt),
        Outcome::Failure {
            kind,
            message: text,
        } => {
            attempt.error = Some(TaskFailure {
                kind: kind.as_str().to_string(),
                message: text,
            });
            let allowed = message
                .max_retries
                .is_some_and(|max| delivery.attempt <= max);
            if retryable(kind) && allowed {
                attempt.state = State::Retry;
                retry(attempt, None)
            } else {
                attempt.state = State::Failure;
                Settlement::Finish(attempt)
            }
        }
        Outcome::Retry {
            message: text,
            countdown,
        } => {
            let max = message.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
            if delivery.attempt <= max {
                attempt.state = State::Retry;
                attempt.error = Some(TaskFailure {
                    kind: "retry".into(),
                    message: text,
                });
                retry(attempt, countdown.map(|delay| delay.as_millis() as u64))
            } else {
                attempt.state = State::Failure;
                attempt.error = Some(TaskFailure {
                    kind: "retries_exhausted".into(),
                    message: format!(
                        "asked to be retried after attempt {} but max_retries is {max}: {text}",
                        delivery.attempt
                    ),
                });
                Settlement::Finish(attempt)
            }
        }
    }
}

trait WithMetrics {
    fn with_metrics(self, measured: &Attempt) -> Self;
}

impl WithMetrics for Settlement {
    /// Carries duration, CPU time, fuel, memory and log over to a revoked attempt.
    fn with_metrics(self, measured: &Attempt) -> Self {
        match self {
            Settlement::Finish(attempt) => Settlement::Finish(Attempt {
                duration_ms: measured.duration_ms,
                cpu_ms: measured.cpu_ms,
                fuel: measured.fuel,
                peak_memory: measured.peak_memory,
                log: measured.log.clone(),
                ..attempt
            }),
            other => other,
        }
    }
}

/// The last [`LOG_TAIL`] bytes of a log, cut on a character boundary.
fn tail(log: String) -> String {
    if log.len() <= LOG_TAIL {
        return log;
    }
    let mut start = log.len() - LOG_TAIL;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes]\n{}", &log[start..])
}

/// A uniform random number in [0, 1) for backoff jitter.
fn random() -> f64 {
    let mut bytes = [0u8; 8];
    // Without randomness the jitter is only less spread; the delay stays within its bounds.
    let _ = getrandom::fill(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
