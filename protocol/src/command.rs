//! The commands every Raft group replicates, and what applying one answers.
//!
//! These are log vocabulary: each committed entry of a group holds one
//! `Command`, encoded with bincode, so the variant order and every field order
//! are part of the on-disk format. Add variants at the end only.
//!
//! One command type serves both the metadata group and the shards; a command
//! names which kind of group it is for, and a state machine refuses commands
//! meant for the other kind.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentRef, AgentSpec, Environment, EnvironmentSpec, VaultInfo};
use crate::api::SessionInfo;
use crate::event::EventPayload;
use crate::ids::{AgentId, ApiKeyId, CredentialId, EnvironmentId, EventId, NodeId, SessionId, ShardId, VaultId};
use crate::resource::{Credential, Resource, ResourceId, ResourceVersion, SessionDetails, SessionUpdate, SessionView};
use crate::tenancy::{ApiKeyInfo, ApiKeyRecord};
use crate::ApiError;

/// A replicated command. Timestamps are stamped by the proposing node so
/// that applying a command is deterministic on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    // Shard commands.
    CreateSession {
        session_id: SessionId,
        shard: ShardId,
        created_at_ms: u64,
        agent: Option<AgentRef>,
        environment: Option<EnvironmentId>,
    },
    /// `epoch` is `None` for a client's append (user events only) and the
    /// orchestrator run's epoch for the runtime's appends; a stale epoch is
    /// refused, so two orchestrators of one session can never both write.
    Append {
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
        epoch: Option<u64>,
    },
    /// Starts a new orchestrator run: the session's epoch goes up by one.
    ClaimEpoch {
        session_id: SessionId,
    },
    /// An operator resumes a dead-lettered session: appends
    /// `session.status_rescheduled`, which starts a new turn.
    Reschedule {
        session_id: SessionId,
        event_id: EventId,
        at_ms: u64,
    },
    // Metadata commands.
    /// The first command of a cluster: fixes the shard count for its lifetime.
    InitCluster {
        shards: u32,
        replication_factor: u32,
    },
    AddNode {
        node_id: NodeId,
        addr: String,
    },
    /// Forgets a node for good: its record goes and its id can never be
    /// added again. Rejected while a placement names it.
    RemoveNode {
        node_id: NodeId,
    },
    /// The desired replica set of a shard; shard leaders reconcile towards it.
    SetPlacement {
        shard: ShardId,
        replicas: Vec<NodeId>,
    },
    /// Creates an agent, or adds a version to it.
    PutAgent {
        agent_id: AgentId,
        spec: AgentSpec,
        at_ms: u64,
    },
    PutEnvironment {
        environment_id: EnvironmentId,
        spec: EnvironmentSpec,
        at_ms: u64,
    },
    /// Sets one secret of a vault; `sealed` is the nonce and ciphertext.
    PutSecret {
        vault_id: VaultId,
        vault_name: String,
        secret_name: String,
        sealed: Vec<u8>,
    },
    /// A client ends a session (a shard command, last so that earlier variants keep
    /// their encoding): a new epoch fences any running orchestrator, and
    /// `session.status_terminated` is appended in it. Nothing is appended after it.
    Terminate {
        session_id: SessionId,
        event_id: EventId,
        at_ms: u64,
    },
    // Commands of the workspace era; every variant above keeps its encoding.
    /// Creates a resource in `workspace`, or adds a version to it (replaces
    /// the only one, for a vault). Refused as not found when the resource
    /// belongs to another workspace or is archived, and as a conflict when
    /// `expected_revision` is not the current revision.
    PutResource {
        id: ResourceId,
        workspace: String,
        version: ResourceVersion,
        expected_revision: Option<u64>,
        at_ms: u64,
    },
    /// Archives a resource: it is kept, read-only, and listed only on request.
    ArchiveResource {
        id: ResourceId,
        workspace: String,
        at_ms: u64,
    },
    /// Deletes an environment or a vault (agents are archived, never deleted).
    DeleteResource {
        id: ResourceId,
        workspace: String,
    },
    /// Sets one credential of a vault (by its id), or removes it (`None`).
    PutCredential {
        vault_id: VaultId,
        workspace: String,
        credential_id: CredentialId,
        credential: Option<Credential>,
        at_ms: u64,
    },
    /// Creates a session with its details (a shard command).
    CreateSessionIn {
        session_id: SessionId,
        shard: ShardId,
        created_at_ms: u64,
        agent: Option<AgentRef>,
        environment: Option<EnvironmentId>,
        details: SessionDetails,
    },
    UpdateSession {
        session_id: SessionId,
        workspace: String,
        update: SessionUpdate,
        at_ms: u64,
    },
    ArchiveSession {
        session_id: SessionId,
        workspace: String,
        at_ms: u64,
    },
    /// Deletes a session: it ends as a termination does (its log ends with
    /// `session.deleted`), and it is gone for every reader.
    DeleteSession {
        session_id: SessionId,
        workspace: String,
        event_id: EventId,
        at_ms: u64,
    },
    /// Stores an API key (its hash) in the metadata group.
    PutApiKey(ApiKeyRecord),
    RevokeApiKey {
        key_id: ApiKeyId,
        at_ms: u64,
    },
    /// Replaces a workspace's approval policy; its version goes up by one.
    /// Refused as a conflict when `expected_version` is not the current one.
    PutApprovalPolicy {
        workspace: String,
        rules: Vec<crate::approval::ApprovalRule>,
        expected_version: Option<u64>,
        at_ms: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateSession { session_id, .. } => write!(f, "create {session_id}"),
            Command::Append { session_id, event_id, payload, .. } => {
                write!(f, "append {} {event_id} to {session_id}", payload.type_name())
            }
            Command::InitCluster { shards, replication_factor } => {
                write!(f, "init cluster shards={shards} replication={replication_factor}")
            }
            Command::AddNode { node_id, addr } => write!(f, "add node {node_id} at {addr}"),
            Command::RemoveNode { node_id } => write!(f, "remove node {node_id}"),
            Command::SetPlacement { shard, replicas } => write!(f, "place {shard} on {replicas:?}"),
            Command::ClaimEpoch { session_id } => write!(f, "claim epoch of {session_id}"),
            Command::Reschedule { session_id, .. } => write!(f, "reschedule {session_id}"),
            Command::Terminate { session_id, .. } => write!(f, "terminate {session_id}"),
            Command::PutAgent { agent_id, .. } => write!(f, "put agent {agent_id}"),
            Command::PutEnvironment { environment_id, .. } => write!(f, "put environment {environment_id}"),
            Command::PutSecret { vault_id, secret_name, .. } => write!(f, "put secret {secret_name} in {vault_id}"),
            Command::PutResource { id, workspace, .. } => write!(f, "put {id} in workspace {workspace}"),
            Command::ArchiveResource { id, .. } => write!(f, "archive {id}"),
            Command::DeleteResource { id, .. } => write!(f, "delete {id}"),
            Command::PutCredential { vault_id, credential_id, .. } => {
                write!(f, "put credential {credential_id} of {vault_id}")
            }
            Command::CreateSessionIn { session_id, details, .. } => {
                write!(f, "create {session_id} in workspace {}", details.workspace)
            }
            Command::UpdateSession { session_id, .. } => write!(f, "update {session_id}"),
            Command::ArchiveSession { session_id, .. } => write!(f, "archive {session_id}"),
            Command::DeleteSession { session_id, .. } => write!(f, "delete {session_id}"),
            Command::PutApiKey(record) => write!(f, "put api key {} of workspace {}", record.id, record.workspace),
            Command::RevokeApiKey { key_id, .. } => write!(f, "revoke api key {key_id}"),
            Command::PutApprovalPolicy { workspace, .. } => write!(f, "put approval policy of workspace {workspace}"),
        }
    }
}

/// The result of applying one command, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    Session { info: SessionInfo, created: bool },
    Appended { seq: u64, duplicate: bool },
    Epoch(u64),
    Agent(Agent),
    Environment(Environment),
    Vault(VaultInfo),
    Done,
    Rejected(ApiError),
    Resource(Resource),
    SessionView(Box<SessionView>),
    ApiKey(ApiKeyInfo),
    ApprovalPolicy(crate::approval::ApprovalPolicy),
}

impl CommandResponse {
    /// The response to a proposal that can only be answered `what`; any other is a broken invariant of
    /// the state machine, answered as an internal error.
    fn unexpected(self, what: &str) -> ApiError {
        ApiError::Internal { message: format!("expected {what} from the state machine, got {self:?}") }
    }

    /// `(seq, duplicate)` of an append.
    pub fn into_appended(self) -> Result<(u64, bool), ApiError> {
        match self {
            CommandResponse::Appended { seq, duplicate } => Ok((seq, duplicate)),
            other => Err(other.unexpected("an appended event")),
        }
    }

    pub fn into_session(self) -> Result<SessionInfo, ApiError> {
        match self {
            CommandResponse::Session { info, .. } => Ok(info),
            other => Err(other.unexpected("a session")),
        }
    }

    pub fn into_epoch(self) -> Result<u64, ApiError> {
        match self {
            CommandResponse::Epoch(epoch) => Ok(epoch),
            other => Err(other.unexpected("an epoch")),
        }
    }

    pub fn into_agent(self) -> Result<Agent, ApiError> {
        match self {
            CommandResponse::Agent(agent) => Ok(agent),
            other => Err(other.unexpected("an agent")),
        }
    }

    pub fn into_environment(self) -> Result<Environment, ApiError> {
        match self {
            CommandResponse::Environment(environment) => Ok(environment),
            other => Err(other.unexpected("an environment")),
        }
    }

    pub fn into_vault(self) -> Result<VaultInfo, ApiError> {
        match self {
            CommandResponse::Vault(vault) => Ok(vault),
            other => Err(other.unexpected("a vault")),
        }
    }

    pub fn into_resource(self) -> Result<Resource, ApiError> {
        match self {
            CommandResponse::Resource(resource) => Ok(resource),
            other => Err(other.unexpected("a resource")),
        }
    }

    pub fn into_session_view(self) -> Result<SessionView, ApiError> {
        match self {
            CommandResponse::SessionView(view) => Ok(*view),
            other => Err(other.unexpected("a session")),
        }
    }

    pub fn into_api_key(self) -> Result<ApiKeyInfo, ApiError> {
        match self {
            CommandResponse::ApiKey(key) => Ok(key),
            other => Err(other.unexpected("an API key")),
        }
    }

    pub fn into_approval_policy(self) -> Result<crate::approval::ApprovalPolicy, ApiError> {
        match self {
            CommandResponse::ApprovalPolicy(policy) => Ok(policy),
            other => Err(other.unexpected("an approval policy")),
        }
    }

    /// A command that answers nothing but success.
    pub fn into_done(self) -> Result<(), ApiError> {
        match self {
            CommandResponse::Done => Ok(()),
            other => Err(other.unexpected("nothing")),
        }
    }
}
