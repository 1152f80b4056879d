//! Prometheus `/metrics` of a real `wtq worker --metrics` against a private Redis, and of
//! `wtq up`: every line must parse as the text exposition format, and the counters must match
//! the tasks the test ran.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use wtq_client::message::State;

use crate::cluster::{Cluster, all_final, enqueue_many};
use crate::service::{Service, http_client};
use crate::support::Wtq;

/// One sample line: name, labels in order, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses a text exposition strictly: `# HELP` / `# TYPE` lines with valid names and types,
/// every sample of a declared family (histograms: `_bucket` with `le`, `_sum`, `_count`),
/// label values with only the three escapes, values as Go floats. Panics on anything else.
fn parse(text: &str) -> Vec<Sample> {
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut helped: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name), "HELP name {name:?}");
            assert!(
                helped.insert(name.to_string()),
                "one HELP per family: {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name type");
            assert!(valid_name(name), "TYPE name {name:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "type {kind:?}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "one TYPE per family: {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        assert!(!line.is_empty(), "empty line");
        let sample = parse_sample(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(&sample.name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        assert!(sample.name.starts_with("wtq_"), "prefixed: {line}");
        if sample.name.ends_with("_bucket") && family != sample.name {
            assert!(
                sample.labels.iter().any(|(name, _)| name == "le"),
                "bucket without le: {line}"
            );
        }
        samples.push(sample);
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "metric name {name:?} in {line}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value, then `,` or `}`.
            let start = chars.peek().map(|(i, _)| *i).expect("label");
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c == '=' {
                    end = i;
                    break;
                }
                chars.next();
            }
            let label = &inner[start..end];
            assert!(
                valid_name(label) && !label.contains(':'),
                "label name {label:?} in {line}"
            );
            assert_eq!(chars.next().map(|(_, c)| c), Some('='), "{line}");
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars
                    .next()
                    .unwrap_or_else(|| panic!("open quote: {line}"))
                    .1
                {
                    '"' => break,
                    '\\' => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other} in {line}"),
                    },
                    '\n' => panic!("raw newline in {line}"),
                    c => value.push(c),
                }
            }
            labels.push((label.to_string(), value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &inner[i + 1..];
                    break;
                }
                other => panic!("after a label: {other:?} in {line}"),
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("space before value: {line}"));
    let mut fields = rest.split(' ');
    let value = match fields.next().expect("value") {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text => text
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value {text:?} in {line}")),
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().expect("timestamp");
    }
    assert!(fields.next().is_none(), "trailing fields: {line}");
    let names: HashSet<&str> = labels.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.len(), labels.len(), "repeated label in {line}");
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && sample.labels.len() == labels.len()
                && labels
                    .iter()
                    .zip(&sample.labels)
                    .all(|((n, v), (sn, sv))| n == sn && v == sv)
        })
        .map(|sample| sample.value)
}

async fn scrape(http: &reqwest::Client, url: &str) -> Vec<Sample> {
    let response = http.get(url).send().await.expect("/metrics answers");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(&response.text().await.expect("body"))
}

#[test]
fn the_parser_is_strict() {
    let good =
        "# HELP wtq_a_total A.\n# TYPE wtq_a_total counter\nwtq_a_total{q=\"x\\\"y\\\\\"} 3\n";
    let samples = parse(good);
    assert_eq!(samples[0].labels, vec![("q".into(), "x\"y\\".into())]);
    for bad in [
        "wtq_a 1\n",                                      // no TYPE
        "# TYPE wtq_a gauge\nwtq_a{q=\"x} 1\n",           // open quote
        "# TYPE wtq_a gauge\nwtq_a{q=\"\\t\"} 1\n",       // bad escape
        "# TYPE wtq_a gauge\nwtq_a one\n",                // bad value
        "# TYPE wtq_a gauge\nwtq_a{q=\"a\",q=\"b\"} 1\n", // repeated label
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted: {bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_metrics_match_the_tasks_run() {
    let mut cluster = Cluster::start();
    cluster.deploy("math");
    cluster.deploy("chaos");
    cluster.worker("metered", &["-c", "auto", "--metrics", "127.0.0.1:0"]);
    // The worker prints the address it bound (port 0: a free one).
    let log = cluster.wtq.cache_dir().join("worker-metered.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.starts_with("metrics on ")) {
            break line["metrics on ".len()..].trim().to_string();
        }
        assert!(Instant::now() < deadline, "no metrics address: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let http = http_client();
    let before = scrape(&http, &url).await;
    assert_eq!(
        value(&before, "wtq_queue_depth", &[("queue", "default")]),
        Some(0.0)
    );

    let client = cluster.client().await;
    let mut ids = enqueue_many(&client, "math.add", json!([2, 3]), 20).await;
    ids.extend(enqueue_many(&client, "chaos.fail", json!(["boom"]), 3).await);
    let records = all_final(&client, &ids, Duration::from_secs(60)).await;
    let failed = records
        .iter()
        .filter(|record| record.state == State::Failure)
        .count();
    assert_eq!(failed, 3);

    // The worker counts a settlement once the broker has confirmed it, just after the record
    // is final: wait for the last one to land.
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let samples = scrape(&http, &url).await;
        let settled = ["success", "failure"]
            .iter()
            .filter_map(|state| value(&samples, "wtq_tasks_total", &[("state", state)]))
            .sum::<f64>();
        if settled >= 23.0 || Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tasks = |state| value(&samples, "wtq_tasks_total", &[("state", state)]);
    assert_eq!(tasks("success"), Some(20.0));
    assert_eq!(tasks("failure"), Some(3.0));
    for state in ["retry", "revoked", "released", "stale"] {
        assert_eq!(tasks(state), Some(0.0), "{state}");
    }
    assert_eq!(
        value(&samples, "wtq_task_runtime_seconds_count", &[]),
        Some(23.0)
    );
    assert_eq!(
        value(
            &samples,
            "wtq_task_runtime_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(23.0)
    );
    assert_eq!(
        value(&samples, "wtq_task_queue_wait_seconds_count", &[]),
        Some(23.0)
    );
    assert_eq!(
        value(&samples, "wtq_task_memory_peak_bytes_count", &[]),
        Some(23.0)
    );
    assert_eq!(value(&samples, "wtq_task_fuel_count", &[]), Some(23.0));
    assert_eq!(value(&samples, "wtq_dead_letters_total", &[]), Some(0.0));
    // Two components, each loaded once by this worker.
    let loads = ["hit", "miss"]
        .iter()
        .filter_map(|result| value(&samples, "wtq_compile_cache_total", &[("result", result)]))
        .sum::<f64>();
    assert_eq!(loads, 2.0);
    assert!(value(&samples, "wtq_instance_recycles_total", &[]).is_some());
    assert!(value(&samples, "wtq_leases_reclaimed_total", &[]).is_some());
    assert_eq!(
        value(&samples, "wtq_queue_depth", &[("queue", "default")]),
        Some(0.0)
    );
    // Cumulative buckets never decrease.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|sample| sample.name == "wtq_task_runtime_seconds_bucket")
        .map(|sample| sample.value)
        .collect();
    assert!(
        buckets.windows(2).all(|pair| pair[0] <= pair[1]),
        "{buckets:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_metrics_count_requests_by_route() {
    let wtq = Wtq::new();
    let service = Service::up(&wtq, &[]);
    let http = http_client();
    for _ in 0..2 {
        let health = http
            .get(format!("{}/healthz", service.url))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status().as_u16(), 200);
    }
    let missing = http
        .get(format!("{}/v1/nothing-here", service.url))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status().as_u16(), 404);
    let samples = scrape(&http, &format!("{}/metrics", service.url)).await;
    let requests = |route, status| {
        value(
            &samples,
            "wtq_http_requests_total",
            &[("route", route), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!(requests("/healthz", "2xx"), Some(2.0));
    assert_eq!(
        value(
            &samples,
            "wtq_http_requests_total",
            &[("route", "unmatched"), ("method", ""), ("status", "4xx")]
        ),
        Some(1.0)
    );
    assert!(value(&samples, "wtq_enqueued_tasks_total", &[]).is_some());
    assert!(value(&samples, "wtq_enqueued_workflows_total", &[]).is_some());
    assert_eq!(value(&samples, "wtq_rate_limited_total", &[]), Some(0.0));
}
