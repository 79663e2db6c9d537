//! ALPN `agentd-cluster/1`: what nodes ask each other (mutual TLS).

use agentd_protocol::api::ClientResponse;
use std::sync::{Arc, OnceLock};

use agentd_protocol::cluster::{ClusterEnvelope, ClusterRequest, ClusterResponse};
use agentd_protocol::ids::NodeId;
use agentd_protocol::limits::{CLUSTER_FRAME_BYTES_MAX, RAFT_BATCH_CALLS_MAX};
use agentd_protocol::{ApiError, CLUSTER_PROTOCOL_VERSION};

use super::stream::{answer, read_request};
use crate::service::Service;

/// Who dialled a cluster connection: the node its certificate names, and
/// the process (incarnation) its hello named.
pub(super) struct Dialer {
    node_id: NodeId,
    incarnation: OnceLock<u64>,
}

impl Dialer {
    pub(super) fn new(node_id: NodeId) -> Self {
        Self { node_id, incarnation: OnceLock::new() }
    }
}

pub(super) async fn serve(
    service: Service,
    dialer: Arc<Dialer>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(envelope) =
        read_request::<ClusterEnvelope, _>(&mut send, &mut recv, CLUSTER_FRAME_BYTES_MAX, ClusterResponse::Error).await
    else {
        return;
    };
    let response = if envelope.version != CLUSTER_PROTOCOL_VERSION {
        ClusterResponse::Error(ApiError::UnsupportedVersion {
            requested: envelope.version,
            supported: CLUSTER_PROTOCOL_VERSION,
        })
    } else {
        match identify(&service, &dialer, &envelope.body) {
            Ok(Some(hello)) => hello,
            Ok(None) => respond(&service, envelope.body).await,
            Err(reason) if matches!(envelope.body, ClusterRequest::Hello { .. }) => {
                let identities = service.host().peers().identities();
                ClusterResponse::HelloRefused {
                    node_id: identities.node_id(),
                    incarnation: identities.incarnation(),
                    reason,
                }
            }
            Err(refusal) => ClusterResponse::Error(refusal),
        }
    };
    answer(&mut send, &response, CLUSTER_FRAME_BYTES_MAX).await;
}

/// One process per node id (see `agentd_raft::identity`): answers a hello,
/// or lets a request through only from the dialer's live process.
fn identify(service: &Service, dialer: &Dialer, body: &ClusterRequest) -> Result<Option<ClusterResponse>, ApiError> {
    let identities = service.host().peers().identities();
    // A removed node's certificate is still signed by the cluster CA; its
    // id is what is refused, on every connection and every request.
    if service.metadata().is_ok_and(|metadata| metadata.state.is_removed(dialer.node_id).unwrap_or(false)) {
        return Err(ApiError::NodeRemoved { node: dialer.node_id });
    }
    if let ClusterRequest::Hello { incarnation, addr } = body {
        let registered =
            service.metadata().ok().and_then(|metadata| metadata.state.nodes().ok()).and_then(|nodes| {
                nodes.into_iter().find(|(node_id, _)| *node_id == dialer.node_id).map(|(_, addr)| addr)
            });
        identities.check_hello(dialer.node_id, *incarnation, addr, registered.as_deref())?;
        let _ = dialer.incarnation.set(*incarnation);
        let hello = ClusterResponse::Hello { node_id: identities.node_id(), incarnation: identities.incarnation() };
        return Ok(Some(hello));
    }
    let Some(incarnation) = dialer.incarnation.get() else {
        return Err(ApiError::IdentityInUse {
            node: dialer.node_id,
            message: "a node-to-node connection must open with a hello".into(),
        });
    };
    identities.check_request(dialer.node_id, *incarnation)?;
    Ok(None)
}

async fn respond(service: &Service, request: ClusterRequest) -> ClusterResponse {
    match request {
        ClusterRequest::Raft { group, kind, payload, to } => service.host().handle_rpc(to, group, kind, &payload).await,
        ClusterRequest::RaftBatch(calls) if calls.len() > RAFT_BATCH_CALLS_MAX => {
            ClusterResponse::Error(ApiError::InvalidRequest {
                message: format!("{} Raft calls in one batch; the limit is {RAFT_BATCH_CALLS_MAX}", calls.len()),
            })
        }
        ClusterRequest::RaftBatch(calls) => ClusterResponse::RaftBatch(service.host().handle_rpc_batch(&calls).await),
        ClusterRequest::ForwardAs { caller, request } => {
            ClusterResponse::Forwarded(service.call_forwarded(&caller, request).await)
        }
        // A node of protocol version 1 forwards without the caller: nothing
        // says whose the request is, so it is not run.
        ClusterRequest::Forward(_) => ClusterResponse::Forwarded(ClientResponse::Error(ApiError::Unauthenticated {
            message: "a forwarded request must name its caller".into(),
        })),
        ClusterRequest::NodeStatus => ClusterResponse::NodeStatus(service.local_status()),
        ClusterRequest::GroupMembers { group } => {
            ClusterResponse::GroupMembers(service.host().committed_members(group))
        }
        ClusterRequest::AddNode { node_id, addr } => match service.admit(node_id, addr).await {
            Ok(()) => ClusterResponse::NodeAdded,
            Err(error) => ClusterResponse::Error(error),
        },
        // `identify` answers hellos before requests get here.
        ClusterRequest::Hello { .. } => {
            ClusterResponse::Error(ApiError::InvalidRequest { message: "a hello is answered by `identify`".into() })
        }
    }
}
