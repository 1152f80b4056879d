//! The API's errors: one type every handler and extractor returns, rendered as
//! `{"error": {"kind", "message"}}` with the status `docs/http-api.md` lists, plus how broker
//! and client errors map onto it. Messages are one line: the thing, the value, what to do.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wtq_client::ClientError;
use wtq_client::api::{ErrorBody, ErrorDetail};
use wtq_client::broker;

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// Seconds for `Retry-After` (429 only).
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 `invalid_json`: the body did not parse (serde's message names the field).
    pub fn invalid_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 400 `invalid_component`: the upload is not a task component.
    pub fn invalid_component(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_component", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 403 `limit_above_cap`.
    pub fn limit_above_cap(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "limit_above_cap", message)
    }

    /// 403 `storage_quota_exceeded`.
    pub fn storage_quota_exceeded(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "storage_quota_exceeded", message)
    }

    /// 404 `not_found`. Callers pass only what the request itself named, so another tenant's
    /// object and a missing one answer with the same body.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 for a known path with another method (still in the API's shape).
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad_request", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413 `too_large`.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 429 `rate_limited`, with `Retry-After` in whole seconds (rounded up, at least 1).
    pub fn rate_limited(retry_after_ms: u64, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_ms.div_ceil(1000).max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// 503 `unavailable`: the broker did not answer in time; nothing was confirmed.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `internal`: a fault of the service or of stored data, logged where it happened.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The same error with `context` (e.g. `tasks[3]`) in front of its message.
    pub fn context(mut self, context: &str) -> ApiError {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The status this error answers with.
    #[cfg(test)]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable kind of this error.
    #[cfg(test)]
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<broker::Error> for ApiError {
    fn from(error: broker::Error) -> ApiError {
        match error {
            broker::Error::DuplicateId(id) => ApiError::conflict(format!(
                "task id `{id}` is already in use; choose another task_id"
            )),
            broker::Error::Corrupt(_) | broker::Error::Url { .. } => {
                tracing::error!(%error, "broker call failed");
                ApiError::internal("the service failed reading stored data; see its log")
            }
            // Unreachable, a failed command, an evicting Redis: the broker cannot be relied on
            // right now, which is what 503 says. The detail (a redacted URL) stays in the log.
            _ => {
                tracing::warn!(%error, "broker unavailable");
                ApiError::unavailable(
                    "the broker is unavailable; nothing was stored; retry shortly",
                )
            }
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> ApiError {
        if let ClientError::Broker(error) = error {
            return error.into();
        }
        let kind = match error.cause() {
            ClientError::Address(_)
            | ClientError::UnknownComponent { .. }
            | ClientError::UnknownTask { .. } => "unknown_task",
            ClientError::Args(_) | ClientError::TooLarge { .. } => "invalid_args",
            ClientError::InvalidOption(_)
            | ClientError::Broker(_)
            | ClientError::Workflow { .. } => "invalid_option",
        };
        ApiError::new(StatusCode::BAD_REQUEST, kind, error.to_string())
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let check = |ms: u64, seconds: u64| {
            let response = ApiError::rate_limited(ms, "slow down").into_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(
                response.headers()[header::RETRY_AFTER],
                seconds.to_string().as_str(),
                "{ms} ms"
            );
        };
        check(0, 1);
        check(1, 1);
        check(1000, 1);
        check(1001, 2);
        check(59_999, 60);
    }
}
