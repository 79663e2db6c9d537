//! What the network providers share: the HTTP client that posts their
//! requests, and the decoder of server-sent event streams.

mod client;
mod sse_decoder;

pub use client::{
    HttpClient, HttpResponse, HttpStream, RawResponse, TlsConnector, CONNECT_TIMEOUT_MS, REQUEST_TIMEOUT_MS_DEFAULT,
    RESPONSE_BODY_BYTES_MAX,
};
pub use sse_decoder::{SseDecoder, SSE_LINE_BYTES_MAX};
