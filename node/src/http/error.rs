//! Errors as the Managed Agents API answers them: a status code the SDKs map
//! to their exception classes, and the envelope
//! `{"type":"error","error":{"type","message","details"?},"request_id"}`.

use agentd_protocol::ApiError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error on its way to the client. The body is written by the request-id
/// middleware (`super::request_id`), which knows the request's id.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    /// The envelope's `error.type`.
    pub kind: &'static str,
    pub message: String,
    /// `error.details.error_code`, which the SDKs map to finer classes.
    pub error_code: Option<&'static str>,
    /// Seconds to wait before retrying (`retry-after`).
    pub retry_after_ms: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> HttpError {
        HttpError { status, kind, message: message.into(), error_code: None, retry_after_ms: None }
    }

    /// A request the client must fix (400).
    pub fn invalid(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A field agentd does not have yet: refused, never accepted and ignored.
    pub fn unsupported(field: &str, why: &str) -> HttpError {
        HttpError::invalid(format!("`{field}` is not supported by agentd yet: {why}"))
    }

    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    pub fn with_code(mut self, error_code: &'static str) -> HttpError {
        self.error_code = Some(error_code);
        self
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> HttpError {
        let message = error.to_string();
        match error {
            ApiError::Malformed { .. } | ApiError::InvalidRequest { .. } => HttpError::invalid(message),
            ApiError::UnsupportedVersion { .. } => HttpError::invalid(message),
            ApiError::PayloadTooLarge { .. } => {
                HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", message)
            }
            ApiError::NotFound { .. } => HttpError::not_found(message),
            ApiError::PermissionDenied { .. } => HttpError::new(StatusCode::FORBIDDEN, "permission_error", message),
            ApiError::Unauthenticated { .. } => {
                HttpError::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
            }
            ApiError::Conflict { .. } | ApiError::StaleEpoch { .. } => {
                HttpError::new(StatusCode::CONFLICT, "conflict_error", message)
            }
            ApiError::RateLimited { retry_after_ms } => HttpError {
                retry_after_ms: Some(retry_after_ms),
                ..HttpError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            ApiError::NotLeader { .. } | ApiError::NotReplica { .. } | ApiError::Unavailable { .. } => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", message)
            }
            ApiError::Internal { .. } => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", message),
            // Only between nodes; a client never sees it.
            ApiError::IdentityInUse { .. } | ApiError::NodeRemoved { .. } | ApiError::WrongNode { .. } => {
                HttpError::new(StatusCode::CONFLICT, "conflict_error", message)
            }
            // 507 is a 5xx, so the SDKs retry it (a load balancer in front
            // may pick another node); the type names the condition.
            ApiError::StorageFull { .. } => {
                HttpError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full_error", message)
            }
            // Anthropic's own status for an overloaded API, which the SDKs retry.
            ApiError::Overloaded { retry_after_ms } => HttpError {
                retry_after_ms: Some(retry_after_ms),
                ..HttpError::new(overloaded_status(), "overloaded_error", message)
            },
        }
    }
}

/// 529, which `StatusCode` has no name for.
fn overloaded_status() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        let headers = response.headers_mut();
        // The SDKs retry 409s unless told not to; a conflict stays one.
        if self.status == StatusCode::CONFLICT {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Some(retry_after_ms) = self.retry_after_ms {
            let seconds = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                headers.insert("retry-after", value);
            }
            if let Ok(value) = HeaderValue::from_str(&retry_after_ms.to_string()) {
                headers.insert("retry-after-ms", value);
            }
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// The error envelope's JSON, with the request's id.
pub fn envelope(error: &HttpError, request_id: &str) -> serde_json::Value {
    let mut body = serde_json::json!({"type": error.kind, "message": error.message});
    if let Some(code) = error.error_code {
        body["details"] = serde_json::json!({"error_code": code});
    }
    serde_json::json!({"type": "error", "error": body, "request_id": request_id})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_retryable_5xx_that_names_itself() {
        let error = HttpError::from(ApiError::StorageFull { node: 3, free_bytes: 10, floor_bytes: 100 });
        assert_eq!(error.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(error.kind, "storage_full_error");
        assert!(error.message.contains("node 3") && error.message.contains("another node"), "{}", error.message);
    }

    #[test]
    fn overload_is_a_529_with_a_retry_hint() {
        let error = HttpError::from(ApiError::Overloaded { retry_after_ms: 50 });
        assert_eq!(error.status.as_u16(), 529);
        assert_eq!(error.kind, "overloaded_error");
        let response = error.into_response();
        assert_eq!(response.headers()["retry-after-ms"], "50");
        assert_eq!(response.headers()["retry-after"], "1");
    }
}
