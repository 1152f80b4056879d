//! The HTTP API's request and response bodies, shared by the service (`wtq serve`, `wtq up`)
//! and the HTTP client, so the two cannot drift. Routes are listed in `docs/http-api.md` and
//! served as OpenAPI at `/openapi.json`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::Revoked;
use crate::client::CallOptions;
use crate::message::{Backoff, LimitOverrides, State};
use crate::tenancy::{Quotas, Tenant};
use crate::workflow::Tree;

/// Longest wait one `GET /v1/tasks/{id}/wait` may ask for; clients wait longer by asking again.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// `POST /v1/tasks`: one call, with Celery's options. Durations are milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// `NAME.TASK` or `NAME@DIGEST.TASK`.
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_expires_ms: Option<u64>,
}

impl EnqueueRequest {
    /// The request for a call of `task` with `options`.
    pub fn new(task: &str, options: &CallOptions) -> EnqueueRequest {
        let ms = |duration: Option<Duration>| duration.map(|d| d.as_millis() as u64);
        EnqueueRequest {
            task: task.to_string(),
            args: options.args.clone(),
            kwargs: options.kwargs.clone(),
            queue: options.queue.clone(),
            priority: options.priority,
            countdown_ms: ms(options.countdown),
            eta_ms: options.eta_ms,
            expires_ms: ms(options.expires),
            max_retries: options.max_retries,
            retry_backoff: options.retry_backoff,
            time_limit_ms: options.limits.time_ms,
            fuel: options.limits.fuel,
            memory: options.limits.memory,
            task_id: options.task_id.clone(),
            idempotency_key: options.idempotency_key.clone(),
            max_deliveries: options.max_deliveries,
            result_expires_ms: ms(options.result_expires),
        }
    }

    /// The call options this request carries.
    pub fn options(&self) -> CallOptions {
        let duration = |ms: Option<u64>| ms.map(Duration::from_millis);
        CallOptions {
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            countdown: duration(self.countdown_ms),
            eta_ms: self.eta_ms,
            expires: duration(self.expires_ms),
            max_retries: self.max_retries,
            retry_backoff: self.retry_backoff,
            limits: LimitOverrides {
                time_ms: self.time_limit_ms,
                fuel: self.fuel,
                memory: self.memory,
            },
            task_id: self.task_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            max_deliveries: self.max_deliveries,
            result_expires: duration(self.result_expires_ms),
        }
    }
}

/// Reply to an enqueue: the task id (for a repeated idempotency key, the first task's, with
/// `created: false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueResponse {
    pub id: String,
    pub created: bool,
}

/// Reply to `POST /v1/workflows` (whose body is a workflow document,
/// [`crate::workflow::Node`]) and `GET /v1/workflows/{id}`: the workflow's id and its tree
/// with every task id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowResponse {
    pub id: String,
    pub tree: Tree,
}

/// `POST /v1/tasks/batch`: many calls in one request; all are checked before any is stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub tasks: Vec<EnqueueRequest>,
}

/// Reply to a batch, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub tasks: Vec<EnqueueResponse>,
}

/// `POST /v1/tasks/{id}/revoke`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub terminate: bool,
}

/// What a revoke did (an unknown id is a 404, not a body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RevokeResponse {
    Revoked,
    Running { terminating: bool },
    AlreadyFinal { state: State },
}

impl RevokeResponse {
    /// The body for a revoke outcome; `None` for an unknown task (404).
    pub fn from_revoked(revoked: Revoked) -> Option<RevokeResponse> {
        match revoked {
            Revoked::Revoked => Some(RevokeResponse::Revoked),
            Revoked::Running { terminating } => Some(RevokeResponse::Running { terminating }),
            Revoked::AlreadyFinal(state) => Some(RevokeResponse::AlreadyFinal { state }),
            Revoked::Unknown => None,
        }
    }

    pub fn revoked(self) -> Revoked {
        match self {
            RevokeResponse::Revoked => Revoked::Revoked,
            RevokeResponse::Running { terminating } => Revoked::Running { terminating },
            RevokeResponse::AlreadyFinal { state } => Revoked::AlreadyFinal(state),
        }
    }
}

/// `POST /v1/dead/retry`: one dead-lettered task, or all of them when `id` is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDeadRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// How many messages an action touched (purge, retry, purge dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountResponse {
    pub count: usize,
}

/// `POST /v1/admin/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    pub name: String,
    #[serde(default)]
    pub quotas: Quotas,
}

/// `POST /v1/admin/tokens`: a token for `tenant`, or an admin token when it is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A new token: `token` is shown this once and stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub id: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `GET /v1/tenant`: the caller's own tenant.
pub type TenantResponse = Tenant;

/// Every error: `{"error": {"kind": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, snake_case (`unauthorized`, `not_found`, `rate_limited`, ...).
    pub kind: String,
    /// One line for a person: what was wrong and what to do.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_survive_the_wire() {
        let options = CallOptions {
            args: Some(serde_json::json!([1, 2])),
            queue: Some("q".into()),
            priority: Some(7),
            countdown: Some(Duration::from_millis(1500)),
            limits: LimitOverrides {
                time_ms: Some(10),
                fuel: Some(5),
                memory: None,
            },
            task_id: Some("t".into()),
            ..CallOptions::default()
        };
        let request = EnqueueRequest::new("math.add", &options);
        let text = serde_json::to_string(&request).expect("serialises");
        let back: EnqueueRequest = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, request);
        assert_eq!(format!("{:?}", back.options()), format!("{options:?}"));
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let error = serde_json::from_str::<EnqueueRequest>(r#"{"task":"a.b","prority":1}"#)
            .expect_err("refused");
        assert!(error.to_string().contains("prority"), "{error}");
    }
}
