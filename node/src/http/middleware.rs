//! Layers around every request: a `request-id` on every answer (and in
//! every error's envelope), the API key turned into the request's caller,
//! and errors that reach the client in the API's envelope whatever made
//! them (a handler, a body too large, a method not allowed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{envelope, HttpError};
use super::AppState;

/// Gives the request an id, and the answer a `request-id` header; an error
/// answer gets its envelope here, where the id is known.
pub async fn request_id(request: Request, next: Next) -> Response {
    let id = new_request_id();
    let mut response = next.run(request).await;
    let error = response.extensions_mut().remove::<HttpError>().or_else(|| stray_error(&response));
    if let Some(error) = error {
        let headers = std::mem::take(response.headers_mut());
        let body = envelope(&error, &id).to_string();
        response = (error.status, body).into_response();
        *response.headers_mut() = headers;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

/// An error answer that no handler shaped (axum's own: a body over the
/// limit, a method a route does not take), as the envelope describes it.
fn stray_error(response: &Response) -> Option<HttpError> {
    let status = response.status();
    let json =
        response.headers().get(CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return None;
    }
    Some(match status {
        StatusCode::PAYLOAD_TOO_LARGE => HttpError::new(
            status,
            "invalid_request_error",
            format!("the request body exceeds {} bytes", agentd_protocol::limits::HTTP_BODY_BYTES_MAX),
        ),
        StatusCode::METHOD_NOT_ALLOWED => HttpError::new(status, "invalid_request_error", "method not allowed here"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            HttpError::new(status, "invalid_request_error", "the request could not be read")
        }
        _ if status.is_server_error() => HttpError::new(status, "api_error", "the node failed to answer"),
        _ => HttpError::new(status, "invalid_request_error", status.canonical_reason().unwrap_or("bad request")),
    })
}

/// `req_` and 24 hex digits: unique per process (a random start, then a counter).
fn new_request_id() -> String {
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = START.get_or_init(rand::random);
    format!("req_{start:016x}{:08x}", COUNTER.fetch_add(1, Ordering::Relaxed) as u32)
}

/// Admits the request (see `crate::service::RequestPermit`) or answers 529
/// at once. An event stream (SSE) is not counted: it lives as long as its
/// reader.
pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path().ends_with("/events/stream") {
        return next.run(request).await;
    }
    match state.service.admit_request() {
        Ok(_permit) => next.run(request).await,
        Err(error) => HttpError::from(error).into_response(),
    }
}

/// Turns the request's API key (`Authorization: Bearer KEY`, or
/// `x-api-key: KEY`) into its caller, or answers 401 (or 429 past the key's
/// rate limit).
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let key = api_key(request.headers());
    match state.service.authenticate(key.unwrap_or_default()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => HttpError::from(error).into_response(),
    }
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")));
    bearer.or_else(|| headers.get("x-api-key").and_then(|value| value.to_str().ok())).map(str::trim)
}

/// Any path the API does not have.
pub async fn unknown_route(request: Request<Body>) -> Response {
    let message = format!("agentd does not serve {} {}", request.method(), request.uri().path());
    HttpError::not_found(message).into_response()
}
