//! The one place model providers touch the network: POST a JSON body, get
//! a classified answer back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::model::ModelError;

/// Default bound on one model call, from sending the request to the last
/// byte of the answer (for a streamed answer: to its head, then on each
/// silence).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// Bound on establishing a TCP connection.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Bound on one answer body; a model answer is a few hundred kilobytes at most.
pub const RESPONSE_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// How much of an error body goes into an error message.
const ERROR_BODY_CHARS_MAX: usize = 500;

/// The TLS-capable connector a deployment hands in to reach `https://`
/// providers. Build it with an explicit crypto provider so that nothing
/// installs a process-wide rustls default, e.g.:
///
/// ```ignore
/// hyper_rustls::HttpsConnectorBuilder::new()
///     .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
///     .https_or_http()
///     .enable_http1()
///     .enable_http2()
///     .build()
/// ```
pub type TlsConnector = HttpsConnector<HttpConnector>;

/// HTTPS (and plain HTTP) with the web PKI roots and an explicitly chosen
/// crypto provider, so nothing installs a process-wide rustls default.
fn default_tls_connector(plain: HttpConnector) -> Result<TlsConnector, rustls::Error> {
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(plain))
}

/// The transport: HTTPS-or-HTTP normally, plain HTTP if TLS cannot be set up.
#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<TlsConnector, Full<Bytes>>),
}

/// An HTTP answer with a 2xx status.
#[derive(Debug)]
pub struct HttpResponse {
    pub body: Bytes,
}

/// An HTTP answer of any status, read whole: for protocols (MCP) that read
/// the status and headers themselves.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// A small JSON-over-HTTP client with a timeout and error classification.
#[derive(Clone)]
pub struct HttpClient {
    transport: Transport,
    request_timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match self.transport {
            Transport::Plain(_) => "plain",
            Transport::Tls(_) => "tls",
        };
        formatter
            .debug_struct("HttpClient")
            .field("transport", &transport)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl HttpClient {
    /// A client that speaks `http://` only, or `https://` too when
    /// `tls_connector` is given (it must accept both schemes:
    /// `https_or_http()`).
    pub fn new(tls_connector: Option<TlsConnector>) -> HttpClient {
        let builder = Client::builder(TokioExecutor::new());
        let mut plain = HttpConnector::new();
        plain.set_connect_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)));
        // A request's head and body go out as separate writes; with Nagle's
        // algorithm the body waits for the server's delayed ACK (about 40 ms
        // on Linux), which `agentd bench mcp` measured on every MCP call.
        plain.set_nodelay(true);
        plain.enforce_http(false);
        let transport = match tls_connector.map(Ok).unwrap_or_else(|| default_tls_connector(plain.clone())) {
            Ok(connector) => Transport::Tls(builder.build(connector)),
            Err(error) => {
                tracing::warn!(%error, "no TLS for model providers; only http:// base URLs will work");
                Transport::Plain(builder.build(plain))
            }
        };
        HttpClient { transport, request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT) }
    }

    /// Replaces the per-call timeout.
    pub fn with_request_timeout(mut self, request_timeout: Duration) -> HttpClient {
        self.request_timeout = request_timeout;
        self
    }

    /// POSTs `body` as JSON to `url` with the extra `headers`. A 2xx answer
    /// comes back as its body; everything else as a classified error. The
    /// whole exchange is bounded by the request timeout.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<HttpResponse, ModelError> {
        let request = self.build_request(url, headers, body)?;
        let exchange = async {
            let response = self.send(request).await?;
            let body = collect(response.into_body(), url).await?;
            Ok(HttpResponse { body })
        };
        tokio::time::timeout(self.request_timeout, exchange).await.unwrap_or_else(|_| Err(self.timed_out(url)))
    }

    /// POSTs `body` as JSON and returns the answer whatever its status;
    /// only a failure to exchange at all (no connection, a reset, the
    /// request timeout) is an error, always `ModelError::Transient`.
    pub async fn post_raw(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<RawResponse, ModelError> {
        self.post_raw_as(url, "application/json", headers, body).await
    }

    /// `post_raw` with a body of `content_type` (an OAuth token request is
    /// `application/x-www-form-urlencoded`).
    pub async fn post_raw_as(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<RawResponse, ModelError> {
        let request = self.build_request_as(url, content_type, headers, body)?;
        let exchange = async {
            let response = match &self.transport {
                Transport::Plain(client) => client.request(request).await,
                Transport::Tls(client) => client.request(request).await,
            }
            .map_err(|error| ModelError::Transient(format!("request to {url} failed: {}", error_chain(&error))))?;
            let (parts, body) = response.into_parts();
            let body = collect(body, url).await?;
            Ok(RawResponse { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::time::timeout(self.request_timeout, exchange).await.unwrap_or_else(|_| Err(self.timed_out(url)))
    }

    /// Like `post_json`, but hands a 2xx body over as it arrives. The
    /// request timeout bounds the wait for the answer's head and then each
    /// wait for the next chunk, so a long generation that keeps streaming
    /// is not cut off.
    pub async fn post_json_streaming(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<HttpStream, ModelError> {
        let request = self.build_request(url, headers, body)?;
        let response = tokio::time::timeout(self.request_timeout, self.send(request))
            .await
            .unwrap_or_else(|_| Err(self.timed_out(url)))?;
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default().to_string();
        Ok(HttpStream {
            body: response.into_body(),
            content_type,
            idle_timeout: self.request_timeout,
            bytes_read: 0,
            url: url.to_string(),
        })
    }

    fn build_request(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, ModelError> {
        self.build_request_as(url, "application/json", headers, body)
    }

    fn build_request_as(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, ModelError> {
        let mut request = Request::builder().method(Method::POST).uri(url).header(CONTENT_TYPE, content_type);
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|_| ModelError::Permanent(format!("header {name} has a value that is not valid in HTTP")))?;
            request = request.header(HeaderName::from_static(name), value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| ModelError::Permanent(format!("cannot build a request to {url}: {error}")))?;
        if request.uri().scheme_str() == Some("https") && matches!(self.transport, Transport::Plain(_)) {
            return Err(ModelError::Permanent(format!(
                "{url} is https but no TLS connector was configured (ProviderConfig::tls_connector)"
            )));
        }
        Ok(request)
    }

    /// Sends `request`; a non-2xx answer is read and classified.
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, ModelError> {
        let uri = request.uri().to_string();
        let response = match &self.transport {
            Transport::Plain(client) => client.request(request).await,
            Transport::Tls(client) => client.request(request).await,
        }
        .map_err(|error| ModelError::Transient(format!("request to {uri} failed: {}", error_chain(&error))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after_ms = retry_after_ms(response.headers());
        let body = collect(response.into_body(), &uri).await?;
        Err(ModelError::from_http_status(status.as_u16(), retry_after_ms, error_message(&body)))
    }

    fn timed_out(&self, url: &str) -> ModelError {
        ModelError::Transient(format!("no complete answer from {url} within {} ms", self.request_timeout.as_millis()))
    }
}

/// A 2xx answer body being received.
#[derive(Debug)]
pub struct HttpStream {
    body: Incoming,
    content_type: String,
    idle_timeout: Duration,
    bytes_read: usize,
    url: String,
}

impl HttpStream {
    /// The answer's `content-type`, empty if it had none.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The next piece of the body, or `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ModelError> {
        loop {
            let frame = tokio::time::timeout(self.idle_timeout, self.body.frame()).await.map_err(|_| {
                ModelError::Transient(format!(
                    "{} sent nothing for {} ms mid-answer",
                    self.url,
                    self.idle_timeout.as_millis()
                ))
            })?;
            let Some(frame) = frame else { return Ok(None) };
            let frame = frame.map_err(|error| {
                ModelError::Transient(format!("reading the answer from {} failed: {}", self.url, error_chain(&error)))
            })?;
            // Trailers carry nothing we need.
            let Ok(data) = frame.into_data() else { continue };
            self.bytes_read += data.len();
            if self.bytes_read > RESPONSE_BODY_BYTES_MAX {
                return Err(ModelError::InvalidResponse(format!(
                    "the answer from {} is larger than {RESPONSE_BODY_BYTES_MAX} bytes",
                    self.url
                )));
            }
            return Ok(Some(data));
        }
    }

    /// The rest of the body.
    pub async fn collect(mut self) -> Result<Bytes, ModelError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

async fn collect(body: Incoming, url: &str) -> Result<Bytes, ModelError> {
    let collected = Limited::new(body, RESPONSE_BODY_BYTES_MAX).collect().await.map_err(|error| {
        if error.is::<LengthLimitError>() {
            ModelError::InvalidResponse(format!("the answer from {url} is larger than {RESPONSE_BODY_BYTES_MAX} bytes"))
        } else {
            ModelError::Transient(format!("reading the answer from {url} failed: {}", error_chain(&*error)))
        }
    })?;
    Ok(collected.to_bytes())
}

/// The error and its sources, because hyper's top-level message
/// ("client error (Connect)") hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads `retry-after-ms` (OpenAI) or `retry-after` in seconds. An HTTP-date
/// `retry-after` is ignored: reading it would need the wall clock.
fn retry_after_ms(headers: &hyper::HeaderMap) -> Option<u64> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    if let Some(milliseconds) = header("retry-after-ms").and_then(|value| value.parse::<f64>().ok()) {
        return finite_milliseconds(milliseconds);
    }
    header("retry-after")
        .and_then(|value| value.parse::<f64>().ok())
        .and_then(|seconds| finite_milliseconds(seconds * 1000.0))
}

fn finite_milliseconds(milliseconds: f64) -> Option<u64> {
    if milliseconds.is_finite() && milliseconds >= 0.0 {
        // Saturating float-to-int conversion; the value is non-negative and finite.
        Some(milliseconds.ceil() as u64)
    } else {
        None
    }
}

/// The human part of an error body: `error.message` for both APIs' JSON
/// error shapes, else the start of the body as text.
fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let message =
            value.pointer("/error/message").or_else(|| value.get("message")).and_then(|message| message.as_str());
        if let Some(message) = message {
            return message.to_string();
        }
    }
    String::from_utf8_lossy(body).chars().take(ERROR_BODY_CHARS_MAX).collect()
}
