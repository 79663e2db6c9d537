//! The openraft type configuration and the commands every group replicates.
//!
//! One type configuration serves both the metadata group and the shards; a
//! command names which kind of group it is for, and a state machine refuses
//! commands meant for the other kind.

use std::fmt;

use agentd_protocol::api::SessionInfo;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{EventId, NodeId, SessionId, ShardId};
use agentd_protocol::ApiError;
use openraft::type_config::alias;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The Raft types of every agentd group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// What a Raft membership records about a node: where to dial it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A replicated command. Timestamps are stamped by the proposing node so
/// that applying a command is deterministic on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    // Shard commands.
    CreateSession {
        session_id: SessionId,
        shard: ShardId,
        created_at_ms: u64,
    },
    Append {
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
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
    /// The desired replica set of a shard; shard leaders reconcile towards it.
    SetPlacement {
        shard: ShardId,
        replicas: Vec<NodeId>,
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
            Command::SetPlacement { shard, replicas } => write!(f, "place {shard} on {replicas:?}"),
        }
    }
}

/// The result of applying one command, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    Session { info: SessionInfo, created: bool },
    Appended { seq: u64, duplicate: bool },
    Done,
    Rejected(ApiError),
}

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type Entry = alias::EntryOf<TypeConfig>;
pub type LogId = alias::LogIdOf<TypeConfig>;
pub type Vote = alias::VoteOf<TypeConfig>;
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotData>;

/// A snapshot is the group's whole key-value state, encoded as one buffer.
pub type SnapshotData = Vec<u8>;
