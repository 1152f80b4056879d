//! The progress bars, drawn on stderr (so stdout keeps only the result): that of `wtq call
//! --wait` and `wtq result --wait`, fed by the task's `progress(done, total, note)` calls, and
//! [`Upload`], that of `wtq deploy` sending a component to the service.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
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
/// Smallest component whose upload gets a bar without `--progress`: a smaller one is sent
/// before a bar would be seen.
pub const UPLOAD_BAR_FROM: u64 = 1 << 20;

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
    let mut text = format!(
        "{} {}/{}",
        bar(progress.done, progress.total),
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

/// `[#########.....................]`: `done` of `total` (nothing of 0, all of more).
fn bar(done: u64, total: u64) -> String {
    let filled = match total {
        0 => 0,
        total => (done.min(total) as u128 * WIDTH as u128 / total as u128) as usize,
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

/// `[#########.....................] 2.4 MiB / 8.0 MiB`: both sizes in the total's unit, with
/// one decimal, so the text keeps its width as it grows.
pub fn bytes_line(sent: u64, total: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    let sizes = match UNITS.iter().find(|(_, size)| total >= *size) {
        Some((unit, size)) => format!(
            "{:.1} {unit} / {:.1} {unit}",
            sent as f64 / *size as f64,
            total as f64 / *size as f64
        ),
        None => format!("{sent} B / {total} B"),
    };
    format!("{} {sizes}", bar(sent, total))
}

/// The bar of an upload, fed by [`wtq_client::HttpApi::deploy_with_progress`] (from whichever
/// thread sends the body) and ended by [`Upload::finish`] once the deploy has an answer,
/// whatever it is.
pub struct Upload {
    /// `None` when no bar is drawn at all.
    state: Option<Mutex<UploadState>>,
}

#[derive(Default)]
struct UploadState {
    /// The text last drawn: a piece that does not change it is not redrawn.
    shown: Option<String>,
    /// Set by `finish`: the connection may still hand out a piece after a refusal, and it
    /// must not draw on the next line.
    finished: bool,
}

impl Upload {
    /// A bar for uploading `size` bytes: drawn with `--progress` (`forced`), or when stderr is
    /// a terminal and the upload is at least [`UPLOAD_BAR_FROM`].
    pub fn new(forced: bool, size: u64) -> Upload {
        let drawn = forced || (size >= UPLOAD_BAR_FROM && wanted(false));
        Upload {
            state: drawn.then(Mutex::default),
        }
    }

    /// `sent` of `total` bytes have gone out.
    pub fn update(&self, sent: u64, total: u64) {
        let Some(state) = &self.state else {
            return;
        };
        let mut state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let text = bytes_line(sent, total);
        if state.finished || state.shown.as_ref() == Some(&text) {
            return;
        }
        write_over(&text);
        state.shown = Some(text);
    }

    /// Ends the bar's line (as far as it got), so what follows starts on a line of its own.
    pub fn finish(&self) {
        let Some(state) = &self.state else {
            return;
        };
        let mut state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !state.finished {
            state.finished = true;
            finish(state.shown.is_some());
        }
    }
}

fn draw(progress: &Progress) {
    write_over(&line(progress));
}

/// Writes `text` over the line the cursor is on.
fn write_over(text: &str) {
    let mut stderr = std::io::stderr().lock();
    // Clear to the end of the line: a shorter note must not leave the longer one's tail.
    let _ = write!(stderr, "\r{text}\x1b[K");
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

    #[test]
    fn uploads_count_in_the_totals_unit() {
        let check = |sent, total, expected: &str| {
            let text = bytes_line(sent, total);
            assert_eq!(
                text.split_once("] ").map(|(_, sizes)| sizes),
                Some(expected)
            );
        };
        check(0, 8 << 20, "0.0 MiB / 8.0 MiB");
        check(1_258_291, 8 << 20, "1.2 MiB / 8.0 MiB");
        check(512 << 10, 3 << 30, "0.0 GiB / 3.0 GiB");
        check(1536, 2048, "1.5 KiB / 2.0 KiB");
        check(12, 800, "12 B / 800 B");
        assert_eq!(
            bytes_line(1 << 20, 1 << 20),
            format!("[{}] 1.0 MiB / 1.0 MiB", "#".repeat(30))
        );
    }
}
