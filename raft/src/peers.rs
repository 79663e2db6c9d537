//! Outgoing node-to-node calls over QUIC: one cached connection per peer
//! address, one bidirectional stream per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentd_protocol::cluster::{ClusterEnvelope, ClusterRequest, ClusterResponse};
use agentd_protocol::ids::NodeId;
use agentd_protocol::limits::CLUSTER_FRAME_BYTES_MAX;
use agentd_protocol::PROTOCOL_VERSION;
use tokio::sync::Mutex;

use crate::wire::{read_frame, write_frame};
use crate::Error;

/// A cheap-to-clone handle to this node's outgoing cluster connections.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    local_node: NodeId,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    // One slot per address; the slot's lock keeps concurrent callers from
    // dialling the same peer twice.
    connections: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<quinn::Connection>>>>>,
}

impl Peers {
    pub fn new(local_node: NodeId, endpoint: quinn::Endpoint, client_config: quinn::ClientConfig) -> Self {
        Self {
            inner: Arc::new(PeersInner {
                local_node,
                endpoint,
                client_config,
                connections: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn local_node(&self) -> NodeId {
        self.inner.local_node
    }

    /// Sends one request to the node at `addr` and waits for its answer,
    /// for at most `timeout` (dialling included).
    pub async fn call(&self, addr: &str, body: ClusterRequest, timeout: Duration) -> Result<ClusterResponse, Error> {
        let envelope = ClusterEnvelope { version: PROTOCOL_VERSION, from: self.inner.local_node, body };
        match tokio::time::timeout(timeout, self.call_inner(addr, &envelope)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Network(format!("call to {addr} timed out after {timeout:?}"))),
        }
    }

    async fn call_inner(&self, addr: &str, envelope: &ClusterEnvelope) -> Result<ClusterResponse, Error> {
        let connection = self.connection(addr).await?;
        let result = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(network_error(addr))?;
            write_frame(&mut send, envelope, CLUSTER_FRAME_BYTES_MAX).await?;
            send.finish().map_err(network_error(addr))?;
            read_frame::<_, ClusterResponse>(&mut recv, CLUSTER_FRAME_BYTES_MAX)
                .await?
                .ok_or_else(|| Error::Network(format!("{addr} closed the stream without answering")))
        }
        .await;
        if result.is_err() && connection.close_reason().is_some() {
            self.forget(addr, &connection).await;
        }
        result
    }

    async fn connection(&self, addr: &str) -> Result<quinn::Connection, Error> {
        let slot = {
            let mut connections = self.inner.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            connections.entry(addr.to_string()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref() {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let socket_addr = resolve(addr).await?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), socket_addr, crate::tls::SERVER_NAME)
            .map_err(network_error(addr))?;
        let connection = connecting.await.map_err(network_error(addr))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn forget(&self, addr: &str, broken: &quinn::Connection) {
        let slot = {
            let connections = self.inner.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            connections.get(addr).cloned()
        };
        if let Some(slot) = slot {
            let mut slot = slot.lock().await;
            if slot.as_ref().is_some_and(|current| current.stable_id() == broken.stable_id()) {
                *slot = None;
            }
        }
    }
}

/// Resolves `host:port`, preferring a literal socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, Error> {
    if let Ok(socket_addr) = addr.parse() {
        return Ok(socket_addr);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|error| Error::Network(format!("cannot resolve {addr}: {error}")))?
        .next()
        .ok_or_else(|| Error::Network(format!("{addr} resolves to no address")))
}

fn network_error<E: std::fmt::Display>(addr: &str) -> impl Fn(E) -> Error + '_ {
    move |error| Error::Network(format!("{addr}: {error}"))
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(host, _)| host).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:7101"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7101"), "::1");
        assert_eq!(host_of("node-1.example:7101"), "node-1.example");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
