//! Client requests and responses (ALPN `agentd/1`). One bidirectional QUIC
//! stream per call: the client writes one [`Request`] frame and finishes its
//! side; the server answers with one [`ClientResponse`] frame, or, for
//! [`ClientRequest::FollowEvents`], a frame per batch of new events until the
//! client goes away.

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentRef, AgentSpec, Environment, EnvironmentSpec, VaultInfo};
use crate::event::{Event, EventPayload, StopReason};
use crate::ids::{
    AgentId, ApiKeyId, CredentialId, EnvironmentId, EventId, GroupId, NodeId, SessionId, ShardId, VaultId,
};
use crate::resource::{
    EventPage, EventQuery, Resource, ResourceId, ResourcePage, ResourceQuery, ResourceVersion, SessionCreate,
    SessionPage, SessionQuery, SessionUpdate, SessionView,
};
use crate::tenancy::{ApiKeyInfo, ApiKeyRecord};
use crate::ApiError;

/// The envelope of every client call; `version` is the handshake, and
/// `api_key` says who calls (every call needs one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u16,
    pub api_key: String,
    pub body: ClientRequest,
}

impl Request {
    pub fn new(api_key: String, body: ClientRequest) -> Self {
        Self { version: crate::PROTOCOL_VERSION, api_key, body }
    }
}

/// The envelope of protocol version 1, which carried no key. A node decodes
/// it only to answer such a client with `UnsupportedVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestV1 {
    pub version: u16,
    pub body: ClientRequest,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Served by the shard leader: sees every acknowledged append.
    Leader,
    /// Served by the replica on the node that received the call, which may
    /// lag behind the leader. Used to inspect one replica.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Creates a session with a caller-chosen random id, pinned to the
    /// agent's current version. Creating an existing session again is not an
    /// error, so the call can be retried.
    CreateSession {
        session_id: SessionId,
        agent: Option<AgentId>,
        environment: Option<EnvironmentId>,
    },
    GetSession {
        session_id: SessionId,
    },
    /// Appends one event. `event_id` is the idempotency key: appending the
    /// same id again returns the sequence number of the first append.
    Append {
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
    },
    /// Reads up to `limit` events with `seq >= from_seq`.
    ReadEvents {
        session_id: SessionId,
        from_seq: u64,
        limit: u32,
        consistency: Consistency,
    },
    /// Streams events with `seq >= from_seq`, then every new event as it commits.
    FollowEvents {
        session_id: SessionId,
        from_seq: u64,
    },
    ClusterStatus,
    /// Creates an agent, or adds a version to an existing one.
    PutAgent {
        agent_id: AgentId,
        spec: AgentSpec,
    },
    GetAgent {
        agent_id: AgentId,
    },
    PutEnvironment {
        environment_id: EnvironmentId,
        spec: EnvironmentSpec,
    },
    GetEnvironment {
        environment_id: EnvironmentId,
    },
    /// Resumes a dead-lettered session (idle after its model retries ran
    /// out): the turn is taken up again from where it failed.
    RetrySession {
        session_id: SessionId,
    },
    /// Ends a session for good: a running turn stops, the session's sandbox
    /// and workspace are destroyed, and no event can be appended any more.
    /// Answered with the sequence number of `session.status_terminated`;
    /// terminating a terminated session answers the same number again.
    TerminateSession {
        session_id: SessionId,
    },
    /// Creates a vault if needed and sets one secret in it. The value is
    /// sealed by the metadata leader before it is replicated.
    PutSecret {
        vault_id: VaultId,
        vault_name: String,
        secret_name: String,
        value: String,
    },
    // Requests of the workspace era; every variant above keeps its encoding.
    /// Creates a session pinned to an agent's version (or an override of it)
    /// with its details. Creating it again answers the same session.
    CreateSessionIn {
        session_id: SessionId,
        create: SessionCreate,
    },
    /// A session as the API shows it (status, details, usage).
    GetSessionView {
        session_id: SessionId,
    },
    /// A page of the caller's sessions across every shard.
    ListSessions {
        query: SessionQuery,
    },
    /// A page of the caller's sessions on one shard (what `ListSessions`
    /// asks of each shard's leader).
    ListShardSessions {
        shard: ShardId,
        query: SessionQuery,
    },
    UpdateSession {
        session_id: SessionId,
        update: SessionUpdate,
    },
    ArchiveSession {
        session_id: SessionId,
    },
    /// Ends a session for good and removes it from every view; its streams
    /// get `session.deleted`.
    DeleteSession {
        session_id: SessionId,
    },
    /// A page of a session's events, filtered by type.
    ListEvents {
        session_id: SessionId,
        query: EventQuery,
    },
    /// Creates a resource or adds a version to it; `expected_revision`
    /// makes the write conditional.
    PutResource {
        id: ResourceId,
        version: ResourceVersion,
        expected_revision: Option<u64>,
    },
    GetResource {
        id: ResourceId,
    },
    ListResources {
        query: ResourceQuery,
    },
    ArchiveResource {
        id: ResourceId,
    },
    DeleteResource {
        id: ResourceId,
    },
    /// Sets a credential of a vault. The value is sealed by the metadata
    /// leader before it is replicated.
    PutCredential {
        vault_id: VaultId,
        credential_id: CredentialId,
        change: CredentialChange,
    },
    DeleteCredential {
        vault_id: VaultId,
        credential_id: CredentialId,
    },
    /// Stores a new API key (its hash: the key itself never leaves the node
    /// that made it). Admin keys only.
    PutApiKey {
        record: ApiKeyRecord,
    },
    /// Every key of a workspace (of all workspaces: `None`). Admin keys only.
    ListApiKeys {
        workspace: Option<String>,
    },
    RevokeApiKey {
        key_id: ApiKeyId,
    },
    /// A key's record, hash included, for a node that has not replicated it
    /// yet (nodes only).
    GetApiKeyRecord {
        key_id: ApiKeyId,
    },
    /// Hands the leadership of a group to one of its other voters; answers
    /// once that voter leads. Admin keys only.
    TransferLeader {
        group: GroupId,
        to: NodeId,
    },
    /// What a group holds, read on its leader. Admin keys only.
    GroupStats {
        group: GroupId,
    },
    /// Moves one replica of a shard to node `to`, from `from` (or from the
    /// replica whose node holds the most). Answers once the new placement
    /// is recorded; the shard's leader carries it out. Admin keys only.
    MoveShard {
        shard: ShardId,
        to: NodeId,
        from: Option<NodeId>,
    },
    /// Moves every replica off `node` to the nodes holding the fewest.
    /// Answers the moves once they are recorded. Admin keys only.
    DrainNode {
        node: NodeId,
    },
    /// Forgets a node that holds no replica, for good: it leaves the
    /// metadata group, its id is refused on every connection and can never
    /// join again. Answers `Done` once recorded. Admin keys only.
    RemoveNode {
        node: NodeId,
    },
    /// Moves replicas so that every node holds within one of an even share
    /// (see `placement::plan_rebalance`); answers the moves once recorded,
    /// or only plans them with `dry_run`. Admin keys only.
    Rebalance {
        dry_run: bool,
    },
    /// Replaces the approval policy of `workspace` (the caller's own when
    /// `None`); the version goes up by one. `expected_version` makes it
    /// conditional. Admin keys only.
    PutApprovalPolicy {
        workspace: Option<String>,
        rules: Vec<crate::approval::ApprovalRule>,
        expected_version: Option<u64>,
    },
    /// The approval policy of `workspace` (the caller's own when `None`;
    /// another workspace's only for admin keys and nodes).
    GetApprovalPolicy {
        workspace: Option<String>,
    },
}

/// What a credential write changes. Absent fields keep their value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialChange {
    pub display_name: Option<Option<String>>,
    pub metadata: Vec<(String, Option<String>)>,
    /// Required when the credential is created; immutable afterwards.
    pub secret_name: Option<String>,
    /// The secret itself (write-only).
    pub secret_value: Option<String>,
    pub allowed_hosts: Option<Option<Vec<String>>>,
    pub archive: bool,
    /// Makes (or keeps) the credential an MCP one: `secret_value` is then its
    /// token, and `secret_name` is not used.
    pub mcp: Option<McpCredentialChange>,
}

/// The MCP side of a credential change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpCredentialChange {
    pub server_url: String,
    /// `None` for `static_bearer`.
    pub oauth: Option<OAuthChange>,
}

/// An `mcp_oauth` credential's expiry and refresh settings, with the
/// refresh token and client secret in the clear (sealed by the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthChange {
    pub expires_at_ms: Option<u64>,
    pub refresh: Option<OAuthRefreshChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthRefreshChange {
    pub client_id: String,
    pub token_endpoint: String,
    pub endpoint_auth: crate::resource::TokenEndpointAuth,
    pub client_secret: Option<String>,
    pub refresh_token: String,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

/// Where a request is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On the leader of the session's shard.
    Session(SessionId),
    /// On the metadata group's leader.
    Metadata,
    /// On the node that received it (it asks the others).
    Status,
    /// On the leader of one shard.
    Shard(ShardId),
    /// On the node that received it, which asks every shard.
    AllShards,
}

impl ClientRequest {
    /// The session a request is about, if any; it decides the shard.
    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            ClientRequest::CreateSession { session_id, .. }
            | ClientRequest::GetSession { session_id }
            | ClientRequest::Append { session_id, .. }
            | ClientRequest::ReadEvents { session_id, .. }
            | ClientRequest::FollowEvents { session_id, .. }
            | ClientRequest::RetrySession { session_id }
            | ClientRequest::TerminateSession { session_id }
            | ClientRequest::CreateSessionIn { session_id, .. }
            | ClientRequest::GetSessionView { session_id }
            | ClientRequest::UpdateSession { session_id, .. }
            | ClientRequest::ArchiveSession { session_id }
            | ClientRequest::DeleteSession { session_id }
            | ClientRequest::ListEvents { session_id, .. } => Some(*session_id),
            ClientRequest::ClusterStatus
            | ClientRequest::PutAgent { .. }
            | ClientRequest::GetAgent { .. }
            | ClientRequest::PutEnvironment { .. }
            | ClientRequest::GetEnvironment { .. }
            | ClientRequest::PutSecret { .. }
            | ClientRequest::ListSessions { .. }
            | ClientRequest::ListShardSessions { .. }
            | ClientRequest::PutResource { .. }
            | ClientRequest::GetResource { .. }
            | ClientRequest::ListResources { .. }
            | ClientRequest::ArchiveResource { .. }
            | ClientRequest::DeleteResource { .. }
            | ClientRequest::PutCredential { .. }
            | ClientRequest::DeleteCredential { .. }
            | ClientRequest::PutApiKey { .. }
            | ClientRequest::ListApiKeys { .. }
            | ClientRequest::RevokeApiKey { .. }
            | ClientRequest::GetApiKeyRecord { .. }
            | ClientRequest::TransferLeader { .. }
            | ClientRequest::GroupStats { .. }
            | ClientRequest::MoveShard { .. }
            | ClientRequest::DrainNode { .. }
            | ClientRequest::RemoveNode { .. }
            | ClientRequest::Rebalance { .. }
            | ClientRequest::PutApprovalPolicy { .. }
            | ClientRequest::GetApprovalPolicy { .. } => None,
        }
    }

    /// The request's name, as metrics and logs label it.
    pub fn kind(&self) -> &'static str {
        match self {
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
            ClientRequest::CreateSessionIn { .. } => "create_session",
            ClientRequest::GetSessionView { .. } => "get_session",
            ClientRequest::ListSessions { .. } => "list_sessions",
            ClientRequest::ListShardSessions { .. } => "list_shard_sessions",
            ClientRequest::UpdateSession { .. } => "update_session",
            ClientRequest::ArchiveSession { .. } => "archive_session",
            ClientRequest::DeleteSession { .. } => "delete_session",
            ClientRequest::ListEvents { .. } => "list_events",
            ClientRequest::PutResource { .. } => "put_resource",
            ClientRequest::GetResource { .. } => "get_resource",
            ClientRequest::ListResources { .. } => "list_resources",
            ClientRequest::ArchiveResource { .. } => "archive_resource",
            ClientRequest::DeleteResource { .. } => "delete_resource",
            ClientRequest::PutCredential { .. } => "put_credential",
            ClientRequest::DeleteCredential { .. } => "delete_credential",
            ClientRequest::PutApiKey { .. } => "put_api_key",
            ClientRequest::ListApiKeys { .. } => "list_api_keys",
            ClientRequest::RevokeApiKey { .. } => "revoke_api_key",
            ClientRequest::GetApiKeyRecord { .. } => "get_api_key",
            ClientRequest::TransferLeader { .. } => "transfer_leader",
            ClientRequest::GroupStats { .. } => "group_stats",
            ClientRequest::MoveShard { .. } => "move_shard",
            ClientRequest::DrainNode { .. } => "drain_node",
            ClientRequest::RemoveNode { .. } => "remove_node",
            ClientRequest::Rebalance { .. } => "rebalance",
            ClientRequest::PutApprovalPolicy { .. } => "put_approval_policy",
            ClientRequest::GetApprovalPolicy { .. } => "get_approval_policy",
        }
    }

    /// Whether the request changes replicated state (a node whose disk is
    /// full refuses these, see [`ApiError::StorageFull`]).
    pub fn is_write(&self) -> bool {
        match self {
            ClientRequest::GetSession { .. }
            | ClientRequest::ReadEvents { .. }
            | ClientRequest::FollowEvents { .. }
            | ClientRequest::ClusterStatus
            | ClientRequest::GetAgent { .. }
            | ClientRequest::GetEnvironment { .. }
            | ClientRequest::GetSessionView { .. }
            | ClientRequest::ListSessions { .. }
            | ClientRequest::ListShardSessions { .. }
            | ClientRequest::ListEvents { .. }
            | ClientRequest::GetResource { .. }
            | ClientRequest::ListResources { .. }
            | ClientRequest::ListApiKeys { .. }
            | ClientRequest::GetApiKeyRecord { .. }
            | ClientRequest::GroupStats { .. }
            | ClientRequest::GetApprovalPolicy { .. }
            // Moves no data: a node whose disk is full may hand off.
            | ClientRequest::TransferLeader { .. } => false,
            ClientRequest::CreateSession { .. }
            | ClientRequest::Append { .. }
            | ClientRequest::PutAgent { .. }
            | ClientRequest::PutEnvironment { .. }
            | ClientRequest::RetrySession { .. }
            | ClientRequest::TerminateSession { .. }
            | ClientRequest::PutSecret { .. }
            | ClientRequest::CreateSessionIn { .. }
            | ClientRequest::UpdateSession { .. }
            | ClientRequest::ArchiveSession { .. }
            | ClientRequest::DeleteSession { .. }
            | ClientRequest::PutResource { .. }
            | ClientRequest::ArchiveResource { .. }
            | ClientRequest::DeleteResource { .. }
            | ClientRequest::PutCredential { .. }
            | ClientRequest::DeleteCredential { .. }
            | ClientRequest::PutApiKey { .. }
            | ClientRequest::RevokeApiKey { .. }
            | ClientRequest::MoveShard { .. }
            | ClientRequest::DrainNode { .. }
            | ClientRequest::RemoveNode { .. }
            | ClientRequest::PutApprovalPolicy { .. }
            | ClientRequest::Rebalance { dry_run: false } => true,
            ClientRequest::Rebalance { dry_run: true } => false,
        }
    }

    pub fn route(&self) -> Route {
        match (self, self.session_id()) {
            (_, Some(session_id)) => Route::Session(session_id),
            (ClientRequest::ClusterStatus, None) => Route::Status,
            (ClientRequest::ListSessions { .. }, None) => Route::AllShards,
            (ClientRequest::ListShardSessions { shard, .. }, None) => Route::Shard(*shard),
            (ClientRequest::TransferLeader { group: GroupId::Shard(shard), .. }, None) => Route::Shard(*shard),
            (ClientRequest::GroupStats { group: GroupId::Shard(shard) }, None) => Route::Shard(*shard),
            (_, None) => Route::Metadata,
        }
    }
}

/// A committed append: its sequence number, whether an earlier attempt with
/// the same event id had committed it already, and the `processed_at_ms`
/// stamped on the stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub seq: u64,
    pub duplicate: bool,
    pub processed_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    Session(SessionInfo),
    Appended(Appended),
    /// A page of events; `next_seq` is where the next read should start.
    Events {
        events: Vec<Event>,
        next_seq: u64,
    },
    ClusterStatus(ClusterStatus),
    Agent(Agent),
    Environment(Environment),
    Vault(VaultInfo),
    Error(ApiError),
    // Responses of the workspace era.
    SessionView(Box<SessionView>),
    Sessions(SessionPage),
    EventPage(EventPage),
    Resource(Resource),
    Resources(ResourcePage),
    ApiKey(ApiKeyInfo),
    ApiKeys(Vec<ApiKeyInfo>),
    ApiKeyRecord(ApiKeyRecord),
    Done,
    /// Who leads the group now, in which term.
    LeaderTransferred {
        group: GroupId,
        leader: NodeId,
        term: u64,
    },
    GroupStats(GroupStats),
    /// The replica moves a `MoveShard` or `DrainNode` recorded.
    ShardMoves(Vec<ShardMove>),
    ApprovalPolicy(crate::approval::ApprovalPolicy),
}

/// One replica of a shard moving from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMove {
    pub shard: ShardId,
    pub from: NodeId,
    pub to: NodeId,
    /// The shard's replicas once the move is done.
    pub replicas: Vec<NodeId>,
}

/// What one group holds, as its leader counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    pub group: GroupId,
    pub sessions: u64,
    /// Events of all its sessions (the sum of their last sequence numbers).
    pub events: u64,
    /// Bytes of keys and values of its replicated state as stored, before
    /// RocksDB's compression.
    pub bytes: u64,
}

impl ClientResponse {
    /// The answer to a request that can only be answered `what`; any other
    /// is a node's mistake, or an error the node sent.
    fn unexpected(self, what: &str) -> ApiError {
        match self {
            ClientResponse::Error(error) => error,
            other => ApiError::Internal { message: format!("expected {what}, got {other:?}") },
        }
    }

    pub fn into_session(self) -> Result<SessionInfo, ApiError> {
        match self {
            ClientResponse::Session(info) => Ok(info),
            other => Err(other.unexpected("a session")),
        }
    }

    pub fn into_approval_policy(self) -> Result<crate::approval::ApprovalPolicy, ApiError> {
        match self {
            ClientResponse::ApprovalPolicy(policy) => Ok(policy),
            other => Err(other.unexpected("an approval policy")),
        }
    }

    /// `(seq, duplicate)` of an append.
    pub fn into_appended(self) -> Result<(u64, bool), ApiError> {
        self.into_committed().map(|appended| (appended.seq, appended.duplicate))
    }

    /// Where an append landed, and when it was stamped.
    pub fn into_committed(self) -> Result<Appended, ApiError> {
        match self {
            ClientResponse::Appended(appended) => Ok(appended),
            other => Err(other.unexpected("an appended event")),
        }
    }

    /// A page of events and the sequence number the next read starts at.
    pub fn into_events(self) -> Result<(Vec<Event>, u64), ApiError> {
        match self {
            ClientResponse::Events { events, next_seq } => Ok((events, next_seq)),
            other => Err(other.unexpected("events")),
        }
    }

    pub fn into_cluster_status(self) -> Result<ClusterStatus, ApiError> {
        match self {
            ClientResponse::ClusterStatus(status) => Ok(status),
            other => Err(other.unexpected("a cluster status")),
        }
    }

    pub fn into_agent(self) -> Result<Agent, ApiError> {
        match self {
            ClientResponse::Agent(agent) => Ok(agent),
            other => Err(other.unexpected("an agent")),
        }
    }

    pub fn into_environment(self) -> Result<Environment, ApiError> {
        match self {
            ClientResponse::Environment(environment) => Ok(environment),
            other => Err(other.unexpected("an environment")),
        }
    }

    pub fn into_vault(self) -> Result<VaultInfo, ApiError> {
        match self {
            ClientResponse::Vault(vault) => Ok(vault),
            other => Err(other.unexpected("a vault")),
        }
    }

    pub fn into_session_view(self) -> Result<SessionView, ApiError> {
        match self {
            ClientResponse::SessionView(view) => Ok(*view),
            other => Err(other.unexpected("a session")),
        }
    }

    pub fn into_sessions(self) -> Result<SessionPage, ApiError> {
        match self {
            ClientResponse::Sessions(page) => Ok(page),
            other => Err(other.unexpected("a page of sessions")),
        }
    }

    pub fn into_event_page(self) -> Result<EventPage, ApiError> {
        match self {
            ClientResponse::EventPage(page) => Ok(page),
            other => Err(other.unexpected("a page of events")),
        }
    }

    pub fn into_resource(self) -> Result<Resource, ApiError> {
        match self {
            ClientResponse::Resource(resource) => Ok(resource),
            other => Err(other.unexpected("a resource")),
        }
    }

    pub fn into_resources(self) -> Result<ResourcePage, ApiError> {
        match self {
            ClientResponse::Resources(page) => Ok(page),
            other => Err(other.unexpected("a page of resources")),
        }
    }

    pub fn into_api_key(self) -> Result<ApiKeyInfo, ApiError> {
        match self {
            ClientResponse::ApiKey(key) => Ok(key),
            other => Err(other.unexpected("an API key")),
        }
    }

    pub fn into_api_keys(self) -> Result<Vec<ApiKeyInfo>, ApiError> {
        match self {
            ClientResponse::ApiKeys(keys) => Ok(keys),
            other => Err(other.unexpected("API keys")),
        }
    }

    pub fn into_api_key_record(self) -> Result<ApiKeyRecord, ApiError> {
        match self {
            ClientResponse::ApiKeyRecord(record) => Ok(record),
            other => Err(other.unexpected("an API key record")),
        }
    }

    /// The group's leader and term after a transfer.
    pub fn into_leader_transferred(self) -> Result<(NodeId, u64), ApiError> {
        match self {
            ClientResponse::LeaderTransferred { leader, term, .. } => Ok((leader, term)),
            other => Err(other.unexpected("a leader transfer")),
        }
    }

    pub fn into_group_stats(self) -> Result<GroupStats, ApiError> {
        match self {
            ClientResponse::GroupStats(stats) => Ok(stats),
            other => Err(other.unexpected("a group's stats")),
        }
    }

    pub fn into_shard_moves(self) -> Result<Vec<ShardMove>, ApiError> {
        match self {
            ClientResponse::ShardMoves(moves) => Ok(moves),
            other => Err(other.unexpected("replica moves")),
        }
    }

    pub fn into_done(self) -> Result<(), ApiError> {
        match self {
            ClientResponse::Done => Ok(()),
            other => Err(other.unexpected("nothing")),
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionStatus {
    Idle,
    Running,
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: SessionId,
    pub shard: ShardId,
    pub created_at_ms: u64,
    /// Sequence number of the last committed event (0 when empty).
    pub last_seq: u64,
    pub agent: Option<AgentRef>,
    pub environment: Option<EnvironmentId>,
    pub status: SessionStatus,
    /// The epoch of the orchestrator run allowed to append agent events.
    pub epoch: u64,
    /// Tool uses waiting for the client's answer.
    pub pending_actions: Vec<EventId>,
    /// Why the session last went idle. `RetriesExhausted` marks a
    /// dead-lettered session, which `RetrySession` resumes.
    pub stop_reason: Option<StopReason>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub shards: u32,
    pub replication_factor: u32,
    pub nodes: Vec<NodeStatus>,
}

/// What one node reports about itself and the groups it hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub addr: String,
    /// False when the node could not be reached for this report.
    pub reachable: bool,
    pub groups: Vec<GroupStatus>,
    /// The node's wall clock when it made the report (ms since the epoch).
    pub clock_ms: u64,
    /// How far this node's clock is ahead (positive) or behind (negative)
    /// of the clock of the node that gathered the status, estimated from
    /// the midpoint of the request; 0 for the gatherer itself, `None` when
    /// unreachable.
    pub clock_skew_ms: Option<i64>,
    /// Free bytes on the node's data disk at its last measurement (`None`
    /// when unreachable or not measured yet).
    pub disk_free_bytes: Option<u64>,
    /// The node's free-space floor (`--min-free-disk`).
    pub disk_floor_bytes: u64,
    /// True while the node's free space is under its floor: it takes no
    /// new writes and leads no group.
    pub storage_full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// On the leader: how far behind the leader's last log index each replica is.
    pub replica_lag: Vec<(NodeId, Option<u64>)>,
}
