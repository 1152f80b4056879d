//! The worker's components: which digest a message runs, and that digest loaded into the
//! sandbox once (fetched from the registry, decompressed, compiled or taken from the artifact
//! cache).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use wtq_client::broker::Broker;
use wtq_client::message::TaskMessage;

use super::WorkerMetrics;
use crate::sandbox::{Component, Metering, Sandbox};

/// How long a name's current digest is trusted before the registry is asked again: a deploy
/// reaches running workers within this time.
const CURRENT_TTL: Duration = Duration::from_secs(1);

/// Why a message's component cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// Permanent: the registry has no such component or digest, or it does not load.
    #[error("{0}")]
    Unavailable(String),
    /// Transient: the broker could not be asked; the message should be handed back.
    #[error(transparent)]
    Broker(wtq_client::broker::Error),
}

impl From<wtq_client::broker::Error> for ComponentError {
    fn from(error: wtq_client::broker::Error) -> Self {
        match error {
            // Stored data that does not decode will not decode on the next delivery either.
            wtq_client::broker::Error::Corrupt(reason) => ComponentError::Unavailable(reason),
            other => ComponentError::Broker(other),
        }
    }
}

/// Loaded components by digest, shared by all executions of a worker.
pub struct Components<B> {
    broker: B,
    sandbox: Sandbox,
    /// Counts compile-cache hits and misses.
    metrics: Arc<WorkerMetrics>,
    loaded: Mutex<HashMap<String, Arc<OnceCell<Component>>>>,
    current: Mutex<HashMap<String, (Instant, String)>>,
}

impl<B: Broker + Clone> Components<B> {
    pub(super) fn new(broker: B, sandbox: Sandbox, metrics: Arc<WorkerMetrics>) -> Self {
        Components {
            broker,
            sandbox,
            metrics,
            loaded: Mutex::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
        }
    }

    /// The component `message` runs and its digest.
    pub async fn get(&self, message: &TaskMessage) -> Result<(Component, String), ComponentError> {
        let digest = match &message.digest {
            Some(digest) => digest.clone(),
            None => self.current(&message.component).await?,
        };
        let cell = {
            let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            // Looked up before inserting: the key is allocated only for a digest seen first.
            match loaded.get(&digest) {
                Some(cell) => cell.clone(),
                None => loaded.entry(digest.clone()).or_default().clone(),
            }
        };
        // A failed load leaves the cell empty, so a later message tries again.
        let component = cell
            .get_or_try_init(|| self.load(&message.component, &digest))
            .await?;
        Ok((component.clone(), digest))
    }

    async fn current(&self, name: &str) -> Result<String, ComponentError> {
        if let Some((at, digest)) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            && at.elapsed() < CURRENT_TTL
        {
            return Ok(digest.clone());
        }
        let record = self.broker.component(name).await?;
        let digest = record
            .as_ref()
            .and_then(|record| record.current())
            .map(|version| version.digest.clone())
            .ok_or_else(|| {
                ComponentError::Unavailable(format!("component `{name}` is not deployed"))
            })?;
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), (Instant::now(), digest.clone()));
        Ok(digest)
    }

    async fn load(&self, name: &str, digest: &str) -> Result<Component, ComponentError> {
        let short = &digest[..12.min(digest.len())];
        let compressed = self.broker.blob(digest).await?.ok_or_else(|| {
            ComponentError::Unavailable(format!("component {name}@{short} is not in the registry"))
        })?;
        let mut wasm = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut wasm)
            .map_err(|error| {
                ComponentError::Unavailable(format!("component {name}@{short} is corrupt: {error}"))
            })?;
        // Compiling blocks for tens of ms (seconds for Python/JS guests): keep it off the
        // threads that run other tasks.
        let sandbox = self.sandbox.clone();
        let loaded = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(sandbox.load(wasm, Metering::Fuel))
        });
        if let Ok(component) = &loaded {
            self.metrics.loaded(component.compile_source());
        }
        loaded.map_err(|error| {
            ComponentError::Unavailable(format!("component {name}@{short} does not load: {error}"))
        })
    }
}
