//! Retries with backoff behind a circuit breaker, around any provider.

use std::sync::{Arc, Mutex};

use agentd_protocol::sync::lock;
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;

use super::{CircuitBreaker, RetryPolicy};
use crate::model::{ModelError, ModelProvider, ModelRequest, ModelResponse};

/// Wraps a provider: `Transient` and `RateLimited` errors are retried per
/// the `RetryPolicy` (a `RateLimited` retry waits at least the provider's
/// `retry-after`, and is not retried when that is longer than
/// `backoff_max_ms`), every attempt passes the shared `CircuitBreaker`, and
/// when retries are exhausted the last error is returned. An open breaker
/// fails the call at once with `CircuitOpen`, without calling the provider.
///
/// Each attempt is counted in `agentd_model_requests_total{provider,outcome}`
/// and timed in `agentd_model_request_seconds{provider}`.
pub struct ResilientProvider {
    inner: Arc<dyn ModelProvider>,
    policy: RetryPolicy,
    breaker: Arc<CircuitBreaker>,
    /// Jitter comes from a seeded generator so a simulation replays exactly.
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for ResilientProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ResilientProvider")
            .field("inner", &self.inner.name())
            .field("policy", &self.policy)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl ResilientProvider {
    pub fn new(inner: Arc<dyn ModelProvider>, policy: RetryPolicy, breaker: Arc<CircuitBreaker>, seed: u64) -> Self {
        ResilientProvider { inner, policy, breaker, rng: Mutex::new(StdRng::seed_from_u64(seed)) }
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    async fn call(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let provider = self.inner.name().to_string();
        let attempts_max = self.policy.attempts_max.max(1);
        let mut attempt = 0;
        loop {
            let Some(permit) = self.breaker.try_acquire() else {
                count(&provider, "circuit_open");
                return Err(ModelError::CircuitOpen { provider });
            };
            let started = Instant::now();
            let result = self.inner.complete(request.clone()).await;
            metrics::histogram!("agentd_model_request_seconds", "provider" => provider.clone())
                .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(response) => {
                    permit.success();
                    count(&provider, "ok");
                    return Ok(response);
                }
                Err(error) => error,
            };
            if error.is_provider_failure() {
                permit.failure();
            } else {
                permit.success();
            }
            count(&provider, error.kind());
            let retry_after_ms = match &error {
                ModelError::Transient(_) => None,
                ModelError::RateLimited { retry_after_ms, .. } => *retry_after_ms,
                _ => return Err(error),
            };
            attempt += 1;
            // A provider that asks for a longer pause than the policy would
            // ever wait is not waited for inside the call: the caller can
            // park the session instead of holding it.
            let pause_too_long = retry_after_ms.is_some_and(|pause_ms| pause_ms > self.policy.backoff_max_ms);
            if attempt >= attempts_max || pause_too_long {
                tracing::debug!(%provider, attempts = attempt, %error, "model call retries exhausted");
                return Err(error);
            }
            let backoff = {
                let mut rng = lock(&self.rng);
                self.policy.backoff(attempt - 1, retry_after_ms, &mut *rng)
            };
            tracing::debug!(%provider, attempt, backoff_ms = backoff.as_millis() as u64, %error, "retrying model call");
            tokio::time::sleep(backoff).await;
        }
    }
}

fn count(provider: &str, outcome: &'static str) {
    metrics::counter!("agentd_model_requests_total", "provider" => provider.to_string(), "outcome" => outcome)
        .increment(1);
}

impl ModelProvider for ResilientProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>> {
        Box::pin(self.call(request))
    }
}
