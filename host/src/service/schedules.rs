//! Tenant routes about periodic tasks: list, store and remove the schedule entries of the
//! caller's namespace, which a beat over that namespace fires (`wtq up` runs one for its local
//! tenant). Thin: the entry is checked by the beat's own rules ([`Plan::compile`]), the broker
//! stores it.
//!
//! Declared from `routes.rs` (the route list is its only user).

use axum::extract::State;
use axum::http::StatusCode;
use wtq_client::api::CountResponse;
use wtq_client::broker::Schedules;
use wtq_client::schedule::{ScheduleEntry, ScheduleStatus};

use crate::beat::plan::Plan;
use crate::service::auth::TenantCaller;
use crate::service::body::{Json, Path};
use crate::service::error::{ApiError, ApiResult};
use crate::service::state::AppState;
use crate::service::tasks::shown;

/// Most entries one tenant may store: each is read by the beat every second.
pub const MAX_SCHEDULES: usize = 1000;

/// `GET /v1/schedules`: every stored entry, by name, with its last handled tick.
pub async fn list(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
) -> ApiResult<axum::Json<Vec<ScheduleStatus>>> {
    let list = shared.call(crate::beat::statuses(&tenant.broker)).await?;
    Ok(axum::Json(list))
}

/// `POST /v1/schedules`: creates or replaces the entry of that name.
pub async fn put(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Json(entry): Json<ScheduleEntry>,
) -> ApiResult<(StatusCode, axum::Json<ScheduleEntry>)> {
    Plan::compile(&entry).map_err(ApiError::bad_request)?;
    let stored = shared.call(tenant.broker.schedules()).await?;
    if stored.len() >= MAX_SCHEDULES && !stored.iter().any(|e| e.name == entry.name) {
        return Err(ApiError::bad_request(format!(
            "{MAX_SCHEDULES} schedule entries are stored already; remove one first"
        )));
    }
    shared.call(tenant.broker.put_schedule(&entry)).await?;
    Ok((StatusCode::CREATED, axum::Json(entry)))
}

/// `DELETE /v1/schedules/{name}`: removes the entry and its state.
pub async fn remove(
    State(shared): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<CountResponse>> {
    if !shared.call(tenant.broker.remove_schedule(&name)).await? {
        return Err(ApiError::not_found(format!(
            "no schedule `{}`; list them with GET /v1/schedules",
            shown(&name)
        )));
    }
    Ok(axum::Json(CountResponse { count: 1 }))
}
