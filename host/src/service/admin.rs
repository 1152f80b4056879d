//! Admin routes (admin token only): tenants and their quotas, tokens. A token's text is in the
//! reply to its creation and nowhere else: the registry keeps only its hash.

use axum::extract::State;
use axum::http::StatusCode;
use wtq_client::api::{TenantRequest, TokenRequest, TokenResponse};
use wtq_client::broker::Tenancy;
use wtq_client::message::now_ms;
use wtq_client::tenancy::{MAX_TENANT_NAME, Quotas, Tenant, TokenRecord, valid_tenant_name};

use super::auth::AdminCaller;
use super::body::{Json, Path};
use super::error::{ApiError, ApiResult};
use super::state::AppState;
use super::tasks::shown;
use super::token;

/// `POST /v1/admin/tenants`: 409 if the tenant exists.
pub async fn create_tenant(
    State(shared): State<AppState>,
    _: AdminCaller,
    Json(request): Json<TenantRequest>,
) -> ApiResult<(StatusCode, axum::Json<Tenant>)> {
    let name = request.name;
    if !valid_tenant_name(&name) {
        return Err(ApiError::bad_request(format!(
            "tenant name `{}`: use 1 to {MAX_TENANT_NAME} lowercase ASCII letters, digits or `-`, not starting with `-`",
            shown(&name)
        )));
    }
    check_quotas(&request.quotas)?;
    if shared.call(shared.broker.tenant(&name)).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "tenant `{name}` already exists; change its quotas with PUT /v1/admin/tenants/{name}"
        )));
    }
    let tenant = Tenant {
        name,
        created_ms: now_ms(),
        quotas: request.quotas,
    };
    shared.call(shared.broker.put_tenant(&tenant)).await?;
    Ok((StatusCode::CREATED, axum::Json(tenant)))
}

/// `PUT /v1/admin/tenants/{name}`: replaces the tenant's quotas.
pub async fn update_tenant(
    State(shared): State<AppState>,
    _: AdminCaller,
    Path(name): Path<String>,
    Json(quotas): Json<Quotas>,
) -> ApiResult<axum::Json<Tenant>> {
    check_quotas(&quotas)?;
    let Some(mut tenant) = shared.call(shared.broker.tenant(&name)).await? else {
        return Err(no_tenant(&name));
    };
    tenant.quotas = quotas;
    shared.call(shared.broker.put_tenant(&tenant)).await?;
    // This process at once; others when their cached record expires (a second).
    shared.forget_tenant(&name);
    Ok(axum::Json(tenant))
}

/// `GET /v1/admin/tenants`.
pub async fn list_tenants(
    State(shared): State<AppState>,
    _: AdminCaller,
) -> ApiResult<axum::Json<Vec<Tenant>>> {
    Ok(axum::Json(shared.call(shared.broker.tenants()).await?))
}

/// `POST /v1/admin/tokens`: a token for a tenant, or an admin token.
pub async fn create_token(
    State(shared): State<AppState>,
    _: AdminCaller,
    Json(request): Json<TokenRequest>,
) -> ApiResult<(StatusCode, axum::Json<TokenResponse>)> {
    if let Some(name) = &request.tenant
        && shared.call(shared.broker.tenant(name)).await?.is_none()
    {
        return Err(no_tenant(name));
    }
    let (token, hash, record) = token::mint(request.tenant.as_deref()).map_err(|error| {
        tracing::error!(%error, "no randomness for a token");
        ApiError::internal("the service could not generate a token; see its log")
    })?;
    shared.call(shared.broker.put_token(&hash, &record)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenResponse {
            id: record.id,
            token,
            tenant: record.tenant,
        }),
    ))
}

/// `GET /v1/admin/tokens`.
pub async fn list_tokens(
    State(shared): State<AppState>,
    _: AdminCaller,
) -> ApiResult<axum::Json<Vec<TokenRecord>>> {
    Ok(axum::Json(shared.call(shared.broker.tokens()).await?))
}

/// `DELETE /v1/admin/tokens/{id}`: 204, or 404 if there is no such token.
pub async fn revoke_token(
    State(shared): State<AppState>,
    _: AdminCaller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !shared.call(shared.broker.revoke_token(&id)).await? {
        return Err(ApiError::not_found(format!(
            "no token `{}`; list them with GET /v1/admin/tokens",
            shown(&id)
        )));
    }
    // This process at once; others when their cached lookup expires (a second).
    shared.forget_token(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses quotas no request could satisfy or the rate maths cannot use.
fn check_quotas(quotas: &Quotas) -> ApiResult<()> {
    if let Some(rate) = quotas.rate
        && (rate.count == 0 || rate.per_ms == 0)
    {
        return Err(ApiError::bad_request(format!(
            "rate {} per {} ms: both must be at least 1 (e.g. {{\"count\": 100, \"per_ms\": 1000}})",
            rate.count, rate.per_ms
        )));
    }
    Ok(())
}

fn no_tenant(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no tenant `{}`; create it with POST /v1/admin/tenants",
        shown(name)
    ))
}
