//! Tenant routes about workflows: submit a workflow document and read its tree. Every task
//! of the workflow is checked against the tenant's registry and caps (unset limits get the
//! caps) and counts against its rate, as if enqueued alone; then the whole workflow is stored
//! in one broker step.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use wtq_client::api::WorkflowResponse;
use wtq_client::broker::Broker;
use wtq_client::message::now_ms;
use wtq_client::workflow::Node;

use super::auth::TenantCaller;
use super::body::{Json, Path, Query};
use super::error::{ApiError, ApiResult};
use super::quota;
use super::state::AppState;

/// Query of `submit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    id: Option<String>,
}

/// `POST /v1/workflows[?id=ID]`.
pub async fn submit(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Query(query): Query<SubmitQuery>,
    Json(workflow): Json<Node>,
) -> ApiResult<(StatusCode, axum::Json<WorkflowResponse>)> {
    let mut plan = shared.call(tenant.client.plan(&workflow, query.id)).await?;
    // On each compiled task, so a limit set on an enclosing node is kept (and checked).
    for task in &mut plan.tasks {
        quota::apply_caps(&tenant.tenant.quotas, &mut task.message.limits)?;
    }
    quota::check_batch(&tenant.tenant.quotas, plan.tasks.len())?;
    quota::take_rate(&shared, &tenant, plan.tasks.len()).await?;
    let reply = WorkflowResponse {
        id: plan.id.clone(),
        tree: plan.tree.clone(),
    };
    shared
        .call(Broker::submit(&tenant.broker, plan, now_ms()))
        .await?;
    shared.metrics.enqueued_workflows.inc();
    Ok((StatusCode::CREATED, axum::Json(reply)))
}

/// `GET /v1/workflows/{id}`: the tree; as "no such workflow" for another tenant's id.
pub async fn get(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<WorkflowResponse>> {
    let tree = shared.call(Broker::workflow(&tenant.broker, &id)).await?;
    let tree = tree.ok_or_else(|| {
        ApiError::not_found(format!("no workflow `{id}` (never submitted, or expired)"))
    })?;
    Ok(axum::Json(WorkflowResponse { id, tree }))
}
