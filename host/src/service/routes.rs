//! The one list of routes: the router is built from it and the OpenAPI document is checked
//! against it, so neither can serve or describe a route the other lacks. Also the open routes
//! (`/healthz`, `/openapi.json`, `/metrics`), the answers for unknown paths and methods, and
//! the per-route request counting `/metrics` shows.

use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, on};
use wtq_client::DEFAULT_QUEUE;
use wtq_client::broker::Broker;

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use super::{admin, components, events, openapi, tasks, workflows};

#[path = "schedules.rs"]
mod schedules;

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    /// Lowercase, as OpenAPI keys operations.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// One route: method, path (axum's and OpenAPI's `{param}` syntax) and handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// The handler, served for the method it is given.
    handler: Box<dyn FnOnce(MethodFilter) -> MethodRouter<AppState>>,
}

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        method,
        path,
        handler: Box::new(move |filter| on(filter, handler)),
    }
}

/// Every route the service serves.
pub fn routes() -> Vec<Route> {
    use Method::{Delete, Get, Post, Put};
    vec![
        route(Post, "/v1/components/{name}", components::deploy),
        route(Get, "/v1/components", components::list),
        route(Get, "/v1/components/{name}", components::get),
        route(Post, "/v1/tasks", tasks::enqueue),
        route(Post, "/v1/tasks/batch", tasks::enqueue_batch),
        route(Get, "/v1/tasks/{id}", tasks::get),
        route(Get, "/v1/tasks/{id}/wait", tasks::wait),
        route(Post, "/v1/tasks/{id}/revoke", tasks::revoke),
        route(Post, "/v1/queues/{queue}/purge", tasks::purge),
        route(Post, "/v1/workflows", workflows::submit),
        route(Get, "/v1/workflows/{id}", workflows::get),
        route(Get, "/v1/dead", tasks::dead),
        route(Post, "/v1/dead/retry", tasks::retry_dead),
        route(Delete, "/v1/dead", tasks::purge_dead),
        route(Get, "/v1/schedules", schedules::list),
        route(Post, "/v1/schedules", schedules::put),
        route(Delete, "/v1/schedules/{name}", schedules::remove),
        route(Get, "/v1/events", events::events),
        route(Get, "/v1/usage", tasks::usage),
        route(Get, "/v1/tenant", tasks::tenant),
        route(Post, "/v1/admin/tenants", admin::create_tenant),
        route(Put, "/v1/admin/tenants/{name}", admin::update_tenant),
        route(Get, "/v1/admin/tenants", admin::list_tenants),
        route(Post, "/v1/admin/tokens", admin::create_token),
        route(Get, "/v1/admin/tokens", admin::list_tokens),
        route(Delete, "/v1/admin/tokens/{id}", admin::revoke_token),
        route(Get, "/openapi.json", openapi_json),
        route(Get, "/healthz", healthz),
        route(Get, "/metrics", metrics),
    ]
}

/// The service's router over `state`. Each route's responses are counted under its template
/// (not the request's path, which would make a series per task id).
pub fn router(state: AppState) -> Router {
    routes()
        .into_iter()
        .enumerate()
        .fold(Router::new(), |router, (index, route)| {
            let shared = state.clone();
            let counted = axum::middleware::map_response(move |response: Response| {
                shared.metrics.request(index, response.status());
                std::future::ready(response)
            });
            router.route(
                route.path,
                (route.handler)(route.method.filter()).layer(counted),
            )
        })
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

async fn no_route(State(shared): State<AppState>, uri: Uri) -> ApiError {
    shared.metrics.unmatched(StatusCode::NOT_FOUND);
    ApiError::not_found(format!(
        "no route {}; the routes are listed at /openapi.json",
        tasks::shown(uri.path())
    ))
}

async fn wrong_method(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{method} is not served at {}; the routes are listed at /openapi.json",
        tasks::shown(uri.path())
    ))
}

/// `GET /openapi.json`.
async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

/// `GET /healthz`: 200 when the broker answers within the broker timeout, else 503.
async fn healthz(
    State(shared): State<AppState>,
) -> ApiResult<(StatusCode, axum::Json<serde_json::Value>)> {
    // The cheapest call every broker has: one counter read.
    shared.call(shared.broker.depth(DEFAULT_QUEUE)).await?;
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    ))
}

/// `GET /metrics`: the Prometheus text exposition; no broker call, so it stays cheap.
async fn metrics(State(shared): State<AppState>) -> ([(HeaderName, &'static str); 1], String) {
    (
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        shared.metrics.render(),
    )
}
