//! The workload: clients as simulated hosts, using the real client code over
//! QUIC, recording what was acknowledged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentd_client::{Client, ClientError, RetryPolicy};
use agentd_protocol::agent::{AgentSpec, BuiltInTool, EnvironmentSpec, Network, PermissionPolicy, SandboxDriver};
use agentd_protocol::api::SessionStatus;
use agentd_protocol::event::{EventPayload, StopReason};
use agentd_protocol::ids::{AgentId, EnvironmentId, EventId, SessionId, VaultId};
use agentd_transport::tls::ServerTrust;
use rand::rngs::StdRng;
use rand::Rng;

use super::host::endpoint_config;
use crate::checkers::{Acked, Terminated};
use crate::faults::stream;
use crate::world::model::SIM_MODEL;
use crate::world::net::{node_ip, SimSocket, NODE_PORT};
use crate::world::World;

/// How long one client call keeps retrying before it gives up.
const CALL_DEADLINE: Duration = Duration::from_secs(15);

async fn client(world: &World, name: &str, first_node: u64) -> anyhow::Result<Client> {
    let socket = SimSocket::bind_with(SocketAddr::from(([0, 0, 0, 0], 0)), Some(world.duplication(name))).await?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(world.options.seed, name),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let nodes = world.options.nodes;
    let addrs = (0..nodes)
        .map(|offset| {
            let node = (first_node - 1 + offset) % nodes + 1;
            SocketAddr::new(node_ip(node), NODE_PORT).to_string()
        })
        .collect();
    let retry = RetryPolicy { deadline: CALL_DEADLINE, ..RetryPolicy::default() };
    let client = Client::with_endpoint(endpoint, addrs, ServerTrust::Ca(world.ca_cert_pem().to_string()))?;
    Ok(client.with_retry(retry).with_api_key(world.admin_key.clone()))
}

/// A client that creates one plain session and appends to it.
pub(crate) async fn run_appender(world: Arc<World>, index: u64) -> turmoil::Result {
    let name = format!("c{index}");
    let mut rng = stream(world.options.seed, &format!("workload-{name}"));
    let client = client(&world, &name, index % world.options.nodes + 1).await?;
    let session_id = SessionId::from_random(rng.random());
    loop {
        match client.create_session_as(session_id, None, None).await {
            Ok(_) => break,
            Err(error) => {
                world.trace(format!("{name}: creating {session_id} failed, retrying: {error}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    world.trace(format!("{name}: created {session_id}"));
    for number in 0..world.options.appends_per_client {
        let event_id = EventId::from_random(rng.random());
        let payload = EventPayload::user_text(format!("{name} message {number}"));
        match client.append_with_id(session_id, event_id, payload).await {
            Ok(seq) => {
                world.record().acked.push(Acked { session_id, event_id, seq });
                world.trace(format!("{name}: message {number} acknowledged as seq {seq}"));
            }
            Err(error) => world.trace(format!("{name}: message {number} not acknowledged: {error}")),
        }
        // Spread the appends over the safety phase, so faults meet traffic.
        let gap_ms = 2 * world.options.safety.as_millis() as u64 / world.options.appends_per_client.max(1) as u64;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..gap_ms.max(1)))).await;
    }
    world.record().clients_done += 1;
    world.trace(format!("{name}: done"));
    Ok(())
}

/// The name the agent client traces under.
const AGENTS: &str = "agents";
/// How long a client waits before repeating a call that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How often the agent client looks at its sessions while turns run.
const TURN_POLL: Duration = Duration::from_millis(100);

/// A client that sets up an agent with a vault and runs agent sessions,
/// then waits for each to finish its turn.
pub(crate) async fn run_agent_client(world: Arc<World>) -> turmoil::Result {
    let mut rng = stream(world.options.seed, "workload-agents");
    let client = client(&world, AGENTS, 1).await?;
    let (agent_id, environment_id) = set_up_agent(&world, &client, &mut rng).await;
    let mut sessions = Vec::new();
    for number in 0..world.options.agent_sessions {
        let session_id = SessionId::from_random(rng.random());
        loop {
            match client.create_session_as(session_id, Some(agent_id), Some(environment_id)).await {
                Ok(_) => break,
                Err(error) => {
                    world.trace(format!("{AGENTS}: creating agent session {number} failed, retrying: {error}"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        world.record().agent_sessions.push(session_id);
        world.trace(format!("{AGENTS}: agent session {number} is {session_id}"));
        sessions.push(session_id);
    }
    // Turns, one round after another, each a prompt to every session and a
    // wait for every turn to end (or be dead-lettered); rounds keep coming
    // until the safety phase is over, so faults meet running turns. The
    // harness bounds how long the last round may take.
    let started = tokio::time::Instant::now();
    let mut round = 0;
    let mut active = sessions.clone();
    loop {
        let prompted = prompt_round(&world, &client, &mut rng, &active, round).await;
        // In the second round, one session (of several) is terminated while its
        // turn runs: its orchestrator is fenced, and nothing may follow.
        if round == 1 && active.len() > 1 {
            if let Some(session_id) = active.pop() {
                terminate(&world, &client, session_id).await;
            }
        }
        wait_for_round(&world, &client, &active, &prompted, round).await;
        round += 1;
        if started.elapsed() >= world.options.safety {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
    }
    world.record().agent_sessions_finished.extend(sessions);
    world.record().clients_done += 1;
    world.trace(format!("{AGENTS}: done after {round} rounds"));
    Ok(())
}

/// A vault holding the run's secret, an environment using it and an agent
/// running the simulator's model with bash; returns the agent and environment.
async fn set_up_agent(world: &World, client: &Client, rng: &mut StdRng) -> (AgentId, EnvironmentId) {
    let vault_id = VaultId::from_random(rng.random());
    let environment_id = EnvironmentId::from_random(rng.random());
    let agent_id = AgentId::from_random(rng.random());
    retry_setup(world, AGENTS, || {
        client.put_secret(Some(vault_id), "sim".into(), "SIM_TOKEN".into(), world.secret.clone())
    })
    .await;
    let environment = EnvironmentSpec {
        name: "sim".into(),
        driver: SandboxDriver::Namespace.name().into(),
        network: Network::None,
        tool_timeout_ms: 30_000,
        eager_provisioning: false,
        vaults: vec![vault_id],
        resources: Default::default(),
    };
    retry_setup(world, AGENTS, || client.put_environment(Some(environment_id), environment.clone())).await;
    let agent = AgentSpec {
        name: "sim-agent".into(),
        model: SIM_MODEL.into(),
        system: None,
        tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow }],
        custom_tools: Vec::new(),
        max_model_calls_per_turn: 10,
        mcp_servers: vec![],
        mcp_toolsets: vec![],
    };
    retry_setup(world, AGENTS, || client.put_agent(Some(agent_id), agent.clone())).await;
    world.trace(format!("{AGENTS}: agent, environment and vault ready"));
    (agent_id, environment_id)
}

/// Prompts every active session once; returns each prompt's sequence number.
async fn prompt_round(
    world: &World,
    client: &Client,
    rng: &mut StdRng,
    active: &[SessionId],
    round: u32,
) -> BTreeMap<SessionId, u64> {
    let mut prompted = BTreeMap::new();
    for (number, session_id) in active.iter().enumerate() {
        let event_id = EventId::from_random(rng.random());
        let prompt = EventPayload::user_text(format!("round {round}: run the tools"));
        loop {
            match client.append_with_id(*session_id, event_id, prompt.clone()).await {
                Ok(seq) => {
                    world.record().acked.push(Acked { session_id: *session_id, event_id, seq });
                    prompted.insert(*session_id, seq);
                    break;
                }
                Err(error) => {
                    world.trace(format!("{AGENTS}: prompting agent session {number} failed, retrying: {error}"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    prompted
}

/// Terminates `session_id`, recording the acknowledged sequence number.
async fn terminate(world: &World, client: &Client, session_id: SessionId) {
    let seq = loop {
        match client.terminate_session(session_id).await {
            Ok(seq) => break seq,
            Err(error) => {
                world.trace(format!("{AGENTS}: terminating {session_id} failed, retrying: {error}"));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    world.record().terminated.push(Terminated { session_id, seq });
    world.trace(format!("{AGENTS}: terminated {session_id} at seq {seq}"));
}

/// Waits until every active session went idle after answering its prompt of this round.
async fn wait_for_round(
    world: &World,
    client: &Client,
    active: &[SessionId],
    prompted: &BTreeMap<SessionId, u64>,
    round: u32,
) {
    let mut open: Vec<SessionId> = active.to_vec();
    while !open.is_empty() {
        tokio::time::sleep(TURN_POLL).await;
        let mut still_open = Vec::new();
        for session_id in open {
            match client.get_session(session_id).await {
                // Idle after answering this round's prompt.
                Ok(info)
                    if info.status == SessionStatus::Idle
                        && info.stop_reason.is_some()
                        && info.last_seq > prompted.get(&session_id).copied().unwrap_or(0) =>
                {
                    let how = match info.stop_reason {
                        Some(StopReason::EndTurn) => "ended its turn",
                        Some(StopReason::RetriesExhausted) => "was dead-lettered",
                        _ => "stopped",
                    };
                    world.trace(format!("{AGENTS}: round {round}: {session_id} {how} at seq {}", info.last_seq));
                }
                _ => still_open.push(session_id),
            }
        }
        open = still_open;
    }
}

async fn retry_setup<T, F, Fut>(world: &World, name: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    loop {
        match call().await {
            Ok(_) => return,
            Err(error) => {
                world.trace(format!("{name}: setup call failed, retrying: {error}"));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
