//! The progress bar of `wtq call --wait` and `wtq result --wait`: fed by the task's
//! `progress(done, total, note)` calls, drawn on stderr (so stdout keeps only the result).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use wtq_client::broker;
use wtq_client::message::{Progress, TaskRecord};
use wtq_client::{Endpoint, Producer};

use super::one_line;

/// How often the bar is brought up to date while the task runs (each is one wait that
/// returns at once when the task finishes, so the result is not delayed).
const REFRESH: Duration = Duration::from_millis(200);
/// Width of the bar itself, in characters.
const WIDTH: usize = 30;

/// Whether to draw a bar: asked for with `--progress`, or stderr is a terminal.
pub fn wanted(forced: bool) -> bool {
    forced || std::io::stderr().is_terminal()
}

/// Waits for the task as `Producer::wait` does; with `bar`, draws its progress meanwhile and
/// its last progress once it is final.
pub async fn wait(
    endpoint: &Endpoint,
    id: &str,
    timeout: Duration,
    bar: bool,
) -> Result<Option<TaskRecord>, broker::Error> {
    if !bar {
        return endpoint.wait(id, timeout).await;
    }
    let deadline = Instant::now() + timeout;
    let mut shown: Option<Progress> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let record = endpoint.wait(id, left.min(REFRESH)).await?;
        let Some(record) = record else {
            finish(shown.is_some());
            return Ok(None);
        };
        if record.progress.is_some() && record.progress != shown {
            shown = record.progress.clone();
            if let Some(progress) = &shown {
                draw(progress);
            }
        }
        if record.state.is_final() || left <= REFRESH {
            finish(shown.is_some());
            return Ok(Some(record));
        }
    }
}

/// `[#########.....................]  30/100  note`, redrawn in place.
pub fn line(progress: &Progress) -> String {
    let filled = match progress.total {
        0 => 0,
        total => (progress.done.min(total) as u128 * WIDTH as u128 / total as u128) as usize,
    };
    let mut text = format!(
        "[{}{}] {}/{}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        progress.done,
        progress.total
    );
    if !progress.note.is_empty() {
        text.push_str("  ");
        text.push_str(
            &one_line(&progress.note)
                .chars()
                .take(60)
                .collect::<String>(),
        );
    }
    text
}

fn draw(progress: &Progress) {
    let mut stderr = std::io::stderr().lock();
    // Clear to the end of the line: a shorter note must not leave the longer one's tail.
    let _ = write!(stderr, "\r{}\x1b[K", line(progress));
    let _ = stderr.flush();
}

fn finish(drawn: bool) {
    if drawn {
        let _ = writeln!(std::io::stderr().lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion() {
        let progress = |done, total, note: &str| Progress {
            done,
            total,
            note: note.into(),
        };
        assert_eq!(
            line(&progress(3, 10, "step 3")),
            format!("[{}{}] 3/10  step 3", "#".repeat(9), ".".repeat(21))
        );
        assert_eq!(
            line(&progress(5, 0, "")),
            format!("[{}] 5/0", ".".repeat(30))
        );
        assert_eq!(
            line(&progress(12, 10, "")),
            format!("[{}] 12/10", "#".repeat(30))
        );
        assert!(line(&progress(1, 2, "a\u{1b}[31mred")).contains("\\u{1b}"));
    }
}
