//! Tenant routes about tasks: enqueue (one or a batch), read, wait, revoke, purge a queue,
//! dead letters, usage and the tenant itself. Each handler is thin: the caller's namespaced
//! broker and client do the work, [`super::quota`] the quotas. Every "no such task" answer is
//! built from the request alone, so another tenant's id reads exactly like a missing one.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use wtq_client::api::{
    BatchRequest, BatchResponse, CountResponse, EnqueueRequest, EnqueueResponse, MAX_WAIT,
    RetryDeadRequest, RevokeRequest, RevokeResponse, TenantResponse,
};
use wtq_client::broker::{Broker, NewTask, Tenancy};
use wtq_client::message::{TaskRecord, now_ms};
use wtq_client::registry::valid_name;
use wtq_client::tenancy::Usage;

use super::auth::TenantCaller;
use super::body::{Json, JsonOrDefault, Path, Query};
use super::error::{ApiError, ApiResult};
use super::quota;
use super::state::{AppState, TenantContext};

/// Most tasks in one batch request.
pub const MAX_BATCH: usize = 10_000;
/// How long `wait` waits when the request names no `timeout_ms`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Dead letters listed when the request names no `limit`.
pub const DEFAULT_DEAD_LIMIT: usize = 100;
/// Most dead letters one listing returns.
pub const MAX_DEAD_LIMIT: usize = 10_000;

type Created<T> = (StatusCode, axum::Json<T>);

/// `POST /v1/tasks`.
pub async fn enqueue(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Json(request): Json<EnqueueRequest>,
) -> ApiResult<Created<EnqueueResponse>> {
    let task = shared.call(prepare(&tenant, &request)).await?;
    quota::take_rate(&shared, &tenant, 1).await?;
    let enqueued = shared
        .call(Broker::enqueue(&tenant.broker, vec![task], now_ms()))
        .await?;
    shared.metrics.enqueued_tasks.inc();
    let Some(enqueued) = enqueued.into_iter().next() else {
        tracing::error!("the broker answered an enqueue with no id");
        return Err(ApiError::internal("the broker answered with no task id"));
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(EnqueueResponse {
            id: enqueued.id,
            created: enqueued.created,
        }),
    ))
}

/// `POST /v1/tasks/batch`: every call is checked before any is stored, then all are stored in
/// one broker round trip.
pub async fn enqueue_batch(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Json(request): Json<BatchRequest>,
) -> ApiResult<Created<BatchResponse>> {
    let n = request.tasks.len();
    if n > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch of {n} tasks is over the limit of {MAX_BATCH}; split it"
        )));
    }
    quota::check_batch(&tenant.tenant.quotas, n)?;
    if n == 0 {
        return Ok((
            StatusCode::CREATED,
            axum::Json(BatchResponse { tasks: Vec::new() }),
        ));
    }
    // One timeout for the whole loop: the registry is cached, so only the first call of each
    // component asks the broker.
    let prepared = shared
        .call(async {
            let mut prepared = Vec::with_capacity(n);
            for (index, call) in request.tasks.iter().enumerate() {
                let task = prepare(&tenant, call)
                    .await
                    .map_err(|error| error.context(&format!("tasks[{index}]")))?;
                prepared.push(task);
            }
            Ok::<_, ApiError>(prepared)
        })
        .await?;
    quota::take_rate(&shared, &tenant, n).await?;
    let enqueued = shared
        .call(Broker::enqueue(&tenant.broker, prepared, now_ms()))
        .await?;
    shared.metrics.enqueued_tasks.add(n as u64);
    if enqueued.len() != n {
        tracing::error!(
            sent = n,
            got = enqueued.len(),
            "the broker lost ids of a batch"
        );
        return Err(ApiError::internal(format!(
            "the broker answered a batch of {n} with {} ids",
            enqueued.len()
        )));
    }
    let tasks = enqueued
        .into_iter()
        .map(|task| EnqueueResponse {
            id: task.id,
            created: task.created,
        })
        .collect();
    Ok((StatusCode::CREATED, axum::Json(BatchResponse { tasks })))
}

/// One call checked against the tenant's caps and registry, as the message to store.
async fn prepare(tenant: &TenantContext, request: &EnqueueRequest) -> ApiResult<NewTask> {
    let mut options = request.options();
    quota::apply_caps(&tenant.tenant.quotas, &mut options.limits)?;
    Ok(tenant
        .client
        .call(&request.task)
        .options(options)
        .prepare()
        .await?)
}

/// `GET /v1/tasks/{id}`.
pub async fn get(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TaskRecord>> {
    let record = shared.call(tenant.broker.record(&id)).await?;
    record.map(axum::Json).ok_or_else(|| no_task(&id))
}

/// Query of `wait`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    timeout_ms: Option<u64>,
}

/// `GET /v1/tasks/{id}/wait?timeout_ms=N`: the record once final, or after N ms.
pub async fn wait(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> ApiResult<axum::Json<TaskRecord>> {
    let timeout = query.timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    if timeout > MAX_WAIT {
        return Err(ApiError::bad_request(format!(
            "timeout_ms {} is over the longest wait of {} ms; wait again for longer",
            timeout.as_millis(),
            MAX_WAIT.as_millis()
        )));
    }
    // A plain read first, under the broker timeout: an unknown task is a 404 at once, and a
    // broker that is down a 503 within a second, however long the wait asked for.
    let record = shared
        .call(tenant.broker.record(&id))
        .await?
        .ok_or_else(|| no_task(&id))?;
    if record.state.is_final() || timeout.is_zero() {
        return Ok(axum::Json(record));
    }
    let record = tokio::select! {
        waited = tokio::time::timeout(
            timeout + shared.broker_timeout,
            tenant.broker.wait(&id, timeout),
        ) => waited.map_err(|_| shared.timed_out())??,
        // A shutting-down service answers with what it has rather than holding the shutdown
        // for up to a minute.
        () = shared.shutting_down() => shared.call(tenant.broker.record(&id)).await?,
    };
    record.map(axum::Json).ok_or_else(|| no_task(&id))
}

/// `POST /v1/tasks/{id}/revoke` (an empty body is `{"terminate": false}`).
pub async fn revoke(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(id): Path<String>,
    JsonOrDefault(request): JsonOrDefault<RevokeRequest>,
) -> ApiResult<axum::Json<RevokeResponse>> {
    let revoked = shared
        .call(tenant.broker.revoke(&id, request.terminate, now_ms()))
        .await?;
    RevokeResponse::from_revoked(revoked)
        .map(axum::Json)
        .ok_or_else(|| no_task(&id))
}

/// `POST /v1/queues/{queue}/purge`.
pub async fn purge(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(queue): Path<String>,
) -> ApiResult<axum::Json<CountResponse>> {
    if !valid_name(&queue) {
        return Err(ApiError::bad_request(format!(
            "queue `{}`: use 1 to 128 ASCII letters, digits, `_` or `-`",
            shown(&queue)
        )));
    }
    let count = shared.call(tenant.broker.purge(&queue, now_ms())).await?;
    Ok(axum::Json(CountResponse { count }))
}

/// Query of `dead`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    limit: Option<usize>,
}

/// `GET /v1/dead?limit=N`: dead-lettered tasks, most recent first.
pub async fn dead(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Query(query): Query<DeadQuery>,
) -> ApiResult<axum::Json<Vec<TaskRecord>>> {
    let limit = query.limit.unwrap_or(DEFAULT_DEAD_LIMIT);
    if limit > MAX_DEAD_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is over the most one listing returns, {MAX_DEAD_LIMIT}"
        )));
    }
    let records = shared.call(tenant.broker.dead(limit)).await?;
    Ok(axum::Json(records))
}

/// `POST /v1/dead/retry`: one dead letter (404 if there is none with that id), or all.
pub async fn retry_dead(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    JsonOrDefault(request): JsonOrDefault<RetryDeadRequest>,
) -> ApiResult<axum::Json<CountResponse>> {
    let id = request.id.as_deref();
    let count = shared.call(tenant.broker.retry_dead(id, now_ms())).await?;
    match id {
        Some(id) if count == 0 => Err(ApiError::not_found(format!(
            "no dead-lettered task `{}`; list them with GET /v1/dead",
            shown(id)
        ))),
        _ => Ok(axum::Json(CountResponse { count })),
    }
}

/// `DELETE /v1/dead`.
pub async fn purge_dead(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
) -> ApiResult<axum::Json<CountResponse>> {
    let count = shared.call(tenant.broker.purge_dead()).await?;
    Ok(axum::Json(CountResponse { count }))
}

/// `GET /v1/usage`.
pub async fn usage(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
) -> ApiResult<axum::Json<Usage>> {
    Ok(axum::Json(shared.call(tenant.broker.usage()).await?))
}

/// `GET /v1/tenant`.
pub async fn tenant(TenantCaller(tenant): TenantCaller) -> axum::Json<TenantResponse> {
    axum::Json(tenant.tenant.clone())
}

/// The 404 for task `id`: the same whether it never existed, expired, or is another tenant's.
fn no_task(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no task `{}` (never enqueued, or its record expired)",
        shown(id)
    ))
}

/// `text` as an error message may show it: one line, not unboundedly long.
pub fn shown(text: &str) -> String {
    const MOST: usize = 128;
    let mut out: String = text
        .chars()
        .take(MOST)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > MOST {
        out.push('…');
    }
    out
}
