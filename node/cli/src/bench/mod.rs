//! What `agentd bench` measures: appends against a running cluster
//! (`append.rs`), the time from a message to the first model request
//! (`first_model_request.rs`), a flood of silent connections (`flood.rs`),
//! the HTTP API against QUIC (`http.rs`), admission past a node's capacity
//! (`overload.rs`), shard moves under load (`moves.rs`), MCP calls through the
//! runtime against direct ones (`mcp.rs`), and sandbox
//! starts and calls on this host
//! (`sandbox.rs`). Each prints progress to stderr and returns a report.

pub mod append;
pub mod first_model_request;
pub mod flood;
pub mod http;
pub mod mcp;
pub mod moves;
pub mod overload;
pub mod sandbox;

use std::time::Duration;

/// The `fraction` percentile of `sorted` (ascending) in milliseconds; 0 when it is empty.
pub fn percentile_ms(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).map_or(0.0, |sample| sample.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&samples, 0.5), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&samples, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }
}
