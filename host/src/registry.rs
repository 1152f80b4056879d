//! Deploying components: validate the bytes as a task component in the sandbox (it is one, it
//! exports our interface, it imports only what the host grants, it lists its tasks), then store
//! it compressed under its sha-256 digest and point its name at it. Storage is the broker's.

use std::io::Write;

use wtq_client::broker::Broker;
use wtq_client::message::now_ms;
use wtq_client::registry::{ComponentRecord, TaskInfo, Upload, Version, valid_name};

use crate::sandbox::{Metering, Sandbox};

/// Largest component accepted by default (Python components are ~35 MB).
pub const DEFAULT_MAX_UPLOAD: u64 = 64 << 20;

/// Why a deploy was refused; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("component name `{0}`: use 1 to 128 ASCII letters, digits, `_` or `-` (or --name)")]
    Name(String),
    #[error("the component is {size} bytes, over the upload limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Invalid(#[from] crate::sandbox::Error),
    #[error(transparent)]
    Broker(#[from] wtq_client::broker::Error),
    #[error("compressing the component: {0}")]
    Compress(std::io::Error),
}

/// Validates `wasm` and makes it the current version of `name`.
pub async fn deploy<B: Broker>(
    broker: &B,
    sandbox: &Sandbox,
    name: &str,
    wasm: Vec<u8>,
    max_size: u64,
) -> Result<ComponentRecord, DeployError> {
    let upload = validate(sandbox, name, wasm, max_size).await?;
    Ok(broker.put_component(upload).await?)
}

/// Validates `wasm` as the next version of `name` and prepares what to store (compressed),
/// touching no broker: the caller stores it (under its own deadline, in the service).
pub async fn validate(
    sandbox: &Sandbox,
    name: &str,
    wasm: Vec<u8>,
    max_size: u64,
) -> Result<Upload, DeployError> {
    if !valid_name(name) {
        return Err(DeployError::Name(name.to_string()));
    }
    let size = wasm.len() as u64;
    if size > max_size {
        return Err(DeployError::TooLarge {
            size,
            limit: max_size,
        });
    }
    let component = sandbox.load(wasm.clone(), Metering::Fuel).await?;
    let tasks: Vec<TaskInfo> = component.tasks().to_vec();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&wasm).map_err(DeployError::Compress)?;
    let compressed = encoder.finish().map_err(DeployError::Compress)?;
    Ok(Upload {
        name: name.to_string(),
        version: Version {
            digest: component.digest().to_string(),
            deployed_ms: now_ms(),
            tasks,
            size,
        },
        compressed,
    })
}
