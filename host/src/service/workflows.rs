//! Tenant routes about workflows: submit a workflow document and read its tree. Every task
//! of the workflow is checked against the tenant's caps and registry and counts against its
//! rate, as if enqueued alone; then the whole workflow is stored in one broker step.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use wtq_client::api::WorkflowResponse;
use wtq_client::broker::Broker;
use wtq_client::message::now_ms;
use wtq_client::tenancy::Quotas;
use wtq_client::workflow::{Kind, Node};

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
    Json(mut workflow): Json<Node>,
) -> ApiResult<(StatusCode, axum::Json<WorkflowResponse>)> {
    apply_caps(&tenant.tenant.quotas, &mut workflow)?;
    let plan = shared.call(tenant.client.plan(&workflow, query.id)).await?;
    quota::check_batch(&tenant.tenant.quotas, plan.tasks.len())?;
    quota::take_rate(&shared, &tenant, plan.tasks.len()).await?;
    let reply = WorkflowResponse {
        id: plan.id.clone(),
        tree: plan.tree.clone(),
    };
    shared
        .call(Broker::submit(&tenant.broker, plan, now_ms()))
        .await?;
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

/// The tenant's per-task caps on every node (filled in where unset, refused where above),
/// so every task inside inherits them.
fn apply_caps(quotas: &Quotas, node: &mut Node) -> ApiResult<()> {
    let options = &mut node.options;
    let mut limits = wtq_client::message::LimitOverrides {
        time_ms: options.time_limit_ms,
        fuel: options.fuel,
        memory: options.memory,
    };
    quota::apply_caps(quotas, &mut limits)?;
    (options.time_limit_ms, options.fuel, options.memory) =
        (limits.time_ms, limits.fuel, limits.memory);
    for callback in options.link.iter_mut().chain(options.link_error.iter_mut()) {
        apply_caps(quotas, callback)?;
    }
    match &mut node.kind {
        Kind::Chain(nodes) | Kind::Group(nodes) => nodes
            .iter_mut()
            .try_for_each(|node| apply_caps(quotas, node)),
        Kind::Chord { header, body } => {
            header
                .iter_mut()
                .try_for_each(|node| apply_caps(quotas, node))?;
            apply_caps(quotas, body)
        }
        Kind::Task(_) | Kind::Chunks { .. } | Kind::Map { .. } | Kind::Starmap { .. } => Ok(()),
    }
}
