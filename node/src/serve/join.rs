//! ALPN `agentd-join/1`: a new node trades the cluster's join token for a
//! certificate, the CA and the secrets key. Its admission into the cluster
//! follows over `agentd-cluster/1`, with that certificate.

use std::sync::Arc;

use agentd_protocol::cluster::{JoinRequest, JoinResponse};
use agentd_protocol::ids::GroupId;
use agentd_protocol::limits::JOIN_FRAME_BYTES_MAX;
use agentd_protocol::{ApiError, CLUSTER_PROTOCOL_VERSION};
use agentd_transport::dial::host_of;

use super::stream::{answer, read_request};
use super::Admission;
use crate::service::Service;

pub(super) async fn serve(
    service: Service,
    admission: Arc<Admission>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(request) =
        read_request::<JoinRequest, _>(&mut send, &mut recv, JOIN_FRAME_BYTES_MAX, JoinResponse::Error).await
    else {
        return;
    };
    let response = match admit_join(&service, &admission, &request) {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(node = request.node_id, %error, "join refused");
            JoinResponse::Error(error)
        }
    };
    answer(&mut send, &response, JOIN_FRAME_BYTES_MAX).await;
}

fn admit_join(service: &Service, admission: &Admission, request: &JoinRequest) -> Result<JoinResponse, ApiError> {
    if request.version != CLUSTER_PROTOCOL_VERSION {
        return Err(ApiError::UnsupportedVersion { requested: request.version, supported: CLUSTER_PROTOCOL_VERSION });
    }
    if !constant_time_eq(request.secret.as_bytes(), admission.secret.as_bytes()) {
        return Err(ApiError::PermissionDenied { message: "join token does not match this cluster".into() });
    }
    if request.node_id == 0 {
        return Err(ApiError::InvalidRequest { message: "node id must be at least 1".into() });
    }
    if let Some(metadata) = service.host().group(GroupId::Metadata) {
        if metadata.state.is_removed(request.node_id)? {
            return Err(ApiError::NodeRemoved { node: request.node_id });
        }
        // A member's id is never issued again: a node that joins under it has
        // lost the data directory it was admitted with (its log and its
        // votes), and must not come back as the same voter. A join cut off
        // before its admission resumes the admission instead, with the
        // certificate it saved, so it never asks here twice.
        let nodes = metadata.state.nodes()?;
        if let Some((_, addr)) = nodes.iter().find(|(node, _)| *node == request.node_id) {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "node id {} already belongs to the member at {addr}; a node that lost its data directory \
                     joins under a new id (and the old id is removed: agentd node drain, agentd node remove)",
                    request.node_id
                ),
            });
        }
    }
    let identity = admission
        .ca
        .issue_node(request.node_id, host_of(&request.addr))
        .map_err(|error| ApiError::Internal { message: error.to_string() })?;
    tracing::info!(node = request.node_id, addr = %request.addr, "issued certificate to joining node");
    Ok(JoinResponse::Accepted {
        ca_cert_pem: identity.ca_cert_pem,
        ca_key_pem: admission.ca.key_pem(),
        node_cert_pem: identity.cert_pem,
        node_key_pem: identity.key_pem,
        secrets_key_hex: admission.secrets_key.to_hex(),
    })
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
