//! `wtq bench http`: enqueue throughput through the HTTP API with keep-alive connections, in
//! batches and one task per request. The service runs in this process on a loopback port, in a
//! fresh namespace of the broker given (or the benchmark drives an external service).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use wtq_client::api::EnqueueRequest;
use wtq_client::broker::Tenancy;
use wtq_client::http::HttpApi;

use super::{Failure, exit, say};
use crate::service::{Auth, Service, ServiceConfig};

/// What `wtq bench http` measures.
pub struct HttpBench {
    pub component: PathBuf,
    pub tasks: u32,
    pub batch: u32,
    pub connections: u32,
    pub single: u32,
    pub url: String,
    pub service: Option<String>,
    pub token: Option<String>,
}

pub fn run(bench: HttpBench) -> Result<u8, Failure> {
    let internal = |error: String| Failure::new(exit::INTERNAL, error);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| internal(format!("starting the async runtime: {error}")))?;
    runtime.block_on(async {
        // Either the caller's service, or one of our own on a loopback port.
        let (target, _service) = match &bench.service {
            Some(url) => (url.clone(), None),
            None => {
                let (url, handle) = own_service(&bench).await?;
                (url, Some(handle))
            }
        };
        let api = HttpApi::new(&target, bench.token.as_deref())
            .map_err(super::queue::broker_failure)?;
        if bench.service.is_some() {
            let wasm = read_component(&bench)?;
            api.deploy("math", wasm)
                .await
                .map_err(super::queue::broker_failure)?;
        }
        say(format!(
            "wtq bench http: {} math.add tasks in batches of {} over {} keep-alive connections to {target}",
            bench.tasks, bench.batch, bench.connections
        ));
        let request = EnqueueRequest {
            task: "math.add".into(),
            args: Some(json!([20, 22])),
            result_expires_ms: Some(600_000),
            ..EnqueueRequest::default()
        };

        let batches = bench.tasks.div_ceil(bench.batch) as usize;
        let rate = drive(&api, bench.connections, batches, {
            let request = request.clone();
            let size = bench.batch as usize;
            move |api: HttpApi| {
                let batch = vec![request.clone(); size];
                async move { api.enqueue_batch(batch).await.map(|done| done.len()) }
            }
        })
        .await?;
        say(format!("enqueue, batches of {}: {rate:.0} tasks/s", bench.batch));

        let rate = drive(&api, bench.connections, bench.single as usize, {
            let request = request.clone();
            move |api: HttpApi| {
                let request = request.clone();
                async move { api.enqueue(&request).await.map(|_| 1) }
            }
        })
        .await?;
        say(format!(
            "enqueue, one task per request: {rate:.0} tasks/s ({} requests)",
            bench.single
        ));
        Ok(exit::SUCCESS)
    })
}

/// Runs `requests` calls of `one` spread over `connections` concurrent clients; returns the
/// tasks per second enqueued.
async fn drive<F, Fut>(
    api: &HttpApi,
    connections: u32,
    requests: usize,
    one: F,
) -> Result<f64, Failure>
where
    F: Fn(HttpApi) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<usize, wtq_client::broker::Error>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let (api, next, one) = (api.clone(), next.clone(), one.clone());
        clients.push(tokio::spawn(async move {
            let mut tasks = 0;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                tasks += one(api.clone()).await?;
            }
            Ok::<usize, wtq_client::broker::Error>(tasks)
        }));
    }
    let mut tasks = 0;
    for client in clients {
        tasks += client
            .await
            .map_err(|error| Failure::new(exit::INTERNAL, error.to_string()))?
            .map_err(super::queue::broker_failure)?;
    }
    Ok(tasks as f64 / started.elapsed().as_secs_f64())
}

fn read_component(bench: &HttpBench) -> Result<Vec<u8>, Failure> {
    std::fs::read(&bench.component).map_err(|error| {
        Failure::new(
            exit::INVALID_COMPONENT,
            format!(
                "cannot read `{}`: {error}; build the examples first (cargo xtask guests)",
                bench.component.display()
            ),
        )
    })
}

/// Starts the service in this process over a fresh namespace of `bench.url`, with `math`
/// deployed; returns its URL and the task serving it.
async fn own_service(bench: &HttpBench) -> Result<(String, tokio::task::JoinHandle<()>), Failure> {
    let wasm = read_component(bench)?;
    let root = wtq_client::connect(&bench.url)
        .await
        .map_err(super::queue::broker_failure)?;
    let namespace = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let broker = root
        .namespaced(&namespace)
        .map_err(super::queue::broker_failure)?;
    let sandbox = super::serve::validation_sandbox()?;
    crate::registry::deploy(
        &broker,
        &sandbox,
        "math",
        wasm,
        crate::registry::DEFAULT_MAX_UPLOAD,
    )
    .await
    .map_err(|error| Failure::new(exit::INVALID_COMPONENT, error.to_string()))?;
    let config = ServiceConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        auth: Auth::Local { namespace },
        broker_timeout: Duration::from_secs(5),
        max_body: 64 << 20,
    };
    let service = Service::bind(config, root, sandbox)
        .await
        .map_err(|error| Failure::new(exit::UNAVAILABLE, error.to_string()))?;
    let url = format!("http://{}", service.local_addr());
    let handle = tokio::spawn(async move {
        if let Err(error) = service.run(std::future::pending()).await {
            tracing::error!(%error, "the benchmark's service stopped");
        }
    });
    Ok((url, handle))
}
