//! What a run is asked to do ([`SimOptions`], [`Bug`]) and what it found
//! ([`Outcome`], [`SimReport`]).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::checkers::Violation;
use crate::faults::FaultKind;

/// A bug planted on purpose; each must be caught by a checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The store acknowledges log appends before they are durable.
    AckBeforeSync,
    /// The state machine lets stale orchestrator epochs append.
    SkipEpochFence,
    /// The sandbox re-executes a repeated idempotency key.
    ReexecuteRepeatedKey,
    /// The sandbox does not scrub secrets from tool output.
    SkipRedaction,
    /// A wiped machine comes back under its old node id with an empty disk.
    WipeSameId,
}

impl Bug {
    pub const ALL: [Bug; 5] =
        [Bug::AckBeforeSync, Bug::SkipEpochFence, Bug::ReexecuteRepeatedKey, Bug::SkipRedaction, Bug::WipeSameId];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeSync => "ack-before-sync",
            Bug::SkipEpochFence => "skip-epoch-fence",
            Bug::ReexecuteRepeatedKey => "reexecute-repeated-key",
            Bug::SkipRedaction => "skip-redaction",
            Bug::WipeSameId => "wipe-same-id",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Bug::AckBeforeSync => "the store acknowledges log appends without syncing them",
            Bug::SkipEpochFence => "the state machine lets a stale orchestrator epoch append",
            Bug::ReexecuteRepeatedKey => "the sandbox runs a repeated idempotency key again",
            Bug::SkipRedaction => "the sandbox returns tool output without scrubbing the call's secrets",
            Bug::WipeSameId => {
                "a wiped machine comes back under its old node id with an empty disk (a voter without its log and votes)"
            }
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }

    /// The faults that give the checkers a chance to see this bug.
    pub fn faults(self) -> BTreeSet<FaultKind> {
        let kinds: &[FaultKind] = match self {
            Bug::AckBeforeSync => &[FaultKind::PowerLoss, FaultKind::Crash],
            Bug::SkipEpochFence => &[FaultKind::DuplicateWake],
            Bug::ReexecuteRepeatedKey => {
                &[FaultKind::Crash, FaultKind::Isolate, FaultKind::LeaderTransfer, FaultKind::DuplicateWake]
            }
            Bug::SkipRedaction => &[],
            // The wiped voter's missing votes and log matter once another
            // replica is gone or behind.
            Bug::WipeSameId => &[FaultKind::Wipe, FaultKind::Crash],
        };
        kinds.iter().copied().collect()
    }
}

/// One run's configuration. Everything not here is derived from the seed.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    pub shards: u32,
    pub faults: BTreeSet<FaultKind>,
    /// Simulated time the faults run for.
    pub safety: Duration,
    /// Simulated time the cluster has to converge and finish after faults stop.
    pub liveness: Duration,
    pub clients: u64,
    pub appends_per_client: usize,
    pub agent_sessions: usize,
    pub bug: Option<Bug>,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 3,
            shards: 4,
            faults: FaultKind::defaults(),
            safety: Duration::from_secs(20),
            liveness: Duration::from_secs(60),
            clients: 3,
            appends_per_client: 40,
            agent_sessions: 3,
            bug: None,
        }
    }

    /// The command that reproduces this run.
    pub fn command(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|kind| kind.name()).collect();
        let faults = if faults.is_empty() { "none".to_string() } else { faults.join(",") };
        let mut command = format!(
            "agentd sim run --seed {} --nodes {} --shards {} --faults {} --steps {} --liveness-secs {} --clients {} --appends {} --agent-sessions {}",
            self.seed,
            self.nodes,
            self.shards,
            faults,
            self.safety.as_millis(),
            self.liveness.as_secs(),
            self.clients,
            self.appends_per_client,
            self.agent_sessions
        );
        if let Some(bug) = self.bug {
            command.push_str(&format!(" --bug {}", bug.name()));
        }
        command
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    SafetyViolation,
    LivenessViolation,
}

impl Outcome {
    /// The process exit code `agentd sim` uses.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => 0,
            Outcome::SafetyViolation => 1,
            Outcome::LivenessViolation => 2,
        }
    }
}

pub struct SimReport {
    pub options: SimOptions,
    pub outcome: Outcome,
    pub violations: Vec<Violation>,
    pub trace: Vec<String>,
    pub simulated: Duration,
    pub wall: Duration,
    pub acknowledged: usize,
    pub faults_applied: usize,
    pub tool_calls: u64,
}

impl SimReport {
    /// The trace as one text, a line per entry.
    pub fn trace_text(&self) -> String {
        let mut text = self.trace.join("\n");
        text.push('\n');
        text
    }
}

/// The names of fault kinds, comma-separated (`none` for an empty set).
pub fn fault_names(kinds: &BTreeSet<FaultKind>) -> String {
    if kinds.is_empty() {
        return "none".to_string();
    }
    kinds.iter().map(|kind| kind.name()).collect::<Vec<_>>().join(",")
}
