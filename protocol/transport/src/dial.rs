//! Reaching a node by address: resolving `host:port`, and keeping one QUIC
//! connection per address that concurrent callers share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use agentd_protocol::sync::lock;

use crate::tls::SERVER_NAME;
use crate::Error;

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

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(host, _)| host).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One cached connection per address, dialled on first use and again after
/// it closes. Cheap to share behind an `Arc`.
pub struct Connections {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    // One slot per address; the slot's lock keeps concurrent callers from
    // dialling the same address twice.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
}

impl Connections {
    /// Connections from `endpoint`, each made with `client_config` and [`SERVER_NAME`].
    pub fn new(endpoint: quinn::Endpoint, client_config: quinn::ClientConfig) -> Self {
        Self { endpoint, client_config, slots: Mutex::new(HashMap::new()) }
    }

    /// The open connection to `addr`, dialling it if there is none.
    pub async fn get(&self, addr: &str) -> Result<quinn::Connection, Error> {
        let slot = lock(&self.slots).entry(addr.to_string()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|connection| connection.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let socket_addr = resolve(addr).await?;
        let network = |error: String| Error::Network(format!("{addr}: {error}"));
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), socket_addr, SERVER_NAME)
            .map_err(|error| network(error.to_string()))?;
        let connection = connecting.await.map_err(|error| network(error.to_string()))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the cached connection to `addr` if it is still `broken`, so the
    /// next call dials again.
    pub async fn forget(&self, addr: &str, broken: &quinn::Connection) {
        let slot = lock(&self.slots).get(addr).cloned();
        if let Some(slot) = slot {
            let mut slot = slot.lock().await;
            if slot.as_ref().is_some_and(|current| current.stable_id() == broken.stable_id()) {
                *slot = None;
            }
        }
    }
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
