//! One request per stream: reading it, and answering what could not be read.

use std::time::Duration;

use agentd_protocol::frame::decode_body;
use agentd_protocol::limits::REQUEST_READ_TIMEOUT_MS;
use agentd_protocol::ApiError;
use agentd_transport::wire::{read_frame_body, write_frame};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads the one request frame of a stream. On bad input the stream gets a
/// typed error frame (when it can still be written) and is closed.
pub(super) async fn read_request<T: DeserializeOwned, E: Serialize>(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    max_bytes: usize,
    to_error: impl Fn(ApiError) -> E,
) -> Option<T> {
    read_request_as(send, recv, max_bytes, to_error, |body| decode_body(body)).await
}

/// As [`read_request`], with the frame's body decoded by `decode`.
pub(super) async fn read_request_as<T, E: Serialize>(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    max_bytes: usize,
    to_error: impl Fn(ApiError) -> E,
    decode: impl Fn(&[u8]) -> Result<T, agentd_protocol::Error>,
) -> Option<T> {
    let timeout = Duration::from_millis(REQUEST_READ_TIMEOUT_MS);
    let read = tokio::time::timeout(timeout, read_frame_body(recv, max_bytes)).await;
    let read = read.map(|body| match body {
        Ok(Some(body)) => decode(&body).map(Some).map_err(agentd_transport::Error::Protocol),
        Ok(None) => Ok(None),
        Err(error) => Err(error),
    });
    let error = match read {
        Ok(Ok(Some(request))) => return Some(request),
        Ok(Ok(None)) => ApiError::Malformed { message: "stream ended before a request".into() },
        Ok(Err(agentd_transport::Error::Protocol(error))) => ApiError::from(error),
        Ok(Err(error)) => ApiError::Malformed { message: error.to_string() },
        Err(_) => ApiError::Malformed { message: format!("no request within {timeout:?}") },
    };
    metrics::counter!("agentd_bad_requests_total").increment(1);
    tracing::debug!(%error, "bad request");
    let _ = recv.stop(0u32.into());
    answer(send, &to_error(error), max_bytes).await;
    None
}

/// Writes the one answer of a stream and finishes it. A client that went
/// away meanwhile is nobody's error.
pub(super) async fn answer<T: Serialize>(send: &mut quinn::SendStream, response: &T, max_bytes: usize) {
    if write_frame(send, response, max_bytes).await.is_ok() {
        let _ = send.finish();
    }
}
