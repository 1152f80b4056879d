//! `wtq bench chord`: a chord of N `math.add` members with a `math.xsum` callback, end to end
//! through Redis and one worker process, against the same N as plain tasks: the chord's total
//! time and its overhead per member.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use wtq_client::broker::Broker;
use wtq_client::message::now_ms;
use wtq_client::workflow::{Node, chord, task};
use wtq_client::{AnyBroker, Client};

use super::bench_queue::{drain, spawn_worker};
use super::{Failure, exit, say};
use crate::units::format_duration;

pub fn run(
    component: PathBuf,
    members: u32,
    rounds: u32,
    concurrency: Option<u32>,
    url: &str,
) -> Result<u8, Failure> {
    let (url, namespace, runtime) = super::bench_queue::fresh_namespace(url)?;
    runtime.block_on(async {
        let broker = super::bench_queue::deploy_math(&url, &component).await?;
        let client = Client::with_broker(broker.clone());
        say(format!(
            "wtq bench chord: chord of {members} math.add + math.xsum vs {members} plain math.add, namespace {namespace}, one worker process"
        ));
        let mut worker = spawn_worker(&url, concurrency)?;
        let measured = measure(&client, &broker, members, rounds).await;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status();
        let _ = worker.wait();
        let (mut chords, mut plains, mut submits) = measured?;
        let median = |samples: &mut Vec<Duration>| {
            samples.sort();
            samples[samples.len() / 2]
        };
        let (chord_time, plain_time, submit_time) =
            (median(&mut chords), median(&mut plains), median(&mut submits));
        say(format!(
            "  chord        {} end to end (median of {rounds}; submit {} of it)",
            format_duration(chord_time),
            format_duration(submit_time)
        ));
        say(format!(
            "  plain tasks  {} end to end (median of {rounds})",
            format_duration(plain_time)
        ));
        let overhead = chord_time.as_secs_f64() - plain_time.as_secs_f64();
        say(format!(
            "  overhead     {:.1} µs per member ({:+.1}% over a plain task)",
            overhead * 1e6 / members as f64,
            overhead * 100.0 / plain_time.as_secs_f64()
        ));
        Ok(exit::SUCCESS)
    })
}

type Samples = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

async fn measure(
    client: &Client<AnyBroker>,
    broker: &AnyBroker,
    members: u32,
    rounds: u32,
) -> Result<Samples, Failure> {
    let failed = |error: &dyn std::fmt::Display| Failure::new(exit::INTERNAL, error.to_string());
    let workflow = |n: u32| -> Node {
        chord(
            (0..n).map(|i| task("math.add").args(json!([i, i]))),
            task("math.xsum"),
        )
        .options(wtq_client::workflow::Options {
            result_expires_ms: Some(600_000),
            ..Default::default()
        })
    };
    // A first small chord compiles the component in the worker, outside the figures.
    let warm = client
        .submit(&workflow(10), None)
        .await
        .map_err(|e| failed(&e))?;
    warm.get(Duration::from_secs(120))
        .await
        .map_err(|e| failed(&e))?;

    let (mut chords, mut plains, mut submits) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let start_ms = now_ms();
        let submitted = client
            .submit(&workflow(members), None)
            .await
            .map_err(|e| failed(&e))?;
        submits.push(start.elapsed());
        let sum = submitted
            .get(Duration::from_secs(300))
            .await
            .map_err(|e| failed(&e))?;
        let expected = members as u64 * (members as u64 - 1);
        if sum != json!(expected) {
            return Err(Failure::new(
                exit::INTERNAL,
                format!("the chord summed to {sum}, not {expected}"),
            ));
        }
        let callback = submitted.result_ids()[0].to_string();
        let record = broker.record(&callback).await.map_err(|e| failed(&e))?;
        let finished = record
            .and_then(|record| record.finished_ms)
            .unwrap_or_else(now_ms);
        chords.push(Duration::from_millis(finished.saturating_sub(start_ms)));

        let template = client
            .call("math.add")
            .args(json!([20, 22]))
            .result_expires(Duration::from_secs(600))
            .prepare()
            .await
            .map_err(|e| failed(&e))?;
        let start_ms = now_ms();
        let mut ids = Vec::with_capacity(members as usize);
        let mut batch = Vec::new();
        for _ in 0..members {
            let mut task = template.clone();
            task.message.id = uuid::Uuid::new_v4().to_string();
            task.message.created_ms = start_ms;
            ids.push(task.message.id.clone());
            batch.push(task);
            if batch.len() == 1000 {
                client
                    .enqueue(std::mem::take(&mut batch))
                    .await
                    .map_err(|e| failed(&e))?;
            }
        }
        if !batch.is_empty() {
            client.enqueue(batch).await.map_err(|e| failed(&e))?;
        }
        drain(broker, &ids).await?;
        let mut last = 0;
        for id in &ids {
            if let Some(record) = broker.record(id).await.map_err(|e| failed(&e))? {
                last = last.max(record.finished_ms.unwrap_or(0));
            }
        }
        plains.push(Duration::from_millis(last.saturating_sub(start_ms)));
    }
    Ok((chords, plains, submits))
}
