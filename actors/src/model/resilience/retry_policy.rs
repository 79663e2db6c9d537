//! How often and how patiently a model call is retried.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: before retry `n` (0-based) wait a
/// uniformly random time in `0..min(backoff_max_ms, backoff_base_ms * 2^n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in total, the first included; zero is treated as one.
    pub attempts_max: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts_max: 5, backoff_base_ms: 500, backoff_max_ms: 30_000 }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry).
    /// `retry_after_ms`, when the provider sent one, is a lower bound.
    pub fn backoff(&self, retry: u32, retry_after_ms: Option<u64>, rng: &mut impl Rng) -> Duration {
        let exponential = 1u64.checked_shl(retry).and_then(|factor| self.backoff_base_ms.checked_mul(factor));
        let ceiling_ms = exponential.unwrap_or(u64::MAX).min(self.backoff_max_ms);
        let jittered_ms = if ceiling_ms == 0 { 0 } else { rng.random_range(0..ceiling_ms) };
        Duration::from_millis(jittered_ms.max(retry_after_ms.unwrap_or(0)))
    }
}
