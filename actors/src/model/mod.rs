//! Model providers: the brain's one seam to a language model.
//!
//! Everything sits behind `ModelProvider`: the Anthropic Messages API,
//! OpenAI-style chat completions, and deterministic scripted providers for
//! demos, tests and the simulator. `provider_for` picks one from an agent's
//! model string; `ResilientProvider` adds retries with jittered backoff and
//! a per-provider `CircuitBreaker`.
//!
//! **Boundary:** no global state here. Randomness comes from a seeded
//! `StdRng`, time from `tokio::time`, and TLS from a connector the caller
//! builds, so nothing installs a process-wide rustls provider.

mod anthropic;
mod anthropic_stream;
mod circuit_breaker;
mod echo;
mod error;
mod http_client;
mod message;
mod openai;
mod provider_config;
mod request;
mod resilient;
mod response;
mod retry_policy;
mod script;
mod sse_decoder;

use futures_util::future::BoxFuture;

pub use anthropic::{AnthropicProvider, ANTHROPIC_MODEL_PREFIX, ANTHROPIC_VERSION};
pub use anthropic_stream::{StreamAssembler, STREAM_BLOCKS_MAX};
pub use circuit_breaker::{
    BreakerPermit, BreakerState, CircuitBreaker, BREAKER_COOL_DOWN_MS_DEFAULT, BREAKER_FAILURES_MAX_DEFAULT,
};
pub use echo::{EchoProvider, ECHO_NO_TEXT};
pub use error::ModelError;
pub use http_client::{
    HttpClient, HttpResponse, HttpStream, TlsConnector, CONNECT_TIMEOUT_MS, REQUEST_TIMEOUT_MS_DEFAULT,
    RESPONSE_BODY_BYTES_MAX,
};
pub use message::{Block, Message, Role};
pub use openai::{OpenAiProvider, OPENAI_MODEL_PREFIX, TOOL_ERROR_PREFIX};
pub use provider_config::{
    provider_for, ProviderConfig, ANTHROPIC_BASE_URL_DEFAULT, OPENAI_BASE_URL_DEFAULT, SCRIPTED_MODEL_PREFIX,
};
pub use request::{ModelRequest, ToolSpec};
pub use resilient::ResilientProvider;
pub use response::{ModelResponse, StopReason, Usage};
pub use retry_policy::RetryPolicy;
pub use script::{ScriptedProvider, SCRIPT_BYTES_MAX, SCRIPT_FINISHED};
pub use sse_decoder::{SseDecoder, SSE_LINE_BYTES_MAX};

/// A language model behind some API.
pub trait ModelProvider: Send + Sync + 'static {
    /// The provider's name (`anthropic`, `openai`, `scripted`), used in
    /// metrics and in `ModelError::CircuitOpen`.
    fn name(&self) -> &str;

    /// One model call.
    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>>;
}
