//! Admission control: how many client requests a node runs at once.
//!
//! Every front door asks for a permit before it reads a request, and a
//! request that finds none is refused at once with `Overloaded` and a retry
//! hint: no queue grows behind a node past its capacity, so what it admits
//! keeps a bounded latency and its memory stays flat. The node's own
//! callers (the brain, the hands) and requests forwarded by other nodes
//! (admitted at their front door) do not ask.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_protocol::limits::{OVERLOADED_RETRY_AFTER_MAX_MS, OVERLOADED_RETRY_AFTER_MS};
use agentd_protocol::sync::lock;
use agentd_protocol::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Service;

/// The right to run one client request; returned when dropped.
#[derive(Debug)]
pub struct RequestPermit {
    _permit: OwnedSemaphorePermit,
}

/// The permits of one node, and the refusals of the last second.
pub(super) struct Admission {
    permits: Arc<Semaphore>,
    capacity: usize,
    refusals: Mutex<Refusals>,
}

/// Refusals counted over one-second windows.
struct Refusals {
    window_start: Instant,
    in_window: u64,
    /// Refusals in the last full window.
    last_window: u64,
}

/// How long a window of refusals lasts.
const REFUSAL_WINDOW: Duration = Duration::from_secs(1);

impl Admission {
    pub(super) fn new(capacity: usize) -> Self {
        let refusals = Refusals { window_start: Instant::now(), in_window: 0, last_window: 0 };
        Self { permits: Arc::new(Semaphore::new(capacity)), capacity, refusals: Mutex::new(refusals) }
    }

    /// Counts a refusal and answers the pause to suggest: the shortest
    /// pause, times the refusals of the last second per permit. Clients
    /// that wait that long come back at about the rate the node admits.
    fn refuse(&self) -> u64 {
        let mut refusals = lock(&self.refusals);
        let now = Instant::now();
        if now.duration_since(refusals.window_start) >= REFUSAL_WINDOW {
            refusals.last_window = refusals.in_window;
            refusals.in_window = 0;
            refusals.window_start = now;
        }
        refusals.in_window += 1;
        let recent = refusals.last_window.max(refusals.in_window);
        retry_after_ms(recent, self.capacity)
    }
}

/// The suggested pause after `recent` refusals in a second, with `capacity` permits.
fn retry_after_ms(recent: u64, capacity: usize) -> u64 {
    let per_permit = recent / (capacity as u64).max(1);
    OVERLOADED_RETRY_AFTER_MS.saturating_mul(per_permit.max(1)).min(OVERLOADED_RETRY_AFTER_MAX_MS)
}

impl Service {
    /// A permit to run one client request, or `Overloaded` at once.
    pub fn admit_request(&self) -> Result<RequestPermit, ApiError> {
        let admission = &self.inner.admission;
        match Arc::clone(&admission.permits).try_acquire_owned() {
            Ok(permit) => {
                let in_flight = admission.capacity - admission.permits.available_permits();
                metrics::gauge!("agentd_requests_in_flight").set(in_flight as f64);
                Ok(RequestPermit { _permit: permit })
            }
            Err(_) => {
                metrics::counter!("agentd_requests_refused_total", "reason" => "overloaded").increment(1);
                Err(ApiError::Overloaded { retry_after_ms: admission.refuse() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_run_out_and_come_back() {
        let admission = Admission::new(2);
        let first = Arc::clone(&admission.permits).try_acquire_owned().unwrap();
        let _second = Arc::clone(&admission.permits).try_acquire_owned().unwrap();
        assert!(Arc::clone(&admission.permits).try_acquire_owned().is_err());
        drop(first);
        assert!(Arc::clone(&admission.permits).try_acquire_owned().is_ok());
    }

    #[test]
    fn the_hint_grows_with_the_refusals_per_permit_and_is_bounded() {
        assert_eq!(retry_after_ms(0, 512), OVERLOADED_RETRY_AFTER_MS);
        assert_eq!(retry_after_ms(511, 512), OVERLOADED_RETRY_AFTER_MS);
        assert_eq!(retry_after_ms(10 * 512, 512), 10 * OVERLOADED_RETRY_AFTER_MS);
        assert_eq!(retry_after_ms(u64::MAX, 512), OVERLOADED_RETRY_AFTER_MAX_MS);
        assert_eq!(retry_after_ms(100, 0), OVERLOADED_RETRY_AFTER_MAX_MS.min(100 * OVERLOADED_RETRY_AFTER_MS));
    }
}
