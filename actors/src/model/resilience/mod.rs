//! What keeps a flaky provider from failing a session or being overloaded:
//! retries with jittered backoff (`RetryPolicy`), a per-provider
//! `CircuitBreaker`, and `ResilientProvider`, which puts both around any
//! provider.

mod circuit_breaker;
mod resilient;
mod retry_policy;

pub use circuit_breaker::{
    BreakerPermit, BreakerState, CircuitBreaker, BREAKER_COOL_DOWN_MS_DEFAULT, BREAKER_FAILURES_MAX_DEFAULT,
};
pub use resilient::ResilientProvider;
pub use retry_policy::RetryPolicy;
