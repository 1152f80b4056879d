//! Tenant routes about components: deploy (upload, validate in the sandbox, store), list, get.
//! An upload is refused by size before it is read (its `Content-Length`), while it is read
//! (streamed with a limit), and while it is inflated (gzip capped at the same limit); then by
//! the storage quota; then by the sandbox — all before anything is stored.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use wtq_client::broker::Broker;
use wtq_client::registry::{ComponentRecord, valid_name};

use super::auth::TenantCaller;
use super::body::{self, Encoding, GunzipError, Path};
use super::error::{ApiError, ApiResult};
use super::quota;
use super::state::AppState;
use super::tasks::shown;
use crate::registry::{self, DeployError};
use crate::sandbox;

/// `POST /v1/components/{name}`: the component, raw or `Content-Encoding: gzip`.
pub async fn deploy(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<ComponentRecord>)> {
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            DeployError::Name(shown(&name)).to_string(),
        ));
    }
    let limit = tenant
        .tenant
        .quotas
        .max_upload
        .unwrap_or(u64::MAX)
        .min(shared.max_body);
    let encoding = Encoding::of(&headers)?;
    let wire_limit = encoding.wire_limit(limit);
    let too_large = |size: Option<u64>| {
        let size = size.map_or_else(|| "more than that".to_string(), |n| format!("{n} bytes"));
        ApiError::too_large(format!(
            "component `{name}` is {size}, over the upload limit of {limit} bytes; make it smaller (e.g. build with opt-level \"s\" and strip it)"
        ))
    };
    if let Some(length) = body::content_length(&headers)
        && length > wire_limit
    {
        return Err(too_large(Some(length)));
    }
    let bytes = body::collect(body, wire_limit)
        .await
        .ok_or_else(|| too_large(None))?;

    // Inflating and hashing tens of MiB is CPU work: off the request threads.
    let (wasm, digest) = tokio::task::spawn_blocking(move || {
        let wasm = match encoding {
            Encoding::Identity => Vec::from(bytes),
            Encoding::Gzip => body::gunzip(&bytes, limit)?,
        };
        let digest = hex(&Sha256::digest(&wasm));
        Ok::<_, GunzipError>((wasm, digest))
    })
    .await
    .map_err(|error| {
        tracing::error!(%error, "reading an upload failed");
        ApiError::internal("reading the upload failed; see the service's log")
    })?
    .map_err(|error| match error {
        GunzipError::TooLarge => too_large(None),
        GunzipError::Invalid(error) => ApiError::bad_request(format!(
            "the body of `{name}` is not valid gzip ({error}); send it raw or gzip-compressed"
        )),
    })?;
    if wasm.len() as u64 > limit {
        return Err(too_large(Some(wasm.len() as u64)));
    }

    if tenant.tenant.quotas.storage.is_some() {
        let stored = shared.call(tenant.broker.components()).await?;
        quota::check_storage(
            &tenant.tenant.quotas,
            &stored,
            &name,
            &digest,
            wasm.len() as u64,
        )?;
    }

    // Validation compiles the component, which blocks its thread for up to seconds: it runs
    // on the blocking pool, driven there by this runtime. Storing is a broker call under the
    // broker deadline, like every other.
    let runtime = tokio::runtime::Handle::current();
    let sandbox = shared.sandbox.clone();
    let validated = tokio::task::spawn_blocking(move || {
        runtime.block_on(registry::validate(&sandbox, &name, wasm, limit))
    })
    .await
    .map_err(|error| {
        tracing::error!(%error, "a deploy panicked");
        ApiError::internal("the deploy failed; see the service's log")
    })?;
    let upload = validated.map_err(deploy_error)?;
    let record = shared.call(tenant.broker.put_component(upload)).await?;
    Ok((StatusCode::CREATED, axum::Json(record)))
}

/// The API's answer to a refused deploy.
fn deploy_error(error: DeployError) -> ApiError {
    match error {
        DeployError::Name(_) => ApiError::bad_request(error.to_string()),
        DeployError::TooLarge { .. } => ApiError::too_large(error.to_string()),
        DeployError::Broker(error) => error.into(),
        DeployError::Invalid(sandbox::Error::Cache { .. } | sandbox::Error::Engine(_))
        | DeployError::Compress(_) => {
            tracing::error!(%error, "deploy failed in the host");
            ApiError::internal("the service could not compile components; see its log")
        }
        // Everything else is about the bytes: not wasm, not a component, a forbidden import,
        // a listing that failed or trapped.
        DeployError::Invalid(error) => ApiError::invalid_component(error.to_string()),
    }
}

/// `GET /v1/components`.
pub async fn list(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
) -> ApiResult<axum::Json<Vec<ComponentRecord>>> {
    Ok(axum::Json(shared.call(tenant.broker.components()).await?))
}

/// `GET /v1/components/{name}`.
pub async fn get(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<ComponentRecord>> {
    shared
        .call(tenant.broker.component(&name))
        .await?
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no component `{}`; deploy it with POST /v1/components/{{name}}",
                shown(&name)
            ))
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
