//! The node's QUIC endpoint: one UDP port, three ALPNs. Client calls and
//! the join exchange need no client certificate; cluster traffic requires a
//! certificate signed by the cluster CA. Each stream carries one request
//! frame; bad input gets a typed error frame and the stream is closed.
//!
//! - `client.rs`: ALPN `agentd/1`, a thin adapter over [`crate::service::Service`];
//! - `cluster.rs`: ALPN `agentd-cluster/1`, Raft RPCs, forwarded requests, node reports;
//! - `join.rs`: ALPN `agentd-join/1`, a new node trades the join token for a certificate.

mod client;
mod cluster;
mod join;
mod stream;

use std::sync::Arc;

use agentd_protocol::{CLIENT_ALPN, CLUSTER_ALPN, JOIN_ALPN};
use agentd_transport::tls::{peer_node_id, ClusterCa};

use crate::service::Service;
use crate::vault::SecretsKey;

/// What the endpoint needs besides the service: the material to admit nodes.
pub struct Admission {
    pub ca: ClusterCa,
    /// The secret half of the join token.
    pub secret: String,
    pub secrets_key: Arc<SecretsKey>,
}

/// Accepts connections until the endpoint closes, each served on its own task.
pub async fn serve(endpoint: quinn::Endpoint, service: Service, admission: Arc<Admission>) {
    while let Some(incoming) = endpoint.accept().await {
        let service = service.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve_connection(connection, service, admission).await,
                Err(error) => tracing::debug!(%error, "handshake failed"),
            }
        });
    }
}

async fn serve_connection(connection: quinn::Connection, service: Service, admission: Arc<Admission>) {
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match alpn.as_deref() {
        Some(CLIENT_ALPN) => {
            accept_streams(connection, move |send, recv| client::serve(service.clone(), send, recv)).await
        }
        Some(CLUSTER_ALPN) => {
            if peer_node_id(&connection).is_none() {
                connection.close(1u32.into(), b"cluster traffic requires a node certificate");
                return;
            }
            accept_streams(connection, move |send, recv| cluster::serve(service.clone(), send, recv)).await
        }
        Some(JOIN_ALPN) => {
            accept_streams(connection, move |send, recv| join::serve(service.clone(), admission.clone(), send, recv))
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
