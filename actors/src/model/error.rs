//! How a model call fails, classified so the brain knows whether to retry.

/// A failed model call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The provider or the network had a hiccup (connection error, timeout,
    /// 408, 409, 5xx, 529 overloaded). The same request may succeed later.
    #[error("transient model error: {0}")]
    Transient(String),
    /// The provider asked us to slow down (429).
    #[error("model rate limited: {message}")]
    RateLimited { retry_after_ms: Option<u64>, message: String },
    /// The request itself is wrong (other 4xx, an unknown model string, a
    /// malformed script): sending it again will not help.
    #[error("permanent model error: {0}")]
    Permanent(String),
    /// The credentials are missing or refused (401, 403).
    #[error("model authentication failed: {0}")]
    Auth(String),
    /// The model answered something that is not a valid response (garbage,
    /// bad JSON, a tool_use without a name...).
    #[error("invalid model response: {0}")]
    InvalidResponse(String),
    /// The circuit breaker is open for this provider.
    #[error("circuit breaker open for model provider {provider}")]
    CircuitOpen { provider: String },
}

impl ModelError {
    /// Whether the same request may succeed if sent again later.
    ///
    /// `Transient` and `RateLimited` are retried by `ResilientProvider`.
    /// `CircuitOpen` is retryable too, but only *later*: the provider is sick,
    /// not the request, so a caller that gets it after `ResilientProvider`
    /// gave up should park the session and wake it after the breaker's
    /// cool-down rather than dead-letter it; `ResilientProvider` itself does
    /// not spin on an open breaker. `InvalidResponse` is not retryable: a
    /// provider that answers garbage tends to keep doing so, and each retry
    /// costs tokens. `Permanent` and `Auth` need a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Transient(_) | ModelError::RateLimited { .. } | ModelError::CircuitOpen { .. } => true,
            ModelError::Permanent(_) | ModelError::Auth(_) | ModelError::InvalidResponse(_) => false,
        }
    }

    /// Whether this error says the provider is unhealthy, which is what the
    /// circuit breaker counts. A `Permanent` or `Auth` answer proves the
    /// provider is up and answering.
    pub fn is_provider_failure(&self) -> bool {
        matches!(self, ModelError::Transient(_) | ModelError::RateLimited { .. } | ModelError::InvalidResponse(_))
    }

    /// A short stable label, used as the `outcome` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Transient(_) => "transient",
            ModelError::RateLimited { .. } => "rate_limited",
            ModelError::Permanent(_) => "permanent",
            ModelError::Auth(_) => "auth",
            ModelError::InvalidResponse(_) => "invalid_response",
            ModelError::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// Classifies a non-2xx HTTP answer. `retry_after_ms` comes from the
    /// `retry-after` header, `message` from the body.
    pub fn from_http_status(status: u16, retry_after_ms: Option<u64>, message: String) -> ModelError {
        let message = format!("HTTP {status}: {message}");
        match status {
            401 | 403 => ModelError::Auth(message),
            429 => ModelError::RateLimited { retry_after_ms, message },
            408 | 409 | 500..=599 => ModelError::Transient(message),
            _ => ModelError::Permanent(message),
        }
    }
}
