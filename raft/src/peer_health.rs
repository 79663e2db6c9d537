//! Which peers answer, so that a dead peer costs one log line, not hundreds
//! a second: one line when a peer stops answering, a summary every
//! [`DOWN_SUMMARY_INTERVAL`] while it stays down, one line when it is back.
//! While a peer is down, calls to it fail at once until the next attempt,
//! which backs off from [`RETRY_BACKOFF_MIN`] to [`RETRY_BACKOFF_MAX`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use agentd_protocol::sync::lock;
use tokio::time::Instant;

pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);
pub const DOWN_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// A peer that stopped answering.
struct Down {
    since: Instant,
    failures: u64,
    backoff: Duration,
    retry_at: Instant,
    reported_at: Instant,
}

#[derive(Default)]
pub struct PeerHealth {
    down: Mutex<HashMap<String, Down>>,
}

impl PeerHealth {
    /// `Err` with how long until the next attempt while `addr` is down and
    /// its backoff has not passed; the caller fails the call without dialling.
    pub fn check(&self, addr: &str) -> Result<(), Duration> {
        let now = Instant::now();
        match lock(&self.down).get(addr) {
            Some(down) if now < down.retry_at => Err(down.retry_at - now),
            _ => Ok(()),
        }
    }

    /// A call to `addr` failed in the network (no connection, or it broke).
    pub fn failed(&self, addr: &str, error: &str) {
        metrics::counter!("agentd_peer_call_failures_total").increment(1);
        let now = Instant::now();
        let mut down = lock(&self.down);
        let Some(state) = down.get_mut(addr) else {
            tracing::warn!(peer = addr, %error, "peer unreachable; retrying with backoff");
            let backoff = RETRY_BACKOFF_MIN;
            down.insert(
                addr.to_string(),
                Down { since: now, failures: 1, backoff, retry_at: now + backoff, reported_at: now },
            );
            metrics::gauge!("agentd_peers_unreachable").set(down.len() as f64);
            return;
        };
        state.failures += 1;
        state.backoff = (state.backoff * 2).min(RETRY_BACKOFF_MAX);
        state.retry_at = now + state.backoff;
        if now - state.reported_at >= DOWN_SUMMARY_INTERVAL {
            state.reported_at = now;
            let down_secs = (now - state.since).as_secs();
            tracing::warn!(peer = addr, down_secs, failures = state.failures, %error, "peer still unreachable");
        }
    }

    /// A call to `addr` got an answer.
    pub fn answered(&self, addr: &str) {
        let mut down = lock(&self.down);
        if let Some(state) = down.remove(addr) {
            let down_ms = (Instant::now() - state.since).as_millis() as u64;
            tracing::info!(peer = addr, down_ms, failures = state.failures, "peer reachable again");
            metrics::gauge!("agentd_peers_unreachable").set(down.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_down_peer_fails_fast_until_its_backoff_passes_and_recovers_on_an_answer() {
        let health = PeerHealth::default();
        assert_eq!(health.check("a:1"), Ok(()));
        health.failed("a:1", "refused");
        assert_eq!(health.check("a:1"), Err(RETRY_BACKOFF_MIN));
        tokio::time::advance(RETRY_BACKOFF_MIN).await;
        assert_eq!(health.check("a:1"), Ok(()));
        // Each failure doubles the wait, up to the maximum.
        for _ in 0..10 {
            health.failed("a:1", "refused");
        }
        assert_eq!(health.check("a:1"), Err(RETRY_BACKOFF_MAX));
        assert_eq!(health.check("b:2"), Ok(()), "other peers are unaffected");
        health.answered("a:1");
        assert_eq!(health.check("a:1"), Ok(()));
    }
}
