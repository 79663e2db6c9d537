//! `agentd sim`: the real node code (openraft, ractor actors, quinn and
//! rustls over a simulated socket, the brain, the state machine) run as a
//! cluster of turmoil hosts in one process, under a seeded plan of faults,
//! then checked against every invariant of the design.
//!
//! A run has three phases:
//! 1. formation: the nodes start (n1 initialises, the others join) until
//!    every shard has a leader; no faults;
//! 2. safety: the workload runs (clients appending, agents calling tools)
//!    while the fault plan is applied;
//! 3. liveness: every fault is undone and stopped; the cluster must
//!    converge and every client and agent session finish within a bound.
//!
//! Then the checkers run over the history and the replicas' final state.
//! One seed derives everything (see `agentd_sim::faults::stream`), so a
//! seed replays exactly, and the trace of a run is the same bytes in every
//! process (`agentd sim check-determinism`).

pub mod cli;
mod workload;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_actors::brain::{Brain, Models, Orchestrators};
use agentd_actors::model::{ProviderConfig, RetryPolicy};
use agentd_actors::sandbox::{Limits, Sandbox, SandboxError};
use agentd_protocol::api::SessionInfo;
use agentd_protocol::ids::{GroupId, ShardId};
use agentd_protocol::limits::EVENTS_PER_PAGE_MAX;
use agentd_raft::store::memory_disk::DiskFaults;
use agentd_raft::store::{CrashMode, Db, PlantedBugs};
use agentd_sim::checkers::{self, Invariant, Replica, Violation};
use agentd_sim::faults::{plan, stream, stream_seed, Fault, FaultKind, PlanShape};
use agentd_sim::model::{SimModel, SIM_MODEL};
use agentd_sim::net::SimSocket;
use futures_util::future::BoxFuture;
use openraft::async_runtime::watch::WatchReceiver;
use rand::RngCore;
use tokio::sync::mpsc;

use crate::brain::{LocalHands, LocalSessionLog, Provisioner};
use crate::clock::Clock;
use crate::node::{Node, NodeIo};
use crate::options::{Bootstrap, NodeOptions, RaftTuning};
use world::{EpochRecorder, HostCommand, World};

/// The port every simulated node listens on.
pub(crate) const NODE_PORT: u16 = 7000;
/// The simulated wall clock starts here (2026-01-01T00:00:00Z).
const EPOCH_MS: u64 = 1_767_225_600_000;
/// How long formation may take before the run counts as a liveness failure.
const FORMATION_BOUND: Duration = Duration::from_secs(120);
/// How many trace lines a failure report shows.
pub const TRACE_TAIL: usize = 40;

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
}

impl Bug {
    pub const ALL: [Bug; 4] = [Bug::AckBeforeSync, Bug::SkipEpochFence, Bug::ReexecuteRepeatedKey, Bug::SkipRedaction];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeSync => "ack-before-sync",
            Bug::SkipEpochFence => "skip-epoch-fence",
            Bug::ReexecuteRepeatedKey => "reexecute-repeated-key",
            Bug::SkipRedaction => "skip-redaction",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Bug::AckBeforeSync => "the store acknowledges log appends without syncing them",
            Bug::SkipEpochFence => "the state machine lets a stale orchestrator epoch append",
            Bug::ReexecuteRepeatedKey => "the sandbox runs a repeated idempotency key again",
            Bug::SkipRedaction => "the sandbox returns tool output without scrubbing the call's secrets",
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

/// The address of node `node` (turmoil numbers hosts in the order they are
/// registered, and nodes are registered first).
pub(crate) fn node_ip(node: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 0, node as u8))
}

/// A QUIC endpoint configuration whose randomness comes from the seed.
pub(crate) fn endpoint_config(seed: u64, name: &str) -> quinn::EndpointConfig {
    let mut rng = stream(seed, &format!("quic-{name}"));
    let mut reset_key = [0u8; 64];
    rng.fill_bytes(&mut reset_key);
    let mut rng_seed = [0u8; 32];
    rng.fill_bytes(&mut rng_seed);
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key)));
    config.rng_seed(Some(rng_seed));
    config
}

/// Sandboxes of the simulated world, all backed by one effect ledger.
struct SimProvisioner {
    world: Arc<World>,
}

impl Provisioner for SimProvisioner {
    fn provision(
        &self,
        _session: &SessionInfo,
        _root: PathBuf,
        _limits: Limits,
        _driver: Option<String>,
    ) -> BoxFuture<'_, Result<Arc<dyn Sandbox>, SandboxError>> {
        Box::pin(async move {
            let sandbox: Arc<dyn Sandbox> = Arc::new(self.world.ledger.sandbox());
            Ok(sandbox)
        })
    }
}

fn bugs(options: &SimOptions) -> PlantedBugs {
    PlantedBugs {
        ack_before_sync: options.bug == Some(Bug::AckBeforeSync),
        skip_epoch_fence: options.bug == Some(Bug::SkipEpochFence),
    }
}

/// One boot of a node host: starts the node over the simulated seams, then
/// serves the harness's commands until the host is crashed.
async fn run_node(world: Arc<World>, node: u64) -> turmoil::Result {
    let boot = world.boot(node);
    let addr = SocketAddr::new(node_ip(node), NODE_PORT);
    let (fresh, first_boot_of_cluster) = {
        let initialised = world.initialised();
        (!initialised.contains(&node), initialised.is_empty() && boot == 0)
    };
    let bootstrap = if !fresh {
        Bootstrap::Restart
    } else if node == 1 && first_boot_of_cluster {
        Bootstrap::Init { shards: world.options.shards, replication_factor: world.options.nodes.min(3) as u32 }
    } else {
        // A new node, or one whose disk was wiped: it joins through another.
        let seed = if node == 1 { 2 } else { 1 };
        Bootstrap::Join { seed: SocketAddr::new(node_ip(seed), NODE_PORT).to_string(), token: String::new() }
    };
    let disk = world.disks[&node].mount();
    let options = NodeOptions {
        node_id: node,
        listen: addr,
        advertise: Some(addr.to_string()),
        data_dir: PathBuf::from(format!("/nonexistent/agentd-sim/n{node}")),
        bootstrap,
        // Frequent snapshots, so that snapshot building, purging and
        // installing run under faults too.
        raft: RaftTuning { snapshot_logs: 200, logs_to_keep: 50, ..RaftTuning::default() },
        sandbox_dir: None,
        sandbox_idle: crate::options::SANDBOX_IDLE_DEFAULT,
        models: ProviderConfig::default(),
    };
    let started = async {
        let duplication = world.duplication(&format!("n{node}-boot{boot}"));
        let socket = SimSocket::bind_with(SocketAddr::from(([0, 0, 0, 0], NODE_PORT)), Some(duplication)).await?;
        let io = NodeIo {
            db: Db::with_planted_bugs(disk, bugs(&world.options)),
            socket,
            endpoint_config: endpoint_config(world.options.seed, &format!("n{node}-boot{boot}")),
            identity: world.stored(node)?,
            fresh,
            provisioner: Arc::new(SimProvisioner { world: world.clone() }),
            models: vec![(SIM_MODEL.to_string(), Arc::new(SimModel) as _)],
            clock: Clock::simulated(EPOCH_MS, world.clocks[&node].clone()),
            seed: stream_seed(world.options.seed, &format!("raft-n{node}-boot{boot}")),
            sandbox_dir: PathBuf::from("/nonexistent/agentd-sim/sandboxes"),
            log_observer: Some(Arc::new(EpochRecorder { world: world.clone(), node })),
        };
        Node::start_with(options, io).await
    };
    let handle = match started.await {
        Ok(handle) => handle,
        Err(error) => {
            world.trace(format!("n{node} failed to start: {error:#}"));
            return Ok(());
        }
    };
    world.initialised().insert(node);
    world.handles().insert(node, handle.clone());
    let (commands, mut received) = mpsc::unbounded_channel();
    world.commands().insert(node, commands);
    world.trace(format!("n{node} up (boot {boot})"));

    // Observe leadership: which node led which group in which term.
    let observer = {
        let world = world.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                for group in handle.host().groups() {
                    let metrics = group.raft.metrics().borrow_watched().clone();
                    if metrics.current_leader == Some(node) && metrics.state.is_leader() {
                        world.leader_seen(group.group, metrics.current_term, node);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut ghost: Option<Orchestrators> = None;
    loop {
        let command = tokio::select! {
            command = received.recv() => command,
            failure = handle.failed() => {
                // Fail-stop, as `agentd start` does: the host exits and its
                // supervisor restarts it.
                world.trace(format!("n{node} stops: {failure}"));
                world.handles().remove(&node);
                world.commands().remove(&node);
                break;
            }
        };
        let Some(command) = command else { break };
        match command {
            HostCommand::TransferLeader { shard } => {
                let Some(group) = handle.host().group(GroupId::Shard(ShardId(shard))) else { continue };
                let metrics = group.raft.metrics().borrow_watched().clone();
                if metrics.current_leader != Some(node) {
                    continue;
                }
                let to = metrics.membership_config.membership().voter_ids().find(|voter| *voter != node);
                if let Some(to) = to {
                    world.trace(format!("n{node} hands shard-{shard} to n{to}"));
                    if let Err(error) = group.raft.trigger().transfer_leader(to).await {
                        world.trace(format!("n{node}: leader transfer failed: {error}"));
                    }
                }
            }
            HostCommand::Place { shard, replicas } => {
                let Some(metadata) = handle.host().group(GroupId::Metadata) else { continue };
                if !metadata.raft.is_leader() {
                    continue;
                }
                let command =
                    agentd_raft::types::Command::SetPlacement { shard: ShardId(shard), replicas: replicas.clone() };
                match agentd_raft::placement::propose(&metadata, command).await {
                    Ok(_) => world.trace(format!("n{node} placed shard-{shard} on {replicas:?}")),
                    Err(error) => world.trace(format!("n{node}: placing shard-{shard} failed: {error}")),
                }
            }
            HostCommand::Snapshot => {
                for group in handle.host().groups() {
                    if let Err(error) = group.raft.trigger().snapshot().await {
                        world.trace(format!("n{node}: snapshot of {} failed: {error}", group.group));
                    }
                }
            }
            HostCommand::DuplicateWake => {
                // A second, independent orchestrator set on this node: every
                // agent session of a shard it leads gets two runs at once.
                let ghost = ghost.get_or_insert_with(|| {
                    let router = handle.router().clone();
                    let brain = Brain::new(
                        Arc::new(
                            LocalSessionLog::new(router.clone())
                                .with_observer(Some(Arc::new(EpochRecorder { world: world.clone(), node }))),
                        ),
                        Arc::new(LocalHands::new(
                            PathBuf::from("/nonexistent/agentd-sim/sandboxes"),
                            router,
                            Arc::new(SimProvisioner { world: world.clone() }),
                        )),
                        Models::new(ProviderConfig::default(), RetryPolicy::default(), node)
                            .with_provider(SIM_MODEL, Arc::new(SimModel)),
                    );
                    Orchestrators::new(Arc::new(brain))
                });
                // Wait (a little) for a turn in progress on a shard this
                // node leads, then give it a second orchestrator.
                for _ in 0..40 {
                    let agent_sessions = world.record().agent_sessions.clone();
                    let running: Vec<_> = agent_sessions
                        .into_iter()
                        .filter(|session_id| {
                            let Ok(shard) = handle.router().shard_of(*session_id) else { return false };
                            let Some(group) = handle.host().group(GroupId::Shard(shard)) else { return false };
                            group.raft.is_leader()
                                && matches!(
                                    group.state.session(*session_id),
                                    Ok(Some(info)) if info.status == agentd_protocol::api::SessionStatus::Running
                                )
                        })
                        .collect();
                    if running.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    for session_id in running {
                        world.trace(format!("n{node}: duplicate wake of {session_id}"));
                        ghost.wake(session_id).await;
                        handle.orchestrators().wake(session_id).await;
                    }
                    break;
                }
            }
        }
    }
    observer.abort();
    Ok(())
}

/// Everything each live node holds, session by session.
fn scan_replicas(world: &World) -> BTreeMap<u64, Replica> {
    let mut replicas = BTreeMap::new();
    for (node, handle) in world.handles().iter() {
        let mut replica = Replica::new();
        for group in handle.host().groups() {
            if !matches!(group.group, GroupId::Shard(_)) {
                continue;
            }
            let Ok(sessions) = group.state.session_ids() else { continue };
            for session_id in sessions {
                let mut events = Vec::new();
                loop {
                    let next = events.last().map_or(1, |event: &agentd_protocol::event::Event| event.seq + 1);
                    match group.state.events(session_id, next, EVENTS_PER_PAGE_MAX) {
                        Ok(page) if !page.is_empty() => events.extend(page),
                        _ => break,
                    }
                }
                replica.insert(session_id, events);
            }
        }
        replicas.insert(*node, replica);
    }
    replicas
}

/// Remembers every shard's replicas as the formed cluster placed them.
fn record_placements(world: &World) {
    let placements = world.handles().values().find_map(|handle| {
        let metadata = handle.host().group(GroupId::Metadata)?;
        metadata.state.placements().ok()
    });
    if let Some(placements) = placements {
        *world.placements() =
            placements.into_iter().map(|(shard, replicas)| (shard.0, replicas)).collect::<BTreeMap<_, _>>();
    }
}

/// A session as its shard leader holds it: status, epoch and last events.
fn describe_session(world: &World, session_id: agentd_protocol::ids::SessionId) -> String {
    for handle in world.handles().values() {
        let Ok(shard) = handle.router().shard_of(session_id) else { continue };
        let Some(group) = handle.host().group(GroupId::Shard(shard)) else { continue };
        if !group.raft.is_leader() {
            continue;
        }
        let Ok(Some(info)) = group.state.session(session_id) else { continue };
        let from = info.last_seq.saturating_sub(3) + 1;
        let last: Vec<&str> = group
            .state
            .events(session_id, from, 3)
            .map(|events| events.iter().map(|event| event.payload.type_name()).collect())
            .unwrap_or_default();
        return format!(
            "{session_id} ({shard} led by n{}: {:?}, stop reason {:?}, epoch {}, last seq {}, last events {})",
            handle.node_id(),
            info.status,
            info.stop_reason,
            info.epoch,
            info.last_seq,
            last.join(" ")
        );
    }
    format!("{session_id} (no leader holds it)")
}

/// Each group's state on each live node, for a liveness report: role,
/// term and last applied index.
fn group_report(world: &World, shards: u32) -> String {
    let handles = world.handles();
    let mut groups = vec![GroupId::Metadata];
    groups.extend((0..shards).map(|shard| GroupId::Shard(ShardId(shard))));
    let mut lines = Vec::new();
    for group in groups {
        let mut cells = Vec::new();
        for (node, handle) in handles.iter() {
            let Some(handle) = handle.host().group(group) else { continue };
            let metrics = handle.raft.metrics().borrow_watched().clone();
            cells.push(format!(
                "n{node} {:?} term {} applied {:?} voters {:?}",
                metrics.state,
                metrics.current_term,
                metrics.last_applied.map(|log_id| log_id.index),
                metrics.membership_config.membership().voter_ids().collect::<Vec<_>>()
            ));
        }
        lines.push(format!("{group}: {}", cells.join("; ")));
    }
    lines.join(" | ")
}

/// Whether every shard has a leader that every replica agrees on and has
/// fully applied.
fn converged(world: &World, shards: u32) -> bool {
    let handles = world.handles();
    if handles.len() as u64 != world.options.nodes {
        return false;
    }
    for shard in 0..shards {
        let group = GroupId::Shard(ShardId(shard));
        let mut leader = None;
        let mut applied = BTreeSet::new();
        let mut replicas = 0;
        for (node, handle) in handles.iter() {
            let Some(handle) = handle.host().group(group) else { continue };
            let metrics = handle.raft.metrics().borrow_watched().clone();
            replicas += 1;
            if metrics.state.is_leader() {
                if leader.is_some() {
                    return false;
                }
                leader = Some(*node);
            }
            applied.insert(metrics.last_applied.map(|log_id| log_id.index));
        }
        if leader.is_none() || applied.len() != 1 || replicas < world.options.nodes.min(3) {
            return false;
        }
    }
    true
}

struct Runner<'a> {
    sim: turmoil::Sim<'a>,
    world: Arc<World>,
    down: BTreeSet<u64>,
    /// Nodes that stopped on their own, and when their supervisor restarts them.
    restarts: BTreeMap<u64, Duration>,
}

/// How long a supervisor waits before restarting a node that stopped.
const SUPERVISOR_DELAY: Duration = Duration::from_millis(200);

impl Runner<'_> {
    fn host_name(node: u64) -> String {
        format!("n{node}")
    }

    fn trace(&self, line: impl AsRef<str>) {
        self.world.trace_at(self.sim.elapsed(), line);
    }

    fn step(&mut self) -> Result<(), String> {
        self.sim.step().map(|_| ()).map_err(|error| format!("the simulation failed: {error}"))
    }

    fn crash(&mut self, node: u64, mode: CrashMode) {
        if self.down.contains(&node) {
            return;
        }
        // The harness's handles go first, so that the node's socket is
        // released inside the crash (turmoil unbinds it there).
        self.world.handles().remove(&node);
        self.world.commands().remove(&node);
        self.sim.crash(Self::host_name(node));
        let report = self.world.disks[&node].crash(mode);
        self.down.insert(node);
        self.trace(format!(
            "n{node} crashed: {} unsynced writes kept, {} lost{}",
            report.kept,
            report.lost,
            if report.torn { ", the next one torn" } else { "" }
        ));
    }

    fn restart(&mut self, node: u64) {
        self.restarts.remove(&node);
        if !self.down.remove(&node) {
            return;
        }
        self.sim.bounce(Self::host_name(node));
    }

    fn heal(&mut self) {
        let hosts: Vec<String> = (1..=self.world.options.nodes).map(Self::host_name).collect();
        for a in &hosts {
            for b in &hosts {
                if a != b {
                    self.sim.repair(a.as_str(), b.as_str());
                }
            }
        }
    }

    fn apply(&mut self, fault: &Fault) {
        self.trace(format!("fault: {fault}"));
        match fault {
            Fault::Crash { node, keep_unsynced } => {
                let mode = if *keep_unsynced { CrashMode::KeepPrefix } else { CrashMode::LoseUnsynced };
                self.crash(*node, mode);
            }
            Fault::Wipe { node } => {
                self.crash(*node, CrashMode::Wipe);
                self.world.initialised().remove(node);
            }
            Fault::Restart { node } => self.restart(*node),
            Fault::PowerLoss => {
                for node in 1..=self.world.options.nodes {
                    self.crash(node, CrashMode::LoseUnsynced);
                }
            }
            Fault::RestartAll => {
                for node in 1..=self.world.options.nodes {
                    self.restart(node);
                }
            }
            Fault::Partition { a, b } => self.sim.partition(Self::host_name(*a), Self::host_name(*b)),
            Fault::OneWay { from, to } => self.sim.partition_oneway(Self::host_name(*from), Self::host_name(*to)),
            Fault::Isolate { node } => {
                for other in 1..=self.world.options.nodes {
                    if other != *node {
                        self.sim.partition(Self::host_name(*node), Self::host_name(other));
                    }
                }
            }
            Fault::Heal => self.heal(),
            Fault::Delay { max } => self.sim.set_max_message_latency(*max),
            Fault::Loss { per_mille } => {
                self.sim.set_fail_rate(f64::from(*per_mille) / 1000.0);
            }
            Fault::LossEnd => {
                self.sim.set_fail_rate(0.0);
                self.heal();
            }
            Fault::DiskFaults { node, fsync_per_million, read_per_million } => {
                self.world.disks[node].set_faults(DiskFaults {
                    fsync_errors_per_million: *fsync_per_million,
                    read_errors_per_million: *read_per_million,
                    ..DiskFaults::default()
                });
            }
            Fault::DiskFaultsEnd { node } => self.world.disks[node].set_faults(DiskFaults::default()),
            Fault::ClockJump { node, delta_ms } => {
                self.world.clocks[node].fetch_add(*delta_ms, Ordering::Relaxed);
            }
            Fault::LeaderTransfer { shard } => {
                for node in 1..=self.world.options.nodes {
                    self.world.send(node, HostCommand::TransferLeader { shard: *shard });
                }
            }
            Fault::Snapshot { node } => {
                self.world.send(*node, HostCommand::Snapshot);
            }
            Fault::DuplicateWake { node } => {
                self.world.send(*node, HostCommand::DuplicateWake);
            }
            Fault::Duplicate { per_mille } => {
                self.world.duplicate_per_million.store(per_mille * 1000, Ordering::Relaxed);
            }
            Fault::DuplicateEnd => self.world.duplicate_per_million.store(0, Ordering::Relaxed),
            Fault::ShrinkShard { shard, without } => {
                let original = { self.world.placements().get(shard).cloned() }.unwrap_or_default();
                let mut replicas: Vec<u64> = original.iter().copied().filter(|node| node != without).collect();
                if replicas.len() == original.len() && replicas.len() > 1 {
                    replicas.remove(0);
                }
                if !replicas.is_empty() && replicas.len() < original.len() {
                    self.place(*shard, replicas);
                }
            }
            Fault::RestoreShard { shard } => {
                let original = self.world.placements().get(shard).cloned();
                if let Some(original) = original {
                    self.place(*shard, original);
                }
            }
        }
    }

    /// Re-proposes every shard placement that differs from the formed
    /// cluster's, as an operator would after the faults.
    fn restore_placements(&mut self) {
        let current = self.world.handles().values().find_map(|handle| {
            let metadata = handle.host().group(GroupId::Metadata)?;
            metadata.raft.is_leader().then(|| metadata.state.placements().ok()).flatten()
        });
        let Some(current) = current else { return };
        let current: BTreeMap<u32, Vec<u64>> =
            current.into_iter().map(|(shard, replicas)| (shard.0, replicas)).collect();
        let wanted = self.world.placements().clone();
        for (shard, replicas) in wanted {
            if current.get(&shard) != Some(&replicas) {
                self.place(shard, replicas);
            }
        }
    }

    /// Asks every node to place `shard` on `replicas`; the metadata leader does.
    fn place(&mut self, shard: u32, replicas: Vec<u64>) {
        for node in 1..=self.world.options.nodes {
            self.world.send(node, HostCommand::Place { shard, replicas: replicas.clone() });
        }
    }

    /// A node whose disk failed a sync, or whose software stopped, is
    /// restarted, as a supervisor restarts a process that exited.
    fn supervise(&mut self) {
        let now = self.sim.elapsed();
        let due: Vec<u64> = self.restarts.iter().filter(|(_, at)| **at <= now).map(|(node, _)| *node).collect();
        for node in due {
            self.trace(format!("n{node}: its supervisor restarts it"));
            self.restart(node);
        }
        for node in 1..=self.world.options.nodes {
            if self.down.contains(&node) {
                continue;
            }
            let stopped = if self.world.disks[&node].fsync_failed() {
                // After a failed fsync the kernel may have dropped the
                // dirty pages: what was not synced is gone.
                Some(("a failed fsync", CrashMode::LoseUnsynced))
            } else if !self.sim.is_host_running(Self::host_name(node)) {
                Some(("its process exited", CrashMode::ProcessExit))
            } else {
                None
            };
            if let Some((why, mode)) = stopped {
                self.trace(format!("n{node} stopped after {why}"));
                self.crash(node, mode);
                self.restarts.insert(node, now + SUPERVISOR_DELAY);
            }
        }
    }
}

/// Reports a panic on the simulated path (a node's, or the harness's) as a
/// safety violation and ends the process with exit code 1. A panic cannot
/// be unwound safely through the simulated hosts' runtimes, so the run stops
/// here; the report still names the seed and the command that reproduces it.
fn report_panic(world: &World, options: &SimOptions, info: &std::panic::PanicHookInfo<'_>) {
    let location = info.location().map(|location| format!(" at {location}")).unwrap_or_default();
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    println!("seed {}: SAFETY VIOLATION (a panic on the simulated path)", options.seed);
    println!("violated invariants:");
    println!("  {}: {message}{location}", Invariant::NoPanic.name());
    if let Some(trace) = world.try_trace() {
        println!("last {TRACE_TAIL} trace events:");
        for line in &trace[trace.len().saturating_sub(TRACE_TAIL)..] {
            println!("  {line}");
        }
    }
    println!("reproduce: {}", options.command());
}

/// Runs one simulation.
pub fn run(options: SimOptions) -> anyhow::Result<SimReport> {
    let world = Arc::new(World::new(options.clone())?);
    let previous_hook = std::panic::take_hook();
    let (hook_world, hook_options) = (world.clone(), options.clone());
    std::panic::set_hook(Box::new(move |info| {
        report_panic(&hook_world, &hook_options, info);
        std::process::exit(Outcome::SafetyViolation.exit_code());
    }));
    let report = run_world(options, world);
    let _ = std::panic::take_hook();
    std::panic::set_hook(previous_hook);
    report
}

fn run_world(options: SimOptions, world: Arc<World>) -> anyhow::Result<SimReport> {
    let started = Instant::now();
    let sim = turmoil::Builder::new()
        .rng_seed(stream_seed(options.seed, "turmoil"))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(2))
        .udp_capacity(4096)
        .build();
    let mut runner = Runner { sim, world: world.clone(), down: BTreeSet::new(), restarts: BTreeMap::new() };
    for node in 1..=options.nodes {
        let host_world = world.clone();
        runner.sim.host(Runner::host_name(node), move || run_node(host_world.clone(), node));
        anyhow::ensure!(
            runner.sim.lookup(Runner::host_name(node)) == node_ip(node),
            "turmoil gave n{node} an unexpected address"
        );
    }
    let mut violations = Vec::new();
    let mut faults_applied = 0;

    // Formation: every node up, every shard led.
    runner.trace(format!("formation: {} nodes, {} shards", options.nodes, options.shards));
    let formation_end = runner.sim.elapsed() + FORMATION_BOUND;
    while !converged(&world, options.shards) {
        runner.step().map_err(anyhow::Error::msg)?;
        if runner.sim.elapsed() > formation_end {
            violations.push(Violation {
                invariant: Invariant::Convergence,
                detail: format!("the cluster did not form within {FORMATION_BOUND:?}"),
            });
            break;
        }
    }

    if violations.is_empty() {
        record_placements(&world);
        // Safety: the workload runs under the fault plan.
        for client in 1..=options.clients {
            let client_world = world.clone();
            runner.sim.client(format!("c{client}"), workload::run_appender(client_world, client));
        }
        if options.agent_sessions > 0 {
            runner.sim.client("agents", workload::run_agent_client(world.clone()));
        }
        let shape = PlanShape {
            nodes: options.nodes,
            shards: options.shards,
            safety: options.safety,
            kinds: options.faults.clone(),
        };
        let mut schedule = plan(options.seed, &shape).into_iter().peekable();
        let safety_start = runner.sim.elapsed();
        runner.trace(format!("safety phase: faults {}", fault_names(&options.faults)));
        while runner.sim.elapsed() < safety_start + options.safety {
            while let Some((at, _)) = schedule.peek() {
                if safety_start + *at > runner.sim.elapsed() {
                    break;
                }
                if let Some((_, fault)) = schedule.next() {
                    runner.apply(&fault);
                    faults_applied += 1;
                }
            }
            runner.supervise();
            runner.step().map_err(anyhow::Error::msg)?;
        }

        // Liveness: undo and stop every fault; the cluster must converge and
        // every client and session finish.
        runner.trace("liveness phase: faults stop");
        runner.heal();
        runner.sim.set_fail_rate(0.0);
        runner.sim.set_max_message_latency(Duration::from_millis(2));
        for node in 1..=options.nodes {
            world.disks[&node].set_faults(DiskFaults::default());
            runner.restart(node);
        }
        world.ledger.stop_faults();
        world.duplicate_per_million.store(0, Ordering::Relaxed);
        let clients = options.clients as usize + usize::from(options.agent_sessions > 0);
        let liveness_end = runner.sim.elapsed() + options.liveness;
        let mut next_placement_check = runner.sim.elapsed();
        loop {
            runner.supervise();
            // Shards that lost a replica get their placement back; a request
            // made while no metadata leader was known is repeated.
            if runner.sim.elapsed() >= next_placement_check {
                runner.restore_placements();
                next_placement_check = runner.sim.elapsed() + Duration::from_millis(500);
            }
            let done = world.record().clients_done >= clients;
            if done && converged(&world, options.shards) {
                break;
            }
            if runner.sim.elapsed() > liveness_end {
                let is_converged = converged(&world, options.shards);
                let record = world.record();
                let unfinished: Vec<String> = record
                    .agent_sessions
                    .iter()
                    .filter(|session| !record.agent_sessions_finished.contains(session))
                    .map(|session| describe_session(&world, *session))
                    .collect();
                violations.push(Violation {
                    invariant: Invariant::Convergence,
                    detail: format!(
                        "{:?} after faults stopped: {} of {clients} clients finished, replicas converged: {is_converged}, unfinished agent sessions: [{}]; groups: {}",
                        options.liveness,
                        record.clients_done,
                        unfinished.join(", "),
                        group_report(&world, options.shards)
                    ),
                });
                break;
            }
            runner.step().map_err(anyhow::Error::msg)?;
        }
    }

    // Final checks.
    let converged_now = violations.is_empty();
    let replicas = scan_replicas(&world);
    {
        let record = world.record();
        violations.extend(checkers::acknowledged_kept(&record.acked, &replicas));
        violations.extend(checkers::terminated_is_last(&record.terminated, &replicas));
        violations.extend(checkers::one_leader_per_term(&record.leaderships.iter().cloned().collect::<Vec<_>>()));
        violations.extend(checkers::stale_epochs_never_append(&record.epochs));
    }
    violations.extend(checkers::replicas_agree(&replicas, converged_now));
    violations.extend(checkers::effects_at_most_once(&world.ledger.effects()));
    violations.extend(checkers::no_secret_in_log(&replicas, std::slice::from_ref(&world.secret)));
    let outcome = if violations.iter().any(|violation| !violation.invariant.is_liveness()) {
        Outcome::SafetyViolation
    } else if violations.is_empty() {
        Outcome::Pass
    } else {
        Outcome::LivenessViolation
    };
    let simulated = runner.sim.elapsed();
    runner.trace(format!("end: {outcome:?}, {} violations", violations.len()));
    let (tool_calls, _) = world.ledger.counts();
    let record = world.record();
    Ok(SimReport {
        options,
        outcome,
        violations,
        trace: record.trace.clone(),
        simulated,
        wall: started.elapsed(),
        acknowledged: record.acked.len(),
        faults_applied,
        tool_calls,
    })
}

pub fn fault_names(kinds: &BTreeSet<FaultKind>) -> String {
    if kinds.is_empty() {
        return "none".to_string();
    }
    kinds.iter().map(|kind| kind.name()).collect::<Vec<_>>().join(",")
}
