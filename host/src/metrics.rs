//! Prometheus metrics, hand-written: counters, gauges and fixed-bucket histograms updated with
//! atomics only (no lock on the hot path), and the text exposition format (version 0.0.4) they
//! are rendered in. Owns no registry: whoever holds the metrics (the worker, the service)
//! renders them into a [`Text`] at scrape time, so a scrape reads exactly what it names.
//!
//! Hand-written rather than the `prometheus` crate: the format is a few lines per series, and
//! the crate's registry, global default and protobuf support are more than two endpoints need.
//!
//! Entry points: [`Counter`], [`Histogram`], [`Text`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets (upper bounds, ascending), with their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound plus one for `+Inf`; *not* cumulative (each observation touches
    /// one bucket), made cumulative when rendered.
    buckets: Box<[AtomicU64]>,
    /// The sum as `f64` bits, added to with a compare-and-swap loop.
    sum: AtomicU64,
}

/// Seconds, from a millisecond to ten minutes: task runtimes and queue waits.
pub const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
/// Fuel units, powers of ten (a trivial call burns thousands, the default limit is 10^10).
pub const FUEL: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];
/// Bytes, powers of four from 64 KiB to 4 GiB (a wasm32 instance's largest memory).
pub const BYTES: &[f64] = &[
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        // `le` is inclusive: a value equal to a bound counts in that bound's bucket.
        let index = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }
}

/// The kind a metric family is declared with in its `# TYPE` line.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A text exposition being written: declare a family with [`Text::family`], then write its
/// samples.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// The `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Text {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Text {
        self.0.push_str(name);
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", number(value));
        self
    }

    /// A histogram's samples: cumulative `_bucket{le=…}` lines ending in `+Inf`, then `_sum`
    /// and `_count` (equal to the `+Inf` bucket, from the same reading).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Text {
        let mut cumulative = 0;
        let bounds = histogram.bounds.iter().copied().chain([f64::INFINITY]);
        for (bound, bucket) in bounds.zip(histogram.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = write!(self.0, "{name}_bucket");
            write_labels(&mut self.0, labels, Some(&number(bound)));
            let _ = writeln!(self.0, " {cumulative}");
        }
        let sum = f64::from_bits(histogram.sum.load(Ordering::Relaxed));
        let _ = write!(self.0, "{name}_sum");
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", number(sum));
        let _ = write!(self.0, "{name}_count");
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {cumulative}");
        self
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// `{a="x",le="0.5"}`, or nothing without labels.
fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (index, (name, value)) in all.enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// A sample value as Prometheus spells it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's shortest round-trip form: `20`, `0.005`, `1e-7`, all valid Go floats.
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut text = Text::new();
        text.sample("wtq_x", &[("q", "a\"b\\c\nd")], 1.0);
        assert_eq!(text.finish(), "wtq_x{q=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn help_and_type_lines() {
        let mut text = Text::new();
        text.family("wtq_x_total", Kind::Counter, "Things.\nMore \\ things.")
            .sample("wtq_x_total", &[], 3.0);
        assert_eq!(
            text.finish(),
            "# HELP wtq_x_total Things.\\nMore \\\\ things.\n# TYPE wtq_x_total counter\nwtq_x_total 3\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        static BOUNDS: &[f64] = &[0.5, 1.0, 2.5];
        let histogram = Histogram::new(BOUNDS);
        for value in [0.25, 0.5, 0.75, 3.0, 100.0] {
            histogram.observe(value);
        }
        assert_eq!(histogram.count(), 5);
        let mut text = Text::new();
        text.histogram("wtq_h", &[("q", "a")], &histogram);
        assert_eq!(
            text.finish(),
            "wtq_h_bucket{q=\"a\",le=\"0.5\"} 2\n\
             wtq_h_bucket{q=\"a\",le=\"1\"} 3\n\
             wtq_h_bucket{q=\"a\",le=\"2.5\"} 3\n\
             wtq_h_bucket{q=\"a\",le=\"+Inf\"} 5\n\
             wtq_h_sum{q=\"a\"} 104.5\n\
             wtq_h_count{q=\"a\"} 5\n"
        );
    }

    #[test]
    fn empty_histogram_without_labels() {
        static BOUNDS: &[f64] = &[1.0];
        let mut text = Text::new();
        text.histogram("wtq_h", &[], &Histogram::new(BOUNDS));
        assert_eq!(
            text.finish(),
            "wtq_h_bucket{le=\"1\"} 0\nwtq_h_bucket{le=\"+Inf\"} 0\nwtq_h_sum 0\nwtq_h_count 0\n"
        );
    }

    #[test]
    fn numbers() {
        let check = |value: f64, expected: &str| assert_eq!(number(value), expected);
        check(20.0, "20");
        check(0.005, "0.005");
        check(1e10, "10000000000");
        check(f64::INFINITY, "+Inf");
        check(f64::NEG_INFINITY, "-Inf");
        check(f64::NAN, "NaN");
    }

    #[test]
    fn the_bucket_bounds_ascend() {
        for bounds in [SECONDS, FUEL, BYTES] {
            assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }
}
