//! Model providers: the brain's one seam to a language model.
//!
//! Everything sits behind `ModelProvider`: the Anthropic Messages API,
//! OpenAI-style chat completions, and deterministic scripted providers for
//! demos, tests and the simulator. The module is laid out by job:
//! - `providers/`: one file per provider;
//! - `provider_config.rs`: where the providers live, and `provider_for`,
//!   which picks one from an agent's model string;
//! - `http/`: the HTTP client and the server-sent events decoder that the
//!   network providers share;
//! - `resilience/`: `ResilientProvider`, which adds retries with jittered
//!   backoff and a per-provider `CircuitBreaker`;
//! - `registry.rs`: `Models`, a node's providers by model string;
//! - `message.rs`, `request.rs`, `response.rs` and `error.rs`: what goes in
//!   and out of a model call.
//!
//! **Boundary:** no global state here. Randomness comes from a seeded
//! `StdRng`, time from `tokio::time`, and TLS from a connector the caller
//! builds, so nothing installs a process-wide rustls provider.

mod error;
mod http;
mod message;
mod provider_config;
mod providers;
mod registry;
mod request;
mod resilience;
mod response;

use futures_util::future::BoxFuture;

pub use agentd_protocol::event::ModelUsage;
pub use error::ModelError;
pub use http::{
    HttpClient, HttpResponse, HttpStream, RawResponse, SseDecoder, TlsConnector, CONNECT_TIMEOUT_MS,
    REQUEST_TIMEOUT_MS_DEFAULT, RESPONSE_BODY_BYTES_MAX, SSE_LINE_BYTES_MAX,
};
pub use message::{Block, Message, Role};
pub use provider_config::{
    provider_for, ProviderConfig, ANTHROPIC_BASE_URL_DEFAULT, OPENAI_BASE_URL_DEFAULT, SCRIPTED_MODEL_PREFIX,
};
pub use providers::{
    AnthropicProvider, EchoProvider, OpenAiProvider, ScriptedProvider, StreamAssembler, ANTHROPIC_MODEL_PREFIX,
    ANTHROPIC_VERSION, ECHO_NO_TEXT, OPENAI_MODEL_PREFIX, SCRIPT_BYTES_MAX, SCRIPT_FINISHED, STREAM_BLOCKS_MAX,
    TOOL_ERROR_PREFIX,
};
pub use registry::Models;
pub use request::{ModelRequest, ToolSpec};
pub use resilience::{
    BreakerPermit, BreakerState, CircuitBreaker, ResilientProvider, RetryPolicy, BREAKER_COOL_DOWN_MS_DEFAULT,
    BREAKER_FAILURES_MAX_DEFAULT,
};
pub use response::{ModelResponse, StopReason};

/// A language model behind some API.
pub trait ModelProvider: Send + Sync + 'static {
    /// The provider's name (`anthropic`, `openai`, `scripted`), used in
    /// metrics and in `ModelError::CircuitOpen`.
    fn name(&self) -> &str;

    /// One model call.
    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>>;
}
