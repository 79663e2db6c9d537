//! The openraft type configuration. One serves both the metadata group and
//! the shards; what they replicate is `agentd_protocol::command::Command`.

use std::fmt;

use agentd_protocol::command::{Command, CommandResponse};
use agentd_protocol::ids::NodeId;
use openraft::type_config::alias;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The Raft types of every agentd group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        LeaderId = LeaderId,
        AsyncRuntime = Runtime,
);

/// Standard Raft leader ids: at most one leader per term (the design's
/// invariant 3). openraft's default, `leader_id_adv`, orders leader ids by
/// (term, node) and lets a quorum elect a second leader in a term whose
/// node id is higher; that is safe for the log, but it breaks the invariant
/// that operators and the simulator's checker reason with.
pub type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;

/// openraft's runtime: tokio, with openraft's own randomness (election
/// timeouts) drawn from a seeded generator per group instead of the OS, so
/// that the simulator replays a seed exactly. Every group is started inside
/// a seed scope (see `RaftHost::open_group`); production seeds from the OS.
pub type Runtime = openraft::rt::deterministic_rng::DeterministicRng<openraft::impls::TokioRuntime>;

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

pub type Raft = openraft::Raft<TypeConfig, crate::state::StateMachine>;
pub type Entry = alias::EntryOf<TypeConfig>;
pub type LogId = alias::LogIdOf<TypeConfig>;
pub type Vote = alias::VoteOf<TypeConfig>;
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotData>;

/// A snapshot is the group's whole key-value state, encoded as one buffer.
pub type SnapshotData = Vec<u8>;
