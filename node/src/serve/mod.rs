//! The node's QUIC endpoint: one UDP port, three ALPNs. Client calls and
//! the join exchange need no client certificate; cluster traffic requires a
//! certificate signed by the cluster CA. Each stream carries one request
//! frame; bad input gets a typed error frame and the stream is closed.
//!
//! - `client.rs`: ALPN `agentd/1`, a thin adapter over [`crate::service::Service`];
//! - `cluster.rs`: ALPN `agentd-cluster/1`, Raft RPCs, forwarded requests, node reports;
//! - `join.rs`: ALPN `agentd-join/1`, a new node trades the join token for a certificate;
//! - `gate.rs`: caps on connections, a QUIC Retry under a handshake flood.

mod client;
mod cluster;
mod gate;
mod join;
mod stream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentd_protocol::{CLIENT_ALPN, CLUSTER_ALPN, JOIN_ALPN};
use agentd_transport::tls::{peer_node_id, ClusterCa};

use self::gate::{Gate, Verdict};
use crate::service::Service;
use crate::vault::SecretsKey;

/// Application close codes the endpoint uses (1 and 2: no node certificate,
/// unknown ALPN).
const CLOSE_TOO_MANY: u32 = 3;
const CLOSE_IDLE: u32 = 4;

/// What the endpoint needs besides the service: the material to admit nodes.
pub struct Admission {
    pub ca: ClusterCa,
    /// The secret half of the join token.
    pub secret: String,
    pub secrets_key: Arc<SecretsKey>,
}

/// Accepts connections until the endpoint closes, each served on its own
/// task, within the caps of [`gate`]. A client connection with no open
/// stream for `client_idle` is closed.
pub async fn serve(endpoint: quinn::Endpoint, service: Service, admission: Arc<Admission>, client_idle: Duration) {
    let gate = Arc::new(Gate::default());
    while let Some(incoming) = endpoint.accept().await {
        let ticket = match gate.incoming(incoming.remote_address_validated()) {
            Verdict::Accept(ticket) => ticket,
            Verdict::Retry => {
                // Only fails for an already validated address, which is never asked.
                let _ = incoming.retry();
                continue;
            }
            Verdict::Refuse => {
                incoming.refuse();
                continue;
            }
        };
        let (service, admission, gate) = (service.clone(), admission.clone(), gate.clone());
        tokio::spawn(async move {
            let _ticket = ticket;
            match incoming.await {
                Ok(connection) => serve_connection(connection, service, admission, &gate, client_idle).await,
                Err(error) => tracing::debug!(%error, "handshake failed"),
            }
        });
    }
}

async fn serve_connection(
    connection: quinn::Connection,
    service: Service,
    admission: Arc<Admission>,
    gate: &Arc<Gate>,
    client_idle: Duration,
) {
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match alpn.as_deref() {
        Some(CLIENT_ALPN) => {
            let Some(_ticket) = gate.client(connection.remote_address().ip()) else {
                connection.close(CLOSE_TOO_MANY.into(), b"too many client connections (from this address or in all)");
                return;
            };
            let handler = move |send, recv| client::serve(service.clone(), send, recv);
            accept_streams(connection, Some(client_idle), handler).await
        }
        Some(CLUSTER_ALPN) => {
            let Some(peer) = peer_node_id(&connection) else {
                connection.close(1u32.into(), b"cluster traffic requires a node certificate");
                return;
            };
            let dialer = Arc::new(cluster::Dialer::new(peer));
            let handler = move |send, recv| cluster::serve(service.clone(), dialer.clone(), send, recv);
            accept_streams(connection, None, handler).await
        }
        Some(JOIN_ALPN) => {
            let handler = move |send, recv| join::serve(service.clone(), admission.clone(), send, recv);
            accept_streams(connection, Some(client_idle), handler).await
        }
        _ => connection.close(2u32.into(), b"unknown ALPN"),
    }
}

/// Serves each stream of `connection` on its own task. With `idle`, the
/// connection is closed once it has had no open stream for that long.
async fn accept_streams<F, Fut>(connection: quinn::Connection, idle: Option<Duration>, handler: F)
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = match idle {
            None => connection.accept_bi().await,
            Some(idle) => loop {
                match tokio::time::timeout(idle, connection.accept_bi()).await {
                    Ok(accepted) => break accepted,
                    Err(_) if open.load(Ordering::Acquire) > 0 => continue,
                    Err(_) => {
                        connection.close(CLOSE_IDLE.into(), b"idle: no stream for too long");
                        return;
                    }
                }
            },
        };
        let Ok((send, recv)) = accepted else { return };
        open.fetch_add(1, Ordering::AcqRel);
        let (open, serve) = (open.clone(), handler(send, recv));
        tokio::spawn(async move {
            serve.await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
