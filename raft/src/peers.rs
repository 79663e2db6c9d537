//! Outgoing node-to-node calls over QUIC: one cached connection per peer
//! address, one bidirectional stream per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use agentd_protocol::cluster::{ClusterEnvelope, ClusterRequest, ClusterResponse, RaftCall};
use agentd_protocol::ids::NodeId;
use agentd_protocol::limits::{
    CLUSTER_FRAME_BYTES_MAX, RAFT_BATCHES_IN_FLIGHT_MAX, RAFT_BATCH_CALLS_MAX, RAFT_QUEUE_DEPTH_MAX,
};
use agentd_protocol::PROTOCOL_VERSION;
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

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
    // One queue of Raft RPCs per peer address, drained by a batching task.
    raft_queues: std::sync::Mutex<HashMap<String, mpsc::Sender<PendingCall>>>,
}

/// A Raft RPC waiting to join a batch.
struct PendingCall {
    call: RaftCall,
    timeout: Duration,
    reply: oneshot::Sender<Result<ClusterResponse, String>>,
}

impl Peers {
    pub fn new(local_node: NodeId, endpoint: quinn::Endpoint, client_config: quinn::ClientConfig) -> Self {
        Self {
            inner: Arc::new(PeersInner {
                local_node,
                endpoint,
                client_config,
                connections: std::sync::Mutex::new(HashMap::new()),
                raft_queues: std::sync::Mutex::new(HashMap::new()),
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

    /// Sends one Raft RPC to `addr`, batched with other groups' RPCs to the
    /// same peer when several are waiting.
    pub async fn call_raft(&self, addr: &str, call: RaftCall, timeout: Duration) -> Result<ClusterResponse, Error> {
        let queue = {
            let mut queues = self.inner.raft_queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queues
                .entry(addr.to_string())
                .or_insert_with(|| {
                    let (sender, receiver) = mpsc::channel(RAFT_QUEUE_DEPTH_MAX);
                    tokio::spawn(run_batcher(Arc::downgrade(&self.inner), addr.to_string(), receiver));
                    sender
                })
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        let pending = PendingCall { call, timeout, reply };
        let waited = tokio::time::timeout(timeout, async {
            queue.send(pending).await.map_err(|_| Error::Network(format!("queue to {addr} is closed")))?;
            answer.await.map_err(|_| Error::Network(format!("batch to {addr} was dropped")))?.map_err(Error::Network)
        });
        match waited.await {
            Ok(result) => result,
            Err(_) => Err(Error::Network(format!("Raft call to {addr} timed out after {timeout:?}"))),
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

/// Drains one peer's Raft queue: every RPC waiting when a batch slot frees
/// up goes out in one message. Exits when the `Peers` it serves is dropped.
async fn run_batcher(peers: Weak<PeersInner>, addr: String, mut queue: mpsc::Receiver<PendingCall>) {
    let in_flight = Arc::new(Semaphore::new(RAFT_BATCHES_IN_FLIGHT_MAX));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < RAFT_BATCH_CALLS_MAX {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let Some(inner) = peers.upgrade() else { return };
        let peers = Peers { inner };
        let addr = addr.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics::histogram!("agentd_raft_batch_calls").record(batch.len() as f64);
            let timeout = batch.iter().map(|pending| pending.timeout).max().unwrap_or_default();
            let (calls, replies): (Vec<RaftCall>, Vec<_>) =
                batch.into_iter().map(|pending| (pending.call, pending.reply)).unzip();
            let expected = calls.len();
            let request = if expected == 1 {
                let RaftCall { group, kind, payload } = calls.into_iter().next().expect("one call");
                ClusterRequest::Raft { group, kind, payload }
            } else {
                ClusterRequest::RaftBatch(calls)
            };
            let answers: Vec<Result<ClusterResponse, String>> = match peers.call(&addr, request, timeout).await {
                Ok(ClusterResponse::RaftBatch(responses)) if responses.len() == expected => {
                    responses.into_iter().map(Ok).collect()
                }
                Ok(response) if expected == 1 => vec![Ok(response)],
                Ok(other) => vec![Err(format!("{addr} answered a batch with {other:?}")); expected],
                Err(error) => vec![Err(error.to_string()); expected],
            };
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have timed out and gone; nothing to tell it.
                let _ = reply.send(answer);
            }
        });
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
