//! The node's QUIC endpoint: one UDP port, three ALPNs. Client calls and
//! the join exchange need no client certificate; cluster traffic requires a
//! certificate signed by the cluster CA.

use std::sync::Arc;
use std::time::Duration;

use agentd_protocol::api::{ClientRequest, ClientResponse, Request};
use agentd_protocol::cluster::{ClusterEnvelope, ClusterRequest, ClusterResponse, JoinRequest, JoinResponse};
use agentd_protocol::ids::{GroupId, SessionId};
use agentd_protocol::limits::{CLIENT_FRAME_BYTES_MAX, CLUSTER_FRAME_BYTES_MAX, RAFT_BATCH_CALLS_MAX};
use agentd_protocol::{ApiError, CLIENT_ALPN, CLUSTER_ALPN, JOIN_ALPN, PROTOCOL_VERSION};
use agentd_raft::tls::{peer_node_id, ClusterCa};
use agentd_raft::wire::{read_frame, write_frame};
use tokio::sync::broadcast::error::RecvError;

use crate::router::Router;

/// How long a peer may take to send its request frame.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest join request accepted.
const JOIN_FRAME_BYTES_MAX: usize = 64 * 1024;
/// Events per frame when a follower catches up from the store.
const FOLLOW_PAGE_EVENTS: u32 = 256;

/// What the server needs besides the router: the material to admit nodes.
pub struct Admission {
    pub ca: ClusterCa,
    pub secret: String,
    pub secrets_key: Arc<crate::vault::SecretsKey>,
}

pub async fn serve(endpoint: quinn::Endpoint, router: Router, admission: Arc<Admission>) {
    while let Some(incoming) = endpoint.accept().await {
        let router = router.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve_connection(connection, router, admission).await,
                Err(error) => tracing::debug!(%error, "handshake failed"),
            }
        });
    }
}

async fn serve_connection(connection: quinn::Connection, router: Router, admission: Arc<Admission>) {
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match alpn.as_deref() {
        Some(CLIENT_ALPN) => {
            accept_streams(connection, move |send, recv| serve_client_stream(router.clone(), send, recv)).await
        }
        Some(CLUSTER_ALPN) => {
            if peer_node_id(&connection).is_none() {
                connection.close(1u32.into(), b"cluster traffic requires a node certificate");
                return;
            }
            accept_streams(connection, move |send, recv| serve_cluster_stream(router.clone(), send, recv)).await
        }
        Some(JOIN_ALPN) => {
            let router = router.clone();
            accept_streams(connection, move |send, recv| {
                serve_join_stream(router.clone(), admission.clone(), send, recv)
            })
            .await
        }
        _ => connection.close(2u32.into(), b"unknown ALPN"),
    }
}

async fn accept_streams<F, Fut>(connection: quinn::Connection, handler: F)
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(handler(send, recv));
    }
}

/// Reads the one request frame of a stream. On bad input the stream gets a
/// typed error frame (when it can still be written) and is closed.
async fn read_request<T: serde::de::DeserializeOwned>(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    max_bytes: usize,
    to_error_frame: impl Fn(ApiError) -> Vec<u8>,
) -> Option<T> {
    let result = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<_, T>(recv, max_bytes)).await;
    let error = match result {
        Ok(Ok(Some(request))) => return Some(request),
        Ok(Ok(None)) => ApiError::Malformed { message: "stream ended before a request".into() },
        Ok(Err(agentd_raft::Error::Protocol(error))) => ApiError::from(error),
        Ok(Err(error)) => ApiError::Malformed { message: error.to_string() },
        Err(_) => ApiError::Malformed { message: format!("no request within {REQUEST_READ_TIMEOUT:?}") },
    };
    metrics::counter!("agentd_bad_requests_total").increment(1);
    tracing::debug!(%error, "bad request");
    let _ = recv.stop(0u32.into());
    let _ = tokio::io::AsyncWriteExt::write_all(send, &to_error_frame(error)).await;
    let _ = send.finish();
    None
}

fn client_error_frame(error: ApiError) -> Vec<u8> {
    agentd_protocol::frame::encode_frame(&ClientResponse::Error(error), CLIENT_FRAME_BYTES_MAX).unwrap_or_default()
}

fn cluster_error_frame(error: ApiError) -> Vec<u8> {
    agentd_protocol::frame::encode_frame(&ClusterResponse::Error(error), CLUSTER_FRAME_BYTES_MAX).unwrap_or_default()
}

async fn serve_client_stream(router: Router, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Some(request) = read_request::<Request>(&mut send, &mut recv, CLIENT_FRAME_BYTES_MAX, client_error_frame).await
    else {
        return;
    };
    let response = if request.version != PROTOCOL_VERSION {
        ClientResponse::Error(ApiError::UnsupportedVersion { requested: request.version, supported: PROTOCOL_VERSION })
    } else if let ClientRequest::FollowEvents { session_id, from_seq } = request.body {
        let span = tracing::debug_span!("follow", %session_id);
        let _entered = span.enter();
        follow(&router, session_id, from_seq, &mut send).await;
        return;
    } else {
        router.handle(request.body, false).await
    };
    if write_frame(&mut send, &response, CLIENT_FRAME_BYTES_MAX).await.is_ok() {
        let _ = send.finish();
    }
}

/// Streams a session's events from `from_seq` on, then each new event as it
/// is applied on this node's replica. Gaps (a lagging broadcast, a snapshot
/// install) are filled from the store, so the client sees every event once,
/// in order.
async fn follow(router: &Router, session_id: SessionId, from_seq: u64, send: &mut quinn::SendStream) {
    let result = async {
        let shard = router.shard_of(session_id)?;
        let group = router
            .host()
            .group(GroupId::Shard(shard))
            .ok_or_else(|| ApiError::NotReplica { group: shard.to_string() })?;
        let mut live = group.state.subscribe();
        let mut next = from_seq.max(1);
        let internal = |error: agentd_raft::Error| ApiError::Internal { message: error.to_string() };
        if group.state.session(session_id).map_err(internal)?.is_none() {
            return Err(ApiError::NotFound { what: format!("session {session_id}") });
        }
        loop {
            loop {
                let events = group.state.events(session_id, next, FOLLOW_PAGE_EVENTS).map_err(internal)?;
                let Some(last) = events.last() else { break };
                next = last.seq + 1;
                write_frame(send, &ClientResponse::Events { events, next_seq: next }, CLIENT_FRAME_BYTES_MAX)
                    .await
                    .map_err(|_| ApiError::Unavailable { message: "client went away".into() })?;
            }
            loop {
                let received = tokio::select! {
                    received = live.recv() => received,
                    _ = send.stopped() => return Ok(()),
                };
                match received {
                    Ok(event) if event.session_id != session_id || event.seq < next => continue,
                    Ok(event) if event.seq == next => {
                        next += 1;
                        let frame = ClientResponse::Events { events: vec![event], next_seq: next };
                        write_frame(send, &frame, CLIENT_FRAME_BYTES_MAX)
                            .await
                            .map_err(|_| ApiError::Unavailable { message: "client went away".into() })?;
                    }
                    // A gap or a lagging receiver: re-read from the store.
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => {
                        return Err(ApiError::Unavailable {
                            message: "shard closed on this node; resume elsewhere".into(),
                        })
                    }
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        let _ = write_frame(send, &ClientResponse::Error(error), CLIENT_FRAME_BYTES_MAX).await;
    }
    let _ = send.finish();
}

async fn serve_cluster_stream(router: Router, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Some(envelope) =
        read_request::<ClusterEnvelope>(&mut send, &mut recv, CLUSTER_FRAME_BYTES_MAX, cluster_error_frame).await
    else {
        return;
    };
    let response = if envelope.version != PROTOCOL_VERSION {
        ClusterResponse::Error(ApiError::UnsupportedVersion {
            requested: envelope.version,
            supported: PROTOCOL_VERSION,
        })
    } else {
        match envelope.body {
            ClusterRequest::Raft { group, kind, payload } => router.host().handle_rpc(group, kind, &payload).await,
            ClusterRequest::RaftBatch(calls) if calls.len() > RAFT_BATCH_CALLS_MAX => {
                ClusterResponse::Error(ApiError::InvalidRequest {
                    message: format!("{} Raft calls in one batch; the limit is {RAFT_BATCH_CALLS_MAX}", calls.len()),
                })
            }
            ClusterRequest::RaftBatch(calls) => {
                // The calls are for different groups: run them side by side.
                let host = router.host();
                let answers = calls.iter().map(|call| host.handle_rpc(call.group, call.kind, &call.payload));
                ClusterResponse::RaftBatch(futures_util::future::join_all(answers).await)
            }
            ClusterRequest::Forward(request) => ClusterResponse::Forwarded(router.handle(request, true).await),
            ClusterRequest::NodeStatus => ClusterResponse::NodeStatus(router.local_status()),
            ClusterRequest::AddNode { node_id, addr } => match router.admit(node_id, addr, true).await {
                Ok(()) => ClusterResponse::NodeAdded,
                Err(error) => ClusterResponse::Error(error),
            },
        }
    };
    if write_frame(&mut send, &response, CLUSTER_FRAME_BYTES_MAX).await.is_ok() {
        let _ = send.finish();
    }
}

async fn serve_join_stream(
    router: Router,
    admission: Arc<Admission>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let error_frame = |error| {
        agentd_protocol::frame::encode_frame(&JoinResponse::Error(error), JOIN_FRAME_BYTES_MAX).unwrap_or_default()
    };
    let Some(request) = read_request::<JoinRequest>(&mut send, &mut recv, JOIN_FRAME_BYTES_MAX, error_frame).await
    else {
        return;
    };
    let response = match admit_join(&router, &admission, &request) {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(node = request.node_id, %error, "join refused");
            JoinResponse::Error(error)
        }
    };
    if write_frame(&mut send, &response, JOIN_FRAME_BYTES_MAX).await.is_ok() {
        let _ = send.finish();
    }
}

fn admit_join(router: &Router, admission: &Admission, request: &JoinRequest) -> Result<JoinResponse, ApiError> {
    if request.version != PROTOCOL_VERSION {
        return Err(ApiError::UnsupportedVersion { requested: request.version, supported: PROTOCOL_VERSION });
    }
    if !constant_time_eq(request.secret.as_bytes(), admission.secret.as_bytes()) {
        return Err(ApiError::PermissionDenied { message: "join token does not match this cluster".into() });
    }
    if request.node_id == 0 {
        return Err(ApiError::InvalidRequest { message: "node id must be at least 1".into() });
    }
    if let Some(metadata) = router.host().group(GroupId::Metadata) {
        let nodes = metadata.state.nodes().map_err(|error| ApiError::Internal { message: error.to_string() })?;
        if let Some((_, addr)) = nodes.iter().find(|(node, addr)| *node == request.node_id && *addr != request.addr) {
            return Err(ApiError::InvalidRequest {
                message: format!("node id {} already belongs to the node at {addr}", request.node_id),
            });
        }
    }
    let identity = admission
        .ca
        .issue_node(request.node_id, agentd_raft::peers::host_of(&request.addr))
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
