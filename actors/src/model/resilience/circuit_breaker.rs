//! A per-provider circuit breaker: after enough consecutive failures the
//! provider gets a rest instead of more load.

use std::sync::Mutex;
use std::time::Duration;

use agentd_protocol::sync::lock;
use tokio::time::Instant;

/// Consecutive failures that open the breaker by default.
pub const BREAKER_FAILURES_MAX_DEFAULT: u32 = 5;
/// How long an open breaker rejects calls by default.
pub const BREAKER_COOL_DOWN_MS_DEFAULT: u64 = 30_000;

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed { consecutive_failures: u32 },
    /// Calls are rejected until the cool-down has passed.
    Open,
    /// The cool-down passed: one probe call goes through; its outcome
    /// closes or re-opens the breaker.
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// Opens after `failures_max` consecutive failures, rejects calls for
/// `cool_down`, then lets one probe through (half-open). Time is tokio's,
/// so tests and the simulator control it. Share one per provider behind an
/// `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    failures_max: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::new(BREAKER_FAILURES_MAX_DEFAULT, Duration::from_millis(BREAKER_COOL_DOWN_MS_DEFAULT))
    }
}

impl CircuitBreaker {
    /// `failures_max` of zero is treated as one.
    pub fn new(failures_max: u32, cool_down: Duration) -> CircuitBreaker {
        CircuitBreaker {
            failures_max: failures_max.max(1),
            cool_down,
            state: Mutex::new(State::Closed { consecutive_failures: 0 }),
        }
    }

    /// The current state, with an expired open breaker shown as half-open.
    pub fn state(&self) -> BreakerState {
        let mut state = lock(&self.state);
        Self::expire(&mut state);
        match *state {
            State::Closed { consecutive_failures } => BreakerState::Closed { consecutive_failures },
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { probe_in_flight } => BreakerState::HalfOpen { probe_in_flight },
        }
    }

    /// Asks to make a call. `None` means the breaker is open (or half-open
    /// with its probe already out): do not call the provider.
    pub fn try_acquire(&self) -> Option<BreakerPermit<'_>> {
        let mut state = lock(&self.state);
        Self::expire(&mut state);
        match *state {
            State::Closed { .. } => Some(BreakerPermit { breaker: self, probe: false, recorded: false }),
            State::Open { .. } | State::HalfOpen { probe_in_flight: true } => None,
            State::HalfOpen { probe_in_flight: false } => {
                *state = State::HalfOpen { probe_in_flight: true };
                Some(BreakerPermit { breaker: self, probe: true, recorded: false })
            }
        }
    }

    fn expire(state: &mut State) {
        if let State::Open { until } = *state {
            if Instant::now() >= until {
                *state = State::HalfOpen { probe_in_flight: false };
            }
        }
    }

    fn record(&self, probe: bool, success: bool) {
        let mut state = lock(&self.state);
        if success {
            *state = State::Closed { consecutive_failures: 0 };
            return;
        }
        let open = State::Open { until: Instant::now() + self.cool_down };
        match *state {
            State::Closed { consecutive_failures } => {
                let consecutive_failures = consecutive_failures.saturating_add(1);
                *state = if consecutive_failures >= self.failures_max {
                    tracing::warn!(consecutive_failures, "model provider circuit breaker opens");
                    open
                } else {
                    State::Closed { consecutive_failures }
                };
            }
            // A failed probe re-opens; a call admitted while closed that fails
            // after the breaker opened changes nothing.
            State::HalfOpen { .. } if probe => *state = open,
            State::HalfOpen { .. } | State::Open { .. } => {}
        }
    }

    fn release_probe(&self) {
        let mut state = lock(&self.state);
        if let State::HalfOpen { probe_in_flight: true } = *state {
            *state = State::HalfOpen { probe_in_flight: false };
        }
    }
}

/// Permission for one call. Report its outcome with `success` or
/// `failure`; dropping it unreported (a cancelled call) frees the probe slot
/// without counting anything.
#[derive(Debug)]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

impl BreakerPermit<'_> {
    pub fn success(mut self) {
        self.recorded = true;
        self.breaker.record(self.probe, true);
    }

    pub fn failure(mut self) {
        self.recorded = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.release_probe();
        }
    }
}
