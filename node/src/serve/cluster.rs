//! ALPN `agentd-cluster/1`: what nodes ask each other (mutual TLS).

use agentd_protocol::api::ClientResponse;
use agentd_protocol::cluster::{ClusterEnvelope, ClusterRequest, ClusterResponse};
use agentd_protocol::limits::{CLUSTER_FRAME_BYTES_MAX, RAFT_BATCH_CALLS_MAX};
use agentd_protocol::{ApiError, PROTOCOL_VERSION};

use super::stream::{answer, read_request};
use crate::service::Service;

pub(super) async fn serve(service: Service, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Some(envelope) =
        read_request::<ClusterEnvelope, _>(&mut send, &mut recv, CLUSTER_FRAME_BYTES_MAX, ClusterResponse::Error).await
    else {
        return;
    };
    let response = if envelope.version != PROTOCOL_VERSION {
        ClusterResponse::Error(ApiError::UnsupportedVersion {
            requested: envelope.version,
            supported: PROTOCOL_VERSION,
        })
    } else {
        respond(&service, envelope.body).await
    };
    answer(&mut send, &response, CLUSTER_FRAME_BYTES_MAX).await;
}

async fn respond(service: &Service, request: ClusterRequest) -> ClusterResponse {
    match request {
        ClusterRequest::Raft { group, kind, payload } => service.host().handle_rpc(group, kind, &payload).await,
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
        ClusterRequest::AddNode { node_id, addr } => match service.admit(node_id, addr).await {
            Ok(()) => ClusterResponse::NodeAdded,
            Err(error) => ClusterResponse::Error(error),
        },
    }
}
