//! Outgoing node-to-node calls over QUIC: one cached connection per peer
//! address (`agentd_transport::dial::Connections`), one bidirectional
//! stream per call, and the batcher that puts the Raft RPCs of many groups
//! bound for one peer into one message.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use agentd_protocol::cluster::{ClusterEnvelope, ClusterRequest, ClusterResponse, RaftCall};
use agentd_protocol::ids::NodeId;
use agentd_protocol::limits::{
    CLUSTER_FRAME_BYTES_MAX, RAFT_BATCHES_IN_FLIGHT_MAX, RAFT_BATCH_CALLS_MAX, RAFT_QUEUE_DEPTH_MAX,
};
use agentd_protocol::sync::lock;
use agentd_protocol::{ApiError, CLUSTER_PROTOCOL_VERSION};
use agentd_transport::dial::Connections;
use agentd_transport::wire::{read_frame, write_frame};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::identity::Identities;
use crate::peer_health::PeerHealth;
use crate::Error;

/// A cheap-to-clone handle to this node's outgoing cluster connections.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    local_node: NodeId,
    connections: Connections,
    identities: Arc<Identities>,
    /// By peer address: the connection that said hello there (its
    /// `stable_id`, which quinn may give a later connection again), and the
    /// node and process that answered. One entry per address, so closed
    /// connections leave nothing behind.
    greeted: std::sync::Mutex<HashMap<String, Greeted>>,
    health: PeerHealth,
    // One queue of Raft RPCs per peer address, drained by a batching task.
    raft_queues: std::sync::Mutex<HashMap<String, mpsc::Sender<PendingCall>>>,
}

/// A connection's answered hello.
#[derive(Debug, Clone, Copy)]
struct Greeted {
    connection: usize,
    node_id: NodeId,
    incarnation: u64,
}

/// A Raft RPC waiting to join a batch.
struct PendingCall {
    call: RaftCall,
    timeout: Duration,
    reply: oneshot::Sender<Result<ClusterResponse, String>>,
}

impl Peers {
    /// Calls as the process `identities` names.
    pub fn new(identities: Arc<Identities>, endpoint: quinn::Endpoint, client_config: quinn::ClientConfig) -> Self {
        Self {
            inner: Arc::new(PeersInner {
                local_node: identities.node_id(),
                connections: Connections::new(endpoint, client_config),
                identities,
                greeted: std::sync::Mutex::new(HashMap::new()),
                health: PeerHealth::default(),
                raft_queues: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn local_node(&self) -> NodeId {
        self.inner.local_node
    }

    /// This process's identity and the live process of every peer.
    pub fn identities(&self) -> &Identities {
        &self.inner.identities
    }

    /// Sends one request to the node at `addr` and waits for its answer,
    /// for at most `timeout` (dialling included).
    pub async fn call(&self, addr: &str, body: ClusterRequest, timeout: Duration) -> Result<ClusterResponse, Error> {
        let envelope = ClusterEnvelope { version: CLUSTER_PROTOCOL_VERSION, from: self.inner.local_node, body };
        match tokio::time::timeout(timeout, self.call_inner(addr, &envelope)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Network(format!("call to {addr} timed out after {timeout:?}"))),
        }
    }

    /// Sends one Raft RPC to `addr`, batched with other groups' RPCs to the
    /// same peer when several are waiting.
    pub async fn call_raft(&self, addr: &str, call: RaftCall, timeout: Duration) -> Result<ClusterResponse, Error> {
        let queue = {
            lock(&self.inner.raft_queues)
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
        if let Err(wait) = self.inner.health.check(addr) {
            return Err(Error::Network(format!("{addr} is unreachable; next attempt in {wait:?}")));
        }
        let result = self.exchange(addr, envelope).await;
        match &result {
            Ok(_) => self.inner.health.answered(addr),
            Err(
                error @ (Error::Network(_)
                | Error::Transport(agentd_transport::Error::Network(_) | agentd_transport::Error::Io(_))),
            ) => self.inner.health.failed(addr, &error.to_string()),
            Err(_) => {}
        }
        result
    }

    /// One request and its answer on a new stream of the cached connection,
    /// which says hello first if it has not yet.
    async fn exchange(&self, addr: &str, envelope: &ClusterEnvelope) -> Result<ClusterResponse, Error> {
        let connection = self.inner.connections.get(addr).await?;
        let result = async {
            let peer = match self.greeted(addr, &connection) {
                Some(peer) => peer,
                None => self.greet(addr, &connection).await?,
            };
            let response = one_exchange(addr, &connection, envelope).await?;
            if let ClusterResponse::Error(removed @ ApiError::NodeRemoved { .. }) = &response {
                self.inner.identities.removed(&removed.to_string());
                connection.close(0u32.into(), b"node removed");
            } else if let ClusterResponse::Error(ApiError::IdentityInUse { .. }) = &response {
                // The peer took another process as this node: say hello
                // again on a new connection.
                connection.close(0u32.into(), b"identity refused");
            } else {
                self.inner.identities.heard(peer.0, peer.1);
            }
            Ok(response)
        }
        .await;
        if connection.close_reason().is_some() {
            lock(&self.inner.greeted).remove(addr);
            self.inner.connections.forget(addr, &connection).await;
        }
        result
    }

    fn greeted(&self, addr: &str, connection: &quinn::Connection) -> Option<(NodeId, u64)> {
        let greeted = lock(&self.inner.greeted).get(addr).copied()?;
        (greeted.connection == connection.stable_id()).then_some((greeted.node_id, greeted.incarnation))
    }

    /// Says hello on a new connection: which process of this node calls
    /// (see `identity.rs`). Answers the node and process at the other end.
    async fn greet(&self, addr: &str, connection: &quinn::Connection) -> Result<(NodeId, u64), Error> {
        let identities = &self.inner.identities;
        let body = ClusterRequest::Hello { incarnation: identities.incarnation(), addr: identities.addr().to_string() };
        let hello = ClusterEnvelope { version: CLUSTER_PROTOCOL_VERSION, from: self.inner.local_node, body };
        match one_exchange(addr, connection, &hello).await? {
            ClusterResponse::Hello { node_id, incarnation } => {
                identities.heard(node_id, incarnation);
                let greeted = Greeted { connection: connection.stable_id(), node_id, incarnation };
                lock(&self.inner.greeted).insert(addr.to_string(), greeted);
                Ok((node_id, incarnation))
            }
            ClusterResponse::HelloRefused { node_id, incarnation, reason } => {
                // The process at the node's address is the node, refusal or not.
                identities.heard(node_id, incarnation);
                match &reason {
                    ApiError::IdentityInUse { message, .. } => identities.hello_refused(message),
                    ApiError::NodeRemoved { .. } => identities.removed(&reason.to_string()),
                    _ => {}
                }
                connection.close(0u32.into(), b"hello refused");
                Err(Error::Refused(reason))
            }
            ClusterResponse::Error(error) => {
                connection.close(0u32.into(), b"hello refused");
                Err(Error::Refused(error))
            }
            other => Err(Error::Network(format!("{addr} answered a hello with {other:?}"))),
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
                let RaftCall { group, kind, payload, to } = calls.into_iter().next().expect("one call");
                ClusterRequest::Raft { group, kind, payload, to }
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

/// One request and its answer on a new stream of `connection`.
async fn one_exchange(
    addr: &str,
    connection: &quinn::Connection,
    envelope: &ClusterEnvelope,
) -> Result<ClusterResponse, Error> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(network_error(addr))?;
    write_frame(&mut send, envelope, CLUSTER_FRAME_BYTES_MAX).await?;
    send.finish().map_err(network_error(addr))?;
    read_frame::<_, ClusterResponse>(&mut recv, CLUSTER_FRAME_BYTES_MAX)
        .await?
        .ok_or_else(|| Error::Network(format!("{addr} closed the stream without answering")))
}

fn network_error<E: std::fmt::Display>(addr: &str) -> impl Fn(E) -> Error + '_ {
    move |error| Error::Network(format!("{addr}: {error}"))
}
