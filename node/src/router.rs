//! Executes client requests: finds the shard, runs the request on this node
//! if it leads the shard, or forwards it (one hop) to the node that does.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeMap;
use std::time::Duration;

use agentd_actors::session::Sessions;
use agentd_protocol::agent::AgentRef;
use agentd_protocol::api::{ClientRequest, ClientResponse, ClusterStatus, Consistency, GroupStatus, NodeStatus, Route};
use agentd_protocol::cluster::{ClusterRequest, ClusterResponse};
use agentd_protocol::ids::{shard_of, AgentId, GroupId, NodeId, SessionId, ShardId};
use agentd_protocol::limits::EVENTS_PER_PAGE_MAX;
use agentd_protocol::ApiError;
use agentd_raft::host::{GroupHandle, RaftHost};
use agentd_raft::placement;
use agentd_raft::types::{Command, CommandResponse};

use crate::clock::Clock;
use crate::vault::SecretsKey;
use openraft::raft::ReadPolicy;
use tracing::Instrument;

const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A cheap-to-clone handle that answers client requests on one node.
#[derive(Clone)]
pub struct Router {
    host: RaftHost,
    advertise: String,
    // Admissions read the placement and then rewrite it; two at once would
    // each start from the same placement and the later would undo the
    // earlier, so the metadata leader runs them one at a time.
    admissions: std::sync::Arc<tokio::sync::Mutex<()>>,
    sessions: Sessions,
    secrets_key: std::sync::Arc<SecretsKey>,
    clock: Clock,
}

impl Router {
    pub fn new(host: RaftHost, advertise: String, secrets_key: std::sync::Arc<SecretsKey>, clock: Clock) -> Self {
        Self { host, advertise, admissions: Default::default(), sessions: Sessions::new(), secrets_key, clock }
    }

    /// Milliseconds since the Unix epoch, from the node's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn host(&self) -> &RaftHost {
        &self.host
    }

    /// The key that seals and opens vault secrets.
    pub fn secrets_key(&self) -> &SecretsKey {
        &self.secrets_key
    }

    /// This node's session actors.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Answers one request. `forwarded` requests came from another node and
    /// are never forwarded again: they run here or fail with `NotLeader`.
    pub async fn handle(&self, request: ClientRequest, forwarded: bool) -> ClientResponse {
        let started = std::time::Instant::now();
        let kind = request_kind(&request);
        let span = tracing::debug_span!("request", kind, forwarded, session = ?request.session_id());
        let response = match self.handle_inner(request, forwarded).instrument(span).await {
            Ok(response) => response,
            Err(error) => ClientResponse::Error(error),
        };
        metrics::histogram!("agentd_request_seconds", "kind" => kind).record(started.elapsed().as_secs_f64());
        response
    }

    async fn handle_inner(&self, request: ClientRequest, forwarded: bool) -> Result<ClientResponse, ApiError> {
        let session_id = match request.route() {
            Route::Status => return Ok(ClientResponse::ClusterStatus(self.cluster_status().await?)),
            Route::Metadata => return self.handle_metadata(request, forwarded).await,
            Route::Session(session_id) => session_id,
        };
        let shard = self.shard_of(session_id)?;
        let local = self.host.group(GroupId::Shard(shard));
        if let ClientRequest::ReadEvents { consistency: Consistency::Local, from_seq, limit, .. } = request {
            let group = local.ok_or_else(|| ApiError::NotReplica { group: shard.to_string() })?;
            return read_events(&group, session_id, from_seq, limit);
        }
        if let Some(group) = local.as_ref().filter(|group| group.raft.is_leader()) {
            return self.execute(group, shard, request).await;
        }
        if forwarded {
            return Err(ApiError::NotLeader { leader: local.as_ref().and_then(|group| self.leader_of(group)) });
        }
        self.forward(local.as_ref(), shard, request).await
    }

    /// Agents and environments live in the metadata group: served by its leader.
    async fn handle_metadata(&self, request: ClientRequest, forwarded: bool) -> Result<ClientResponse, ApiError> {
        let metadata = self.metadata()?;
        if metadata.raft.is_leader() {
            return self.execute_metadata(&metadata, request).await;
        }
        let leader = self.leader_of(&metadata);
        if forwarded {
            return Err(ApiError::NotLeader { leader });
        }
        let (_, addr) = leader
            .ok_or_else(|| ApiError::Unavailable { message: "the metadata group has no leader right now".into() })?;
        match self.host.peers().call(&addr, ClusterRequest::Forward(request), FORWARD_TIMEOUT).await {
            Ok(ClusterResponse::Forwarded(ClientResponse::Error(error))) => Err(error),
            Ok(ClusterResponse::Forwarded(response)) => Ok(response),
            Ok(other) => Err(ApiError::Internal { message: format!("unexpected answer {other:?}") }),
            Err(error) => Err(ApiError::Unavailable { message: error.to_string() }),
        }
    }

    async fn execute_metadata(
        &self,
        metadata: &GroupHandle,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match request {
            ClientRequest::PutAgent { agent_id, spec } => {
                spec.validate()?;
                match placement::propose(metadata, Command::PutAgent { agent_id, spec, at_ms: self.now_ms() }).await? {
                    CommandResponse::Agent(agent) => Ok(ClientResponse::Agent(agent)),
                    other => Err(unexpected(other)),
                }
            }
            ClientRequest::PutEnvironment { environment_id, spec } => {
                spec.validate()?;
                let command = Command::PutEnvironment { environment_id, spec, at_ms: self.now_ms() };
                match placement::propose(metadata, command).await? {
                    CommandResponse::Environment(environment) => Ok(ClientResponse::Environment(environment)),
                    other => Err(unexpected(other)),
                }
            }
            ClientRequest::GetAgent { agent_id } => {
                ensure_linearizable(metadata).await?;
                let agent = metadata.state.agent(agent_id).map_err(internal)?;
                agent.map(ClientResponse::Agent).ok_or_else(|| ApiError::NotFound { what: format!("agent {agent_id}") })
            }
            ClientRequest::GetEnvironment { environment_id } => {
                ensure_linearizable(metadata).await?;
                let environment = metadata.state.environment(environment_id).map_err(internal)?;
                environment
                    .map(ClientResponse::Environment)
                    .ok_or_else(|| ApiError::NotFound { what: format!("environment {environment_id}") })
            }
            ClientRequest::PutSecret { vault_id, vault_name, secret_name, value } => {
                if !agentd_protocol::agent::is_secret_name(&secret_name) {
                    return Err(ApiError::InvalidRequest {
                        message: format!("secret name {secret_name:?} must be an environment variable name"),
                    });
                }
                if vault_name.is_empty() || vault_name.len() > agentd_protocol::limits::NAME_BYTES_MAX {
                    return Err(ApiError::InvalidRequest { message: "a vault needs a name".into() });
                }
                if value.is_empty() || value.len() > agentd_protocol::limits::TEXT_BYTES_MAX {
                    return Err(ApiError::InvalidRequest { message: "a secret value is 1 byte to 256 KiB".into() });
                }
                let context = crate::vault::seal_context(&vault_id, &secret_name);
                let sealed = self
                    .secrets_key
                    .seal(&context, &value)
                    .map_err(|error| ApiError::Internal { message: error.to_string() })?;
                let command = Command::PutSecret { vault_id, vault_name, secret_name, sealed };
                match placement::propose(metadata, command).await? {
                    CommandResponse::Vault(info) => Ok(ClientResponse::Vault(info)),
                    other => Err(unexpected(other)),
                }
            }
            other => {
                Err(ApiError::InvalidRequest { message: format!("{} is not a metadata request", request_kind(&other)) })
            }
        }
    }

    /// The agent a new session pins: its latest version, read on the metadata leader.
    async fn resolve_agent(&self, agent_id: AgentId) -> Result<AgentRef, ApiError> {
        match self.handle_metadata(ClientRequest::GetAgent { agent_id }, false).await? {
            ClientResponse::Agent(agent) => Ok(AgentRef { id: agent_id, version: agent.latest_version() }),
            other => Err(ApiError::Internal { message: format!("unexpected answer {other:?}") }),
        }
    }

    /// The shard of a session, from the shard count fixed at cluster init.
    pub fn shard_of(&self, session_id: SessionId) -> Result<ShardId, ApiError> {
        let metadata = self.metadata()?;
        let (shards, _) = metadata.state.cluster_config().map_err(internal)?.ok_or_else(|| ApiError::Unavailable {
            message: "this node has not learned the cluster configuration yet".into(),
        })?;
        Ok(shard_of(session_id, shards))
    }

    fn metadata(&self) -> Result<GroupHandle, ApiError> {
        self.host
            .group(GroupId::Metadata)
            .ok_or_else(|| ApiError::Unavailable { message: "metadata group is not open on this node".into() })
    }

    async fn execute(
        &self,
        group: &GroupHandle,
        shard: ShardId,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match request {
            ClientRequest::CreateSession { session_id, agent, environment } => {
                let agent = match agent {
                    Some(agent_id) => Some(self.resolve_agent(agent_id).await?),
                    None => None,
                };
                if let Some(environment_id) = environment {
                    self.handle_metadata(ClientRequest::GetEnvironment { environment_id }, false).await?;
                }
                let command =
                    Command::CreateSession { session_id, shard, created_at_ms: self.now_ms(), agent, environment };
                match placement::propose(group, command).await? {
                    CommandResponse::Session { info, .. } => Ok(ClientResponse::Session(info)),
                    other => Err(unexpected(other)),
                }
            }
            ClientRequest::Append { session_id, event_id, payload } => {
                payload.validate_from_client()?;
                let (seq, duplicate) =
                    self.sessions.append(group, session_id, event_id, payload, self.now_ms()).await?;
                Ok(ClientResponse::Appended { seq, duplicate })
            }
            ClientRequest::RetrySession { session_id } => {
                let event_id = agentd_protocol::ids::EventId::from_random(rand::random());
                propose_append(group, Command::Reschedule { session_id, event_id, at_ms: self.now_ms() }).await
            }
            ClientRequest::TerminateSession { session_id } => {
                // A session ends once: its termination's id follows from its own
                // (no randomness, so the simulator's runs stay reproducible).
                let event_id = agentd_protocol::ids::EventId(session_id.0.map(|byte| byte ^ 0x5a));
                propose_append(group, Command::Terminate { session_id, event_id, at_ms: self.now_ms() }).await
            }
            ClientRequest::GetSession { session_id } => {
                ensure_linearizable(group).await?;
                Ok(ClientResponse::Session(self.sessions.info(group, session_id).await?))
            }
            ClientRequest::ReadEvents { session_id, from_seq, limit, .. } => {
                ensure_linearizable(group).await?;
                let (events, next_seq) = self.sessions.read(group, session_id, from_seq, limit).await?;
                Ok(ClientResponse::Events { events, next_seq })
            }
            ClientRequest::FollowEvents { .. }
            | ClientRequest::ClusterStatus
            | ClientRequest::PutAgent { .. }
            | ClientRequest::GetAgent { .. }
            | ClientRequest::PutEnvironment { .. }
            | ClientRequest::GetEnvironment { .. }
            | ClientRequest::PutSecret { .. } => {
                Err(ApiError::InvalidRequest { message: "this request cannot be executed as a single call".into() })
            }
        }
    }

    /// Forwards to the shard leader if this node knows it, else tries the
    /// shard's replicas in placement order.
    async fn forward(
        &self,
        local: Option<&GroupHandle>,
        shard: ShardId,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        let mut candidates: Vec<(NodeId, String)> = Vec::new();
        if let Some(leader) = local.and_then(|group| self.leader_of(group)) {
            candidates.push(leader);
        }
        let metadata = self.metadata()?;
        let addresses: BTreeMap<NodeId, String> = metadata.state.nodes().map_err(internal)?.into_iter().collect();
        let placements = metadata.state.placements().map_err(internal)?;
        if let Some((_, replicas)) = placements.iter().find(|(placed, _)| *placed == shard) {
            for replica in replicas {
                if *replica != self.host.node_id() && !candidates.iter().any(|(node, _)| node == replica) {
                    if let Some(addr) = addresses.get(replica) {
                        candidates.push((*replica, addr.clone()));
                    }
                }
            }
        }
        let mut last_error = ApiError::Unavailable { message: format!("no leader known for {shard}") };
        let mut index = 0;
        while index < candidates.len() {
            let (node, addr) = candidates[index].clone();
            index += 1;
            match self.host.peers().call(&addr, ClusterRequest::Forward(request.clone()), FORWARD_TIMEOUT).await {
                Ok(ClusterResponse::Forwarded(ClientResponse::Error(ApiError::NotLeader { leader }))) => {
                    if let Some(leader) = leader.filter(|(id, _)| !candidates.iter().any(|(node, _)| node == id)) {
                        candidates.push(leader);
                    }
                    last_error = ApiError::NotLeader { leader: None };
                }
                Ok(ClusterResponse::Forwarded(response)) => return Ok(response),
                Ok(other) => last_error = ApiError::Internal { message: format!("node {node} answered {other:?}") },
                Err(error) => last_error = ApiError::Unavailable { message: format!("node {node}: {error}") },
            }
        }
        Err(match last_error {
            ApiError::NotLeader { .. } => ApiError::Unavailable { message: format!("{shard} has no leader right now") },
            other => other,
        })
    }

    pub fn leader_of(&self, group: &GroupHandle) -> Option<(NodeId, String)> {
        let metrics = group.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node.addr))
    }

    /// Admits a node into the cluster, on the metadata leader.
    pub async fn admit(&self, node_id: NodeId, addr: String, forwarded: bool) -> Result<(), ApiError> {
        let metadata = self.metadata()?;
        if metadata.raft.is_leader() {
            let _one_at_a_time = self.admissions.lock().await;
            return placement::admit_node(&metadata, node_id, addr).await;
        }
        let leader = self.leader_of(&metadata).filter(|_| !forwarded);
        let Some((_, leader_addr)) = leader else {
            return Err(ApiError::Unavailable { message: "metadata group has no leader reachable from here".into() });
        };
        match self.host.peers().call(&leader_addr, ClusterRequest::AddNode { node_id, addr }, FORWARD_TIMEOUT).await {
            Ok(ClusterResponse::NodeAdded) => Ok(()),
            Ok(ClusterResponse::Error(error)) => Err(error),
            Ok(other) => Err(ApiError::Internal { message: format!("unexpected answer {other:?}") }),
            Err(error) => Err(ApiError::Unavailable { message: error.to_string() }),
        }
    }

    /// This node's own report: one entry per hosted group.
    pub fn local_status(&self) -> NodeStatus {
        let groups = self.host.groups().iter().map(group_status).collect();
        NodeStatus { node_id: self.host.node_id(), addr: self.advertise.clone(), reachable: true, groups }
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        let metadata = self.metadata()?;
        let (shards, replication_factor) = metadata.state.cluster_config().map_err(internal)?.unwrap_or((0, 0));
        let mut nodes = Vec::new();
        for (node_id, addr) in metadata.state.nodes().map_err(internal)? {
            if node_id == self.host.node_id() {
                nodes.push(self.local_status());
                continue;
            }
            let status = match self.host.peers().call(&addr, ClusterRequest::NodeStatus, STATUS_TIMEOUT).await {
                Ok(ClusterResponse::NodeStatus(status)) => status,
                _ => NodeStatus { node_id, addr, reachable: false, groups: Vec::new() },
            };
            nodes.push(status);
        }
        Ok(ClusterStatus { shards, replication_factor, nodes })
    }
}

fn group_status(group: &GroupHandle) -> GroupStatus {
    let metrics = group.raft.metrics().borrow_watched().clone();
    let last_log_index = metrics.last_log_index;
    let replica_lag = metrics
        .replication
        .as_ref()
        .map(|replication| {
            replication
                .iter()
                .map(|(node, matched)| {
                    let matched = matched.as_ref().map(|log_id| log_id.index).unwrap_or(0);
                    (*node, last_log_index.map(|last| last.saturating_sub(matched)))
                })
                .collect()
        })
        .unwrap_or_default();
    let membership = metrics.membership_config.membership();
    GroupStatus {
        group: group.group,
        role: format!("{:?}", metrics.state),
        term: metrics.current_term,
        leader: metrics.current_leader,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        last_log_index,
        last_applied_index: metrics.last_applied.as_ref().map(|log_id| log_id.index),
        snapshot_index: metrics.snapshot.as_ref().map(|log_id| log_id.index),
        purged_index: metrics.purged.as_ref().map(|log_id| log_id.index),
        replica_lag,
    }
}

fn read_events(
    group: &GroupHandle,
    session_id: SessionId,
    from_seq: u64,
    limit: u32,
) -> Result<ClientResponse, ApiError> {
    let info = group.state.session(session_id).map_err(internal)?.ok_or_else(|| not_found(session_id))?;
    let from_seq = from_seq.max(1);
    let limit = limit.clamp(1, EVENTS_PER_PAGE_MAX);
    let events = group.state.events(session_id, from_seq, limit).map_err(internal)?;
    let next_seq = events.last().map(|event| event.seq + 1).unwrap_or(from_seq.min(info.last_seq + 1));
    Ok(ClientResponse::Events { events, next_seq })
}

/// Makes sure this node is still the leader, so a read sees every
/// acknowledged append.
async fn ensure_linearizable(group: &GroupHandle) -> Result<(), ApiError> {
    group
        .raft
        .ensure_linearizable(ReadPolicy::ReadIndex)
        .await
        .map(|_| ())
        .map_err(|error| ApiError::Unavailable { message: format!("cannot confirm leadership: {error}") })
}

fn request_kind(request: &ClientRequest) -> &'static str {
    match request {
        ClientRequest::CreateSession { .. } => "create_session",
        ClientRequest::GetSession { .. } => "get_session",
        ClientRequest::Append { .. } => "append",
        ClientRequest::ReadEvents { .. } => "read_events",
        ClientRequest::FollowEvents { .. } => "follow_events",
        ClientRequest::ClusterStatus => "cluster_status",
        ClientRequest::PutAgent { .. } => "put_agent",
        ClientRequest::GetAgent { .. } => "get_agent",
        ClientRequest::PutEnvironment { .. } => "put_environment",
        ClientRequest::GetEnvironment { .. } => "get_environment",
        ClientRequest::RetrySession { .. } => "retry_session",
        ClientRequest::TerminateSession { .. } => "terminate_session",
        ClientRequest::PutSecret { .. } => "put_secret",
    }
}

/// Proposes a command that appends one event, answering with its sequence number.
async fn propose_append(group: &GroupHandle, command: Command) -> Result<ClientResponse, ApiError> {
    match placement::propose(group, command).await? {
        CommandResponse::Appended { seq, duplicate } => Ok(ClientResponse::Appended { seq, duplicate }),
        other => Err(unexpected(other)),
    }
}

fn not_found(session_id: SessionId) -> ApiError {
    ApiError::NotFound { what: format!("session {session_id}") }
}

fn internal(error: agentd_raft::Error) -> ApiError {
    tracing::error!(%error, "storage read failed");
    ApiError::Internal { message: error.to_string() }
}

fn unexpected(response: CommandResponse) -> ApiError {
    ApiError::Internal { message: format!("unexpected command response {response:?}") }
}
