//! `Models`: the providers a node serves, by model string, each behind
//! retries and a circuit breaker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentd_protocol::sync::lock;

use super::{provider_for, CircuitBreaker, ModelError, ModelProvider, ProviderConfig, ResilientProvider, RetryPolicy};

/// Model providers by model string, each behind retries and a breaker.
pub struct Models {
    config: ProviderConfig,
    retry: RetryPolicy,
    seed: u64,
    providers: Mutex<HashMap<String, Arc<dyn ModelProvider>>>,
}

impl Models {
    pub fn new(config: ProviderConfig, retry: RetryPolicy, seed: u64) -> Self {
        Self { config, retry, seed, providers: Mutex::new(HashMap::new()) }
    }

    /// Serves `model` with `inner` (behind the same retries and breaker as
    /// any provider) instead of resolving it from the configuration: how
    /// the simulator plugs in its deterministic model.
    pub fn with_provider(self, model: &str, inner: Arc<dyn ModelProvider>) -> Self {
        let breaker = Arc::new(CircuitBreaker::default());
        let provider: Arc<dyn ModelProvider> = Arc::new(ResilientProvider::new(inner, self.retry, breaker, self.seed));
        lock(&self.providers).insert(model.to_string(), provider);
        self
    }

    /// The provider that serves `model`, resolved from the configuration
    /// (and put behind retries and a breaker) on first use.
    pub(crate) fn provider(&self, model: &str) -> Result<Arc<dyn ModelProvider>, ModelError> {
        let mut providers = lock(&self.providers);
        if let Some(provider) = providers.get(model) {
            return Ok(provider.clone());
        }
        let inner = provider_for(model, &self.config)?;
        let breaker = Arc::new(CircuitBreaker::default());
        let provider: Arc<dyn ModelProvider> = Arc::new(ResilientProvider::new(inner, self.retry, breaker, self.seed));
        providers.insert(model.to_string(), provider.clone());
        Ok(provider)
    }
}
