//! Where a request runs: on this node if it can, else forwarded one hop to
//! the node that can (the leader of the session's shard, or of the metadata
//! group).

use std::collections::BTreeMap;
use std::time::Duration;

use agentd_protocol::api::{ClientRequest, ClientResponse, Consistency, Route};
use agentd_protocol::cluster::{ClusterRequest, ClusterResponse};
use agentd_protocol::ids::{GroupId, NodeId, SessionId, ShardId};
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;

use super::{not_replica, Caller, Origin, Service};

/// How long a forwarded request may take on the node that runs it.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

impl Service {
    pub(super) async fn route(
        &self,
        caller: &Caller,
        request: ClientRequest,
        origin: Origin,
    ) -> Result<ClientResponse, ApiError> {
        // A node under its free-space floor takes no writes, forwarded or not
        // (see `agentd_raft::space`); another node takes them.
        let space = self.host().space();
        if request.is_write() && space.is_full() {
            return Err(space.refusal(self.host().node_id()));
        }
        match request.route() {
            Route::Status => Ok(ClientResponse::ClusterStatus(self.gather_cluster_status().await?)),
            Route::Metadata => self.route_metadata(caller, request, origin).await,
            Route::Session(session_id) => {
                let shard = self.shard_of(session_id)?;
                self.route_shard(caller, shard, Some(session_id), request, origin).await
            }
            Route::Shard(shard) => self.route_shard(caller, shard, None, request, origin).await,
            Route::AllShards => self.list_sessions(caller, request).await,
        }
    }

    /// A shard's request (about one of its sessions, or the shard): on its
    /// leader, or a local read on this node's replica.
    pub(super) async fn route_shard(
        &self,
        caller: &Caller,
        shard: ShardId,
        session_id: Option<SessionId>,
        request: ClientRequest,
        origin: Origin,
    ) -> Result<ClientResponse, ApiError> {
        let local = self.host().group(GroupId::Shard(shard));
        if let (ClientRequest::ReadEvents { consistency: Consistency::Local, from_seq, limit, .. }, Some(session_id)) =
            (&request, session_id)
        {
            let group = local.ok_or_else(|| not_replica(shard))?;
            super::session::check_visible(caller, &group, session_id)?;
            return read_replica(&group, session_id, *from_seq, *limit);
        }
        if let Some(group) = local.as_ref().filter(|group| group.raft.is_leader()) {
            match self.execute_session(caller, group, shard, request.clone()).await {
                // The leadership moved (or is being handed off) before the
                // request was accepted: the new leader runs it.
                Err(ApiError::NotLeader { .. }) if origin == Origin::FrontDoor => {}
                answer => return answer,
            }
        }
        if origin == Origin::Forwarded {
            return Err(ApiError::NotLeader { leader: local.as_ref().and_then(|group| self.leader_of(group)) });
        }
        self.forward_session(caller, local.as_ref(), shard, request).await
    }

    /// Agents, environments and vaults: on the metadata group's leader.
    pub(super) async fn route_metadata(
        &self,
        caller: &Caller,
        request: ClientRequest,
        origin: Origin,
    ) -> Result<ClientResponse, ApiError> {
        let metadata = self.metadata()?;
        if metadata.raft.is_leader() {
            match self.execute_metadata(caller, &metadata, request.clone()).await {
                // Handed off before it was accepted: the new leader runs it.
                Err(ApiError::NotLeader { leader: Some((node, addr)) })
                    if origin == Origin::FrontDoor && node != self.host().node_id() =>
                {
                    return self.forward_to(caller, node, &addr, request).await?;
                }
                answer => return answer,
            }
        }
        let leader = self.leader_of(&metadata);
        if origin == Origin::Forwarded {
            return Err(ApiError::NotLeader { leader });
        }
        let (node, addr) = leader
            .ok_or_else(|| ApiError::Unavailable { message: "the metadata group has no leader right now".into() })?;
        self.forward_to(caller, node, &addr, request).await?
    }

    /// Forwards to the shard leader if this node knows it, else tries the
    /// shard's replicas in placement order, following `NotLeader` hints.
    async fn forward_session(
        &self,
        caller: &Caller,
        local: Option<&GroupHandle>,
        shard: ShardId,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        let mut candidates = self.replica_candidates(local, shard)?;
        let mut last_error = ApiError::Unavailable { message: format!("no leader known for {shard}") };
        let mut index = 0;
        while let Some((node, addr)) = candidates.get(index).cloned() {
            index += 1;
            match self.forward_to(caller, node, &addr, request.clone()).await {
                Ok(Err(ApiError::NotLeader { leader })) => {
                    if let Some(leader) = leader.filter(|(id, _)| !candidates.iter().any(|(node, _)| node == id)) {
                        candidates.push(leader);
                    }
                    last_error = ApiError::NotLeader { leader: None };
                }
                Ok(answer) => return answer,
                Err(unreachable) => last_error = unreachable,
            }
        }
        Err(match last_error {
            ApiError::NotLeader { .. } => ApiError::Unavailable { message: format!("{shard} has no leader right now") },
            other => other,
        })
    }

    /// The nodes that may lead `shard`: the leader this node knows of first,
    /// then the other replicas of its placement.
    fn replica_candidates(
        &self,
        local: Option<&GroupHandle>,
        shard: ShardId,
    ) -> Result<Vec<(NodeId, String)>, ApiError> {
        let mut candidates: Vec<(NodeId, String)> = local.and_then(|group| self.leader_of(group)).into_iter().collect();
        let metadata = self.metadata()?;
        let addresses: BTreeMap<NodeId, String> = metadata.state.nodes()?.into_iter().collect();
        let placements = metadata.state.placements()?;
        let replicas = placements.iter().find(|(placed, _)| *placed == shard).map(|(_, replicas)| replicas.as_slice());
        for replica in replicas.unwrap_or_default() {
            if *replica == self.host().node_id() || candidates.iter().any(|(node, _)| node == replica) {
                continue;
            }
            if let Some(addr) = addresses.get(replica) {
                candidates.push((*replica, addr.clone()));
            }
        }
        Ok(candidates)
    }

    /// Runs `request` on the node at `addr` (one hop: it is not forwarded
    /// again) and returns that node's answer, or why it could not be asked.
    async fn forward_to(
        &self,
        caller: &Caller,
        node: NodeId,
        addr: &str,
        request: ClientRequest,
    ) -> Result<Result<ClientResponse, ApiError>, ApiError> {
        let forward = ClusterRequest::ForwardAs { caller: caller.clone(), request };
        match self.host().peers().call(addr, forward, FORWARD_TIMEOUT).await {
            Ok(ClusterResponse::Forwarded(ClientResponse::Error(error))) => Ok(Err(error)),
            Ok(ClusterResponse::Forwarded(response)) => Ok(Ok(response)),
            // This node was removed, or refused as a copy: it stops soon;
            // the client asks another node.
            Ok(ClusterResponse::Error(refused @ (ApiError::NodeRemoved { .. } | ApiError::IdentityInUse { .. }))) => {
                Err(ApiError::Unavailable { message: format!("node {node} refused this node: {refused}") })
            }
            Ok(other) => Err(ApiError::Internal { message: format!("node {node} answered a forward with {other:?}") }),
            Err(error) => Err(ApiError::Unavailable { message: format!("node {node}: {error}") }),
        }
    }
}

/// A page of a session's events from this node's replica, which may lag
/// behind the leader (used to inspect one replica).
fn read_replica(
    group: &GroupHandle,
    session_id: SessionId,
    from_seq: u64,
    limit: u32,
) -> Result<ClientResponse, ApiError> {
    let info = group.state.session(session_id)?.ok_or_else(|| super::session::not_found(session_id))?;
    let from_seq = from_seq.max(1);
    let limit = limit.clamp(1, agentd_protocol::limits::EVENTS_PER_PAGE_MAX);
    let events = group.state.events(session_id, from_seq, limit)?;
    let next_seq = events.last().map(|event| event.seq + 1).unwrap_or(from_seq.min(info.last_seq + 1));
    Ok(ClientResponse::Events { events, next_seq })
}
