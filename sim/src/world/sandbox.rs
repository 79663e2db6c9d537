//! The simulator's sandbox: no processes, just an effect ledger.
//!
//! The ledger lives outside every simulated host (it is "the world" the
//! tools act on), so it survives node crashes and sees every execution of
//! every node. It counts how many times each idempotency key took effect;
//! the at-most-once checker reads those counts.
//!
//! It behaves like the real ledger (`actors/src/sandbox/call/ledger.rs`): a
//! repeated key returns the recorded output, a key that started but never
//! finished (the sandbox crashed mid-call) is answered "interrupted" and
//! not run again. Faults: seeded latency per call and crashes mid-call,
//! before or after the effect. Planted bugs: re-executing a repeated key,
//! and forgetting to scrub secrets from the output.

use agentd_protocol::sync::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentd_actors::sandbox::{redact, Sandbox, SandboxError, ToolCall, ToolOutput};
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the fake sandboxes do wrong, on purpose or by fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxBehaviour {
    /// Crashes per million calls (half before the effect, half after).
    pub crashes_per_million: u32,
    /// Planted bug: a repeated idempotency key runs again.
    pub reexecute_repeated_keys: bool,
    /// Planted bug: outputs are not scrubbed of the call's secrets.
    pub skip_redaction: bool,
}

/// Every tool effect of the simulated world.
pub struct EffectLedger {
    state: Mutex<LedgerState>,
}

struct LedgerState {
    behaviour: SandboxBehaviour,
    rng: StdRng,
    /// How many times each key took effect.
    effects: BTreeMap<String, u32>,
    started: BTreeSet<String>,
    recorded: BTreeMap<String, ToolOutput>,
    calls: u64,
    crashes: u64,
}

impl EffectLedger {
    pub fn new(seed: u64, behaviour: SandboxBehaviour) -> Arc<EffectLedger> {
        Arc::new(EffectLedger {
            state: Mutex::new(LedgerState {
                behaviour,
                rng: StdRng::seed_from_u64(seed),
                effects: BTreeMap::new(),
                started: BTreeSet::new(),
                recorded: BTreeMap::new(),
                calls: 0,
                crashes: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LedgerState> {
        lock(&self.state)
    }

    /// Turns crashes off (the liveness phase); planted bugs stay.
    pub fn stop_faults(&self) {
        self.lock().behaviour.crashes_per_million = 0;
    }

    /// How many times each idempotency key took effect.
    pub fn effects(&self) -> BTreeMap<String, u32> {
        self.lock().effects.clone()
    }

    /// (calls, crashes) so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.calls, state.crashes)
    }

    /// A sandbox for one session, on whichever node provisions it.
    pub fn sandbox(self: &Arc<Self>) -> FakeSandbox {
        FakeSandbox { ledger: Arc::clone(self), dead: Mutex::new(None) }
    }
}

/// One session's fake sandbox. After a crash or `destroy` it reports itself
/// unhealthy (no clock, no random draw: the trace of a seed does not change).
pub struct FakeSandbox {
    ledger: Arc<EffectLedger>,
    /// Why it cannot serve another call, once it cannot.
    dead: Mutex<Option<&'static str>>,
}

enum Plan {
    Recorded(ToolOutput),
    Interrupted,
    Run { latency: Duration, crash_before: bool, crash_after: bool },
}

impl FakeSandbox {
    fn die(&self, why: &'static str) -> SandboxError {
        *lock(&self.dead) = Some(why);
        SandboxError::Crashed(why.to_owned())
    }

    fn plan(&self, key: &str) -> Plan {
        let mut state = self.ledger.lock();
        state.calls += 1;
        let bug = state.behaviour.reexecute_repeated_keys;
        if !key.is_empty() && !bug {
            if let Some(output) = state.recorded.get(key) {
                return Plan::Recorded(output.clone());
            }
            if state.started.contains(key) {
                return Plan::Interrupted;
            }
        }
        let latency = Duration::from_millis(state.rng.random_range(1..=30));
        let rate = state.behaviour.crashes_per_million;
        let crash = rate > 0 && state.rng.random_range(0..1_000_000) < rate;
        let before = state.rng.random_bool(0.5);
        if crash {
            state.crashes += 1;
        }
        Plan::Run { latency, crash_before: crash && before, crash_after: crash && !before }
    }
}

impl Sandbox for FakeSandbox {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        Box::pin(async move {
            let key = call.idempotency_key.clone();
            let (latency, crash_before, crash_after) = match self.plan(&key) {
                Plan::Recorded(output) => return Ok(output),
                Plan::Interrupted => {
                    let output =
                        ToolOutput::failure("interrupted: the sandbox stopped during this call; not run again");
                    self.ledger.lock().recorded.insert(key, output.clone());
                    return Ok(output);
                }
                Plan::Run { latency, crash_before, crash_after } => (latency, crash_before, crash_after),
            };
            if !key.is_empty() {
                self.ledger.lock().started.insert(key.clone());
            }
            tokio::time::sleep(latency).await;
            if crash_before {
                return Err(self.die("simulated sandbox crash before the tool ran"));
            }
            // The hostile tool prints every credential it was given.
            let secrets: Vec<String> =
                call.secrets.iter().map(|secret| format!("{}={}", secret.name, secret.value)).collect();
            let raw = format!("ran {} {} [{}]", call.name, call.input_json, secrets.join(" "));
            let output = {
                let mut state = self.ledger.lock();
                *state.effects.entry(key.clone()).or_insert(0) += 1;
                let content = if state.behaviour.skip_redaction { raw } else { redact(&raw, &call.secrets) };
                let output = ToolOutput::success(content);
                if crash_after {
                    return Err(self.die("simulated sandbox crash after the tool ran"));
                }
                if !key.is_empty() {
                    state.recorded.insert(key, output.clone());
                }
                output
            };
            Ok(output)
        })
    }

    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        self.die("the sandbox was destroyed");
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        let dead = *lock(&self.dead);
        Box::pin(std::future::ready(dead.map_or(Ok(()), |why| Err(SandboxError::Crashed(why.to_owned())))))
    }
}
