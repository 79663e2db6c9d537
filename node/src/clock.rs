//! The wall clock the node stamps events with, as a seam: production reads
//! the system clock; the simulator derives it from simulated time, with an
//! offset its faults can move (clock skew and jumps).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub enum Clock {
    System,
    /// `epoch_ms` at the simulation's start, plus simulated time elapsed,
    /// plus `offset_ms`.
    Simulated {
        start: tokio::time::Instant,
        epoch_ms: u64,
        offset_ms: Arc<AtomicI64>,
    },
}

impl Clock {
    /// A simulated clock starting now (in simulated time) at `epoch_ms`.
    pub fn simulated(epoch_ms: u64, offset_ms: Arc<AtomicI64>) -> Clock {
        Clock::Simulated { start: tokio::time::Instant::now(), epoch_ms, offset_ms }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System =>
            {
                #[allow(
                    clippy::disallowed_methods,
                    reason = "the production clock; the simulator uses Clock::Simulated"
                )]
                SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
            }
            Clock::Simulated { start, epoch_ms, offset_ms } => {
                let elapsed = start.elapsed().as_millis() as u64;
                epoch_ms.saturating_add(elapsed).saturating_add_signed(offset_ms.load(Ordering::Relaxed))
            }
        }
    }
}
