//! A node host: one boot of a real node over the simulated seams, serving
//! the harness's commands from inside the host until it is crashed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentd_actors::brain::{Brain, Orchestrators};
use agentd_actors::model::{Models, ProviderConfig, RetryPolicy};
use agentd_actors::sandbox::{Limits, Sandbox, SandboxError};
use agentd_node::clock::Clock;
use agentd_node::hands::{LocalHands, Provisioner};
use agentd_node::leader::LocalSessionLog;
use agentd_node::options::SANDBOX_IDLE_DEFAULT;
use agentd_node::{Bootstrap, Node, NodeHandle, NodeIo, NodeOptions, RaftTuning};
use agentd_protocol::agent::SandboxDriver;
use agentd_protocol::api::{ClientRequest, SessionInfo, SessionStatus};
use agentd_protocol::command::Command;
use agentd_protocol::ids::{GroupId, SessionId, ShardId};
use agentd_protocol::sync::lock;
use agentd_protocol::tenancy::Caller;
use agentd_raft::store::{Db, PlantedBugs};
use futures_util::future::BoxFuture;
use openraft::async_runtime::watch::WatchReceiver;
use rand::RngCore;
use tokio::sync::mpsc;

use super::options::{Bug, SimOptions};
use crate::faults::{stream, stream_seed};
use crate::world::model::{SimModel, SIM_MODEL};
use crate::world::net::{node_ip, SimSocket, NODE_PORT};
use crate::world::{EpochRecorder, HostCommand, World};

/// The simulated wall clock starts here (2026-01-01T00:00:00Z).
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Where a simulated node's files would be: nothing is written there (the
/// disk and the sandboxes are simulated), the path only has to be valid.
const NOWHERE: &str = "/nonexistent/agentd-sim";
/// How often a host records which groups its node leads.
const LEADERSHIP_OBSERVE_INTERVAL: Duration = Duration::from_millis(5);
/// How many times, and how often, a duplicate wake looks for a running turn.
const DUPLICATE_WAKE_ATTEMPTS: usize = 40;
const DUPLICATE_WAKE_RETRY: Duration = Duration::from_millis(50);

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
        _driver: SandboxDriver,
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
/// serves the harness's commands until the host is crashed. `node` names
/// the machine (its host, address and disk); the node id it runs is the
/// world's to say (a wiped machine comes back under a new one).
pub(crate) async fn run_node(world: Arc<World>, node: u64) -> turmoil::Result {
    let boot = world.boot(node);
    let node_id = world.node_id(node);
    let handle = match start_node(&world, node, boot).await {
        Ok(handle) => handle,
        Err(error) => {
            world.trace(format!("{} failed to start: {error:#}", world.describe(node, node_id)));
            return Ok(());
        }
    };
    world.initialised().insert(node);
    world.handles().insert(node, handle.clone());
    let (commands, received) = mpsc::unbounded_channel();
    world.commands().insert(node, commands);
    world.trace(format!("{} up (boot {boot})", world.describe(node, node_id)));
    let observer = tokio::spawn(observe_leadership(world.clone(), handle.clone(), node));
    serve_commands(&world, &handle, node, received).await;
    observer.abort();
    Ok(())
}

/// How this boot of `node` comes up: restarting its disk, creating the
/// cluster (the first boot of node 1), or joining through another node.
fn bootstrap(world: &World, node: u64, boot: u64) -> (bool, Bootstrap) {
    let (fresh, first_boot_of_cluster) = {
        let initialised = world.initialised();
        (!initialised.contains(&node), initialised.is_empty() && boot == 0)
    };
    let bootstrap = if !fresh {
        Bootstrap::Restart
    } else if node == 1 && first_boot_of_cluster {
        Bootstrap::Init {
            shards: world.options.shards,
            replication_factor: world.options.nodes.min(3) as u32,
            credentials: None,
        }
    } else {
        // A new node, or one whose disk was wiped: it joins through another.
        let seed = if node == 1 { 2 } else { 1 };
        Bootstrap::Join { seed: SocketAddr::new(node_ip(seed), NODE_PORT).to_string(), token: String::new() }
    };
    (fresh, bootstrap)
}

async fn start_node(world: &Arc<World>, node: u64, boot: u64) -> anyhow::Result<NodeHandle> {
    let addr = SocketAddr::new(node_ip(node), NODE_PORT);
    let (fresh, bootstrap) = bootstrap(world, node, boot);
    let options = NodeOptions {
        node_id: world.node_id(node),
        listen: addr,
        advertise: Some(addr.to_string()),
        data_dir: PathBuf::from(format!("{NOWHERE}/n{node}")),
        bootstrap,
        // Frequent snapshots, so that snapshot building, purging and
        // installing run under faults too.
        raft: RaftTuning { snapshot_logs: 200, logs_to_keep: 50, ..RaftTuning::default() },
        sandbox_dir: None,
        sandbox_idle: SANDBOX_IDLE_DEFAULT,
        client_idle: std::time::Duration::from_secs(agentd_protocol::limits::CLIENT_IDLE_SECS_DEFAULT),
        min_free_disk: agentd_protocol::limits::DISK_FREE_FLOOR_DEFAULT,
        requests_in_flight_max: agentd_protocol::limits::REQUESTS_IN_FLIGHT_MAX,
        models: ProviderConfig::default(),
    };
    let duplication = world.duplication(&format!("n{node}-boot{boot}"));
    let socket = SimSocket::bind_with(SocketAddr::from(([0, 0, 0, 0], NODE_PORT)), Some(duplication)).await?;
    let io = NodeIo {
        db: Db::with_planted_bugs(world.disks[&node].mount(), bugs(&world.options)),
        socket,
        endpoint_config: endpoint_config(world.options.seed, &format!("n{node}-boot{boot}")),
        identity: world.stored(node)?,
        fresh,
        provisioner: Arc::new(SimProvisioner { world: world.clone() }),
        models: vec![(SIM_MODEL.to_string(), Arc::new(SimModel) as _)],
        clock: Clock::simulated(EPOCH_MS, world.clocks[&node].clone()),
        seed: stream_seed(world.options.seed, &format!("raft-n{node}-boot{boot}")),
        sandbox_dir: PathBuf::from(format!("{NOWHERE}/sandboxes")),
        log_observer: Some(Arc::new(EpochRecorder { world: world.clone(), node })),
    };
    Node::start_with(options, io).await
}

/// Records which node led which group in which term.
async fn observe_leadership(world: Arc<World>, handle: NodeHandle, machine: u64) {
    let node = handle.node_id();
    loop {
        for group in handle.host().groups() {
            let metrics = group.raft.metrics().borrow_watched().clone();
            if metrics.current_leader == Some(node) && metrics.state.is_leader() {
                world.leader_seen(group.group, metrics.current_term, machine, node);
            }
        }
        tokio::time::sleep(LEADERSHIP_OBSERVE_INTERVAL).await;
    }
}

/// Serves the harness's commands until the node stops (fail-stop, as
/// `agentd start` does: the host exits and its supervisor restarts it) or
/// the harness forgets the host.
async fn serve_commands(
    world: &Arc<World>,
    handle: &NodeHandle,
    node: u64,
    mut received: mpsc::UnboundedReceiver<HostCommand>,
) {
    let mut ghost: Option<Orchestrators> = None;
    loop {
        let command = tokio::select! {
            command = received.recv() => command,
            failure = handle.failed() => {
                world.trace(format!("n{node} stops: {failure}"));
                world.handles().remove(&node);
                world.commands().remove(&node);
                return;
            }
        };
        match command {
            None => return,
            Some(HostCommand::TransferLeader { shard }) => transfer_leader(world, handle, node, shard).await,
            Some(HostCommand::Place { shard, replicas }) => place(world, handle, node, shard, replicas).await,
            Some(HostCommand::Snapshot) => snapshot(world, handle, node).await,
            Some(HostCommand::DuplicateWake) => {
                let ghost = ghost.get_or_insert_with(|| ghost_orchestrators(world, handle, node));
                duplicate_wake(world, handle, node, ghost).await;
            }
            Some(HostCommand::Replace { old }) => replace(world, handle, node, old).await,
        }
    }
}

async fn transfer_leader(world: &World, handle: &NodeHandle, node: u64, shard: u32) {
    let Some(group) = handle.host().group(GroupId::Shard(ShardId(shard))) else { return };
    let metrics = group.raft.metrics().borrow_watched().clone();
    let me = handle.node_id();
    if metrics.current_leader != Some(me) {
        return;
    }
    let Some(to) = metrics.membership_config.membership().voter_ids().find(|voter| *voter != me) else { return };
    world.trace(format!("n{node} hands shard-{shard} to n{to}"));
    if let Err(error) = group.raft.trigger().transfer_leader(to).await {
        world.trace(format!("n{node}: leader transfer failed: {error}"));
    }
}

async fn place(world: &World, handle: &NodeHandle, node: u64, shard: u32, replicas: Vec<u64>) {
    let Some(metadata) = handle.host().group(GroupId::Metadata) else { return };
    if !metadata.raft.is_leader() {
        return;
    }
    let command = Command::SetPlacement { shard: ShardId(shard), replicas: replicas.clone() };
    match agentd_raft::propose(&metadata, command).await {
        Ok(_) => world.trace(format!("n{node} placed shard-{shard} on {replicas:?}")),
        Err(error) => world.trace(format!("n{node}: placing shard-{shard} failed: {error}")),
    }
}

/// The operator's replacement of a dead machine's old id, from the metadata
/// leader: `agentd node drain OLD`, then `agentd node remove OLD` (which
/// refuses until the moves are done; the harness asks again).
async fn replace(world: &World, handle: &NodeHandle, node: u64, old: u64) {
    let Some(metadata) = handle.host().group(GroupId::Metadata) else { return };
    if !metadata.raft.is_leader() {
        return;
    }
    // Failures are not traced: the harness asks again every pass until the
    // removal is done, as an operator would.
    let service = handle.service();
    let drained = service.call(&Caller::Node, ClientRequest::DrainNode { node: old }).await;
    let Ok(moves) = drained.and_then(|response| response.into_shard_moves()) else { return };
    for one in &moves {
        world.trace(format!("n{node}: drains node {old}: {} to node {}", one.shard, one.to));
    }
    if service.call(&Caller::Node, ClientRequest::RemoveNode { node: old }).await.is_ok()
        && lock(&world.removed).insert(old)
    {
        world.trace(format!("n{node}: node {old} is removed"));
    }
}

async fn snapshot(world: &World, handle: &NodeHandle, node: u64) {
    for group in handle.host().groups() {
        if let Err(error) = group.raft.trigger().snapshot().await {
            world.trace(format!("n{node}: snapshot of {} failed: {error}", group.group));
        }
    }
}

/// A second, independent orchestrator set on this node: every agent
/// session of a shard it leads gets two runs at once.
fn ghost_orchestrators(world: &Arc<World>, handle: &NodeHandle, node: u64) -> Orchestrators {
    let service = handle.service().clone();
    let log = LocalSessionLog::new(service.clone())
        .with_observer(Some(Arc::new(EpochRecorder { world: world.clone(), node })));
    let hands = LocalHands::new(
        PathBuf::from(format!("{NOWHERE}/sandboxes")),
        service,
        Arc::new(SimProvisioner { world: world.clone() }),
    );
    let models = Models::new(ProviderConfig::default(), RetryPolicy::default(), node)
        .with_provider(SIM_MODEL, Arc::new(SimModel));
    Orchestrators::new(Arc::new(Brain::new(Arc::new(log), Arc::new(hands), models)))
}

/// Waits (a little) for a turn in progress on a shard this node leads,
/// then gives it a second orchestrator.
async fn duplicate_wake(world: &World, handle: &NodeHandle, node: u64, ghost: &Orchestrators) {
    for _ in 0..DUPLICATE_WAKE_ATTEMPTS {
        let running = running_led_sessions(world, handle);
        if running.is_empty() {
            tokio::time::sleep(DUPLICATE_WAKE_RETRY).await;
            continue;
        }
        for session_id in running {
            world.trace(format!("n{node}: duplicate wake of {session_id}"));
            ghost.wake(session_id).await;
            handle.orchestrators().wake(session_id).await;
        }
        return;
    }
}

/// The workload's agent sessions that run now on a shard this node leads.
fn running_led_sessions(world: &World, handle: &NodeHandle) -> Vec<SessionId> {
    let agent_sessions = world.record().agent_sessions.clone();
    agent_sessions
        .into_iter()
        .filter(|session_id| {
            let Ok(shard) = handle.service().shard_of(*session_id) else { return false };
            let Some(group) = handle.host().group(GroupId::Shard(shard)) else { return false };
            group.raft.is_leader()
                && matches!(
                    group.state.session(*session_id),
                    Ok(Some(info)) if info.status == SessionStatus::Running
                )
        })
        .collect()
}
