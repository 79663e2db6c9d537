//! Node-to-node messages (ALPN `agentd-cluster/1`, mutual TLS) and the join
//! exchange (ALPN `agentd-join/1`). Raft messages travel as opaque bytes: the
//! `raft` crate encodes openraft's types, so this crate needs no openraft.

use serde::{Deserialize, Serialize};

use crate::api::{ClientRequest, ClientResponse, NodeStatus};
use crate::ids::{GroupId, NodeId};
use crate::tenancy::Caller;
use crate::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEnvelope {
    pub version: u16,
    pub from: NodeId,
    pub body: ClusterRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpcKind {
    AppendEntries,
    Vote,
    PreVote,
    FullSnapshot,
    TransferLeader,
}

/// One Raft RPC of one group, as carried in a [`ClusterRequest::RaftBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftCall {
    pub group: GroupId,
    pub kind: RaftRpcKind,
    pub payload: Vec<u8>,
    /// The node the RPC is for: the receiver refuses it if it is another
    /// node (`ApiError::WrongNode`).
    pub to: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterRequest {
    Raft {
        group: GroupId,
        kind: RaftRpcKind,
        payload: Vec<u8>,
        /// As [`RaftCall::to`].
        to: NodeId,
    },
    /// Raft RPCs of many groups bound for the same node, sent as one
    /// message: with many shards per node this is what keeps the number of
    /// streams (and the CPU spent on them) from growing with the shard count.
    RaftBatch(Vec<RaftCall>),
    /// A client call relayed to the node that leads its shard.
    Forward(ClientRequest),
    /// This node's own status (the groups it hosts).
    NodeStatus,
    /// Asks the metadata leader to admit a node into the cluster.
    AddNode { node_id: NodeId, addr: String },
    /// A client call relayed to the node that can run it, with who made it.
    ForwardAs { caller: Caller, request: ClientRequest },
    /// The first request on every node-to-node connection: which process of
    /// its node the dialer is (`incarnation`, drawn at each start) and the
    /// address it serves at. Nothing else is served on a connection before.
    Hello { incarnation: u64, addr: String },
    /// The committed membership of a group, as this node knows it: a
    /// replica removed from a group asks before it deletes its copy.
    GroupMembers { group: GroupId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterResponse {
    /// An encoded openraft reply (success or openraft's own error).
    Raft(Vec<u8>),
    /// One answer per call of a `RaftBatch`, in order: `Raft` or `Error`.
    RaftBatch(Vec<ClusterResponse>),
    Forwarded(ClientResponse),
    NodeStatus(NodeStatus),
    NodeAdded,
    Error(ApiError),
    /// The answer to `Hello`: which process of which node answers.
    Hello {
        node_id: NodeId,
        incarnation: u64,
    },
    /// A refused `Hello`, still saying which process answers: after nodes
    /// restart together each learns the others' new processes this way,
    /// rather than waiting out the lease of their old ones.
    HelloRefused {
        node_id: NodeId,
        incarnation: u64,
        reason: ApiError,
    },
    /// The voters and learners of the group's latest membership that this
    /// node has applied (so a quorum committed it); `None` when the node
    /// does not host the group or has applied none.
    GroupMembers(Option<GroupMembers>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The log id of that membership, encoded by the `raft` crate.
    pub log_id: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub version: u16,
    /// The secret half of the join token printed by `agentd start --init`.
    pub secret: String,
    pub node_id: NodeId,
    /// The address the new node listens on, as the other nodes should dial it.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// The new node's identity, signed by the cluster CA, and the CA key so
    /// that every node can admit further nodes (no single point of admission).
    Accepted {
        ca_cert_pem: String,
        ca_key_pem: String,
        node_cert_pem: String,
        node_key_pem: String,
        /// The key that seals vault secrets (hex), so every node can open them.
        secrets_key_hex: String,
    },
    Error(ApiError),
}
