//! Who a request acts for: a bearer token, hashed and looked up in the tenant registry (a
//! lookup is reused up to [`super::state::CACHE_TTL`], so a revoked token stops working on
//! every process within a second), or, in local mode, the one local tenant. Handlers take
//! [`TenantCaller`] or [`AdminCaller`] as their first argument, so a request is refused before
//! its body is read. A token never reaches a log or an error message.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::error::{ApiError, ApiResult};
use super::state::{AppState, Shared, TenantContext};
use super::token;
use wtq_client::tenancy::TokenRecord;

/// A request acting for a tenant.
pub struct TenantCaller(pub Arc<TenantContext>);

/// A request made with an admin token.
pub struct AdminCaller;

impl FromRequestParts<AppState> for TenantCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        if let Some(local) = &state.local {
            return Ok(TenantCaller(Arc::clone(local)));
        }
        let record = authenticate(parts, state).await?;
        let Some(name) = record.tenant else {
            return Err(ApiError::forbidden(
                "this is an admin token: it manages tenants and tokens (/v1/admin/…) only; use a tenant's token",
            ));
        };
        match state.tenant(&name).await? {
            Some(context) => Ok(TenantCaller(context)),
            None => Err(ApiError::unauthorized(format!(
                "the token's tenant `{name}` no longer exists; ask an admin for a new token"
            ))),
        }
    }
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        if state.local.is_some() {
            return Err(ApiError::forbidden(
                "there is no admin in local mode (`wtq up`); run `wtq serve` to manage tenants and tokens",
            ));
        }
        let record = authenticate(parts, state).await?;
        if record.tenant.is_some() {
            return Err(ApiError::forbidden(
                "this token acts for a tenant; /v1/admin/… needs an admin token",
            ));
        }
        Ok(AdminCaller)
    }
}

/// The record of the request's bearer token; 401 if it is missing, unknown or revoked.
async fn authenticate(parts: &Parts, state: &Shared) -> ApiResult<TokenRecord> {
    let token = bearer(parts)?;
    state.token(&token::hash(token)).await?.ok_or_else(|| {
        ApiError::unauthorized("unknown or revoked token; ask an admin for a new one")
    })
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(parts: &Parts) -> ApiResult<&str> {
    let missing = || {
        ApiError::unauthorized("missing token: send `Authorization: Bearer <token>` (wtq --token)")
    };
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}
