//! The Raft network of one group: openraft RPCs encoded with bincode and
//! carried by [`Peers`] as `ClusterRequest::Raft`, plus the receiving side
//! that hands them to the local `Raft`.

use std::future::Future;
use std::time::Duration;

use agentd_protocol::cluster::{ClusterRequest, ClusterResponse, RaftCall, RaftRpcKind};
use agentd_protocol::frame::{decode_body, encode_body};
use agentd_protocol::ids::{GroupId, NodeId};
use agentd_protocol::ApiError;
use openraft::errors::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::peers::Peers;
use crate::types::{NodeInfo, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use crate::Error;

/// Creates the per-target clients openraft asks for, for one group.
#[derive(Clone)]
pub struct GroupNetwork {
    pub peers: Peers,
    pub group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> GroupClient {
        GroupClient { peers: self.peers.clone(), group: self.group, target, addr: node.addr.clone() }
    }
}

/// Sends one group's Raft RPCs to one target node.
pub struct GroupClient {
    peers: Peers,
    group: GroupId,
    target: NodeId,
    addr: String,
}

impl GroupClient {
    async fn rpc<Req, Resp>(&self, kind: RaftRpcKind, request: &Req, timeout: Duration) -> Result<Resp, Error>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let payload = encode_body(request)?;
        // Snapshots are large and slow: they travel alone, not in a batch.
        let response = if kind == RaftRpcKind::FullSnapshot {
            let request = ClusterRequest::Raft { group: self.group, kind, payload, to: self.target };
            self.peers.call(&self.addr, request, timeout).await?
        } else {
            self.peers
                .call_raft(&self.addr, RaftCall { group: self.group, kind, payload, to: self.target }, timeout)
                .await?
        };
        match response {
            ClusterResponse::Raft(bytes) => Ok(decode_body(&bytes)?),
            ClusterResponse::Error(error) => Err(Error::Network(format!("node {} refused: {error}", self.target))),
            other => Err(Error::Network(format!("node {} answered a Raft RPC with {other:?}", self.target))),
        }
    }

    /// Calls a request-response RPC whose remote result is `Result<Resp, RaftError>`.
    async fn unary<Req, Resp>(
        &self,
        kind: RaftRpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<TypeConfig>> =
            self.rpc(kind, request, option.soft_ttl()).await.map_err(Unreachable::from_string)?;
        // The only remote error of these RPCs is a fatal one: the peer's group is stopping.
        reply.map_err(|error| RPCError::Unreachable(Unreachable::from_string(format!("node {}: {error}", self.target))))
    }
}

impl RaftNetworkV2<TypeConfig> for GroupClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RaftRpcKind::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RaftRpcKind::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RaftRpcKind::PreVote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply: Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>> =
            self.rpc(RaftRpcKind::TransferLeader, &rpc, option.soft_ttl()).await.map_err(Unreachable::from_string)?;
        reply.map_err(|fatal| RPCError::Unreachable(Unreachable::from_string(format!("node {}: {fatal}", self.target))))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = (vote, snapshot.meta, snapshot.snapshot);
        let send = self.rpc::<_, Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>>(
            RaftRpcKind::FullSnapshot,
            &request,
            option.hard_ttl(),
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = send => {
                let reply = reply.map_err(Unreachable::from_string)?;
                reply.map_err(|fatal| StreamingError::Unreachable(Unreachable::from_string(format!("remote node is stopping: {fatal}"))))
            }
        }
    }
}

/// Hands an incoming Raft RPC to the local group and encodes its reply.
/// With `refuse_writes` (the disk is full), log entries, snapshots and
/// leadership hand-offs to this node are refused with it; heartbeats and
/// votes still run.
pub async fn serve_rpc<SM>(
    raft: &openraft::Raft<TypeConfig, SM>,
    kind: RaftRpcKind,
    payload: &[u8],
    refuse_writes: Option<ApiError>,
) -> Result<ClusterResponse, Error>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let reply = match kind {
        RaftRpcKind::AppendEntries => {
            let request: AppendEntriesRequest<TypeConfig> = decode_body(payload)?;
            if let Some(refusal) = refuse_writes.filter(|_| !request.entries.is_empty()) {
                return Err(Error::Refused(refusal));
            }
            encode_body(&raft.append_entries(request).await)?
        }
        RaftRpcKind::Vote => {
            let request: VoteRequest<TypeConfig> = decode_body(payload)?;
            encode_body(&raft.vote(request).await)?
        }
        RaftRpcKind::PreVote => {
            let request: VoteRequest<TypeConfig> = decode_body(payload)?;
            encode_body(&raft.pre_vote(request).await)?
        }
        RaftRpcKind::FullSnapshot => {
            if let Some(refusal) = refuse_writes {
                return Err(Error::Refused(refusal));
            }
            let (vote, meta, data): (Vote, SnapshotMeta, SnapshotData) = decode_body(payload)?;
            metrics::counter!("agentd_raft_snapshots_received_total").increment(1);
            let snapshot = Snapshot { meta, snapshot: data };
            encode_body(&raft.install_full_snapshot(vote, snapshot).await)?
        }
        RaftRpcKind::TransferLeader => {
            if let Some(refusal) = refuse_writes {
                return Err(Error::Refused(refusal));
            }
            let request: TransferLeaderRequest<TypeConfig> = decode_body(payload)?;
            encode_body(&raft.handle_transfer_leader(request).await)?
        }
    };
    Ok(ClusterResponse::Raft(reply))
}
