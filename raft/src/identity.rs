//! One process per node id.
//!
//! A copy of a node's data directory started as a second process holds the
//! node's id and certificate; if the cluster took both, two processes would
//! vote and acknowledge as one voter, each with a different log. So every
//! process draws an incarnation when it starts, and every node-to-node
//! connection opens with a `Hello` naming it and the address the dialer
//! serves at. The receiving node refuses the hello when:
//! - the node is registered (in the metadata group) at another address: a
//!   copy started on another port or host;
//! - another incarnation of the node was heard from (a request on its
//!   connection, or an answer to this node's own call) within
//!   [`IDENTITY_LEASE_MS`]: the original is alive.
//!
//! Requests on a connection whose incarnation is not the node's live one
//! are refused too. A node whose hellos are refused as a duplicate for
//! [`IDENTITY_REFUSED_EXIT_MS`] stops itself with the reason. A restarted
//! node is refused at most until its previous process's lease runs out.
//!
//! What this does not catch: a copy that serves at the original's very
//! address (a cloned machine with the same name) towards a node that has
//! not heard from the original within the lease. Retiring a node id for good
//! is the operators' `node remove`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use agentd_protocol::ids::NodeId;
use agentd_protocol::limits::{IDENTITY_LEASE_MS, IDENTITY_REFUSED_EXIT_MS};
use agentd_protocol::sync::lock;
use agentd_protocol::ApiError;
use tokio::time::Instant;

/// This process's identity, and the live incarnation of every peer.
#[derive(Debug)]
pub struct Identities {
    node_id: NodeId,
    incarnation: u64,
    addr: String,
    peers: Mutex<BTreeMap<NodeId, Seen>>,
    /// The current streak of refusals of this process's hellos as a duplicate.
    refused: Mutex<Option<Refusals>>,
    /// Why this node must stop at once: the cluster removed it.
    removed: Mutex<Option<String>>,
}

/// Refusals of this process's hellos, none more than a lease apart.
#[derive(Debug)]
struct Refusals {
    first: Instant,
    last: Instant,
    reason: String,
}

/// The last incarnation of a peer heard from, and when.
#[derive(Debug, Clone, Copy)]
struct Seen {
    incarnation: u64,
    at: Instant,
}

impl Identities {
    pub fn new(node_id: NodeId, incarnation: u64, addr: String) -> Self {
        Self {
            node_id,
            incarnation,
            addr,
            peers: Mutex::default(),
            refused: Mutex::default(),
            removed: Mutex::default(),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The address this process serves at, as its hellos name it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Checks the hello of process `incarnation` of node `from`, serving at
    /// `addr`; `registered` is where the metadata group has the node (if it
    /// has it yet: a joining node is not registered). Accepted, it becomes
    /// the node's live incarnation.
    pub fn check_hello(
        &self,
        from: NodeId,
        incarnation: u64,
        addr: &str,
        registered: Option<&str>,
    ) -> Result<(), ApiError> {
        if let Some(registered) = registered.filter(|registered| *registered != addr) {
            return Err(ApiError::IdentityInUse {
                node: from,
                message: format!(
                    "node {from} is registered at {registered}, and this process serves at {addr}: it looks like a \
                     copy of node {from}'s data directory; start it with an empty --data-dir and a new --node-id"
                ),
            });
        }
        let mut peers = lock(&self.peers);
        let now = Instant::now();
        if let Some(seen) = peers.get(&from).filter(|seen| seen.incarnation != incarnation) {
            let ago = now.duration_since(seen.at);
            if ago < Duration::from_millis(IDENTITY_LEASE_MS) {
                return Err(ApiError::IdentityInUse {
                    node: from,
                    message: format!(
                        "another process of node {from} was heard from {} ms ago: two processes cannot be one \
                         node (a copy of its data directory?); a restarted node is let in once its previous \
                         process has been silent for {IDENTITY_LEASE_MS} ms",
                        ago.as_millis()
                    ),
                });
            }
        }
        peers.insert(from, Seen { incarnation, at: now });
        Ok(())
    }

    /// A request from process `incarnation` of node `from` (on a connection
    /// that said hello): refused unless it is the node's live process.
    pub fn check_request(&self, from: NodeId, incarnation: u64) -> Result<(), ApiError> {
        let mut peers = lock(&self.peers);
        match peers.get_mut(&from) {
            Some(seen) if seen.incarnation == incarnation => {
                seen.at = Instant::now();
                Ok(())
            }
            _ => Err(ApiError::IdentityInUse {
                node: from,
                message: format!("this connection's process is no longer node {from}'s live one"),
            }),
        }
    }

    /// An answer from process `incarnation` of node `from` to a call of ours.
    pub fn heard(&self, from: NodeId, incarnation: u64) {
        let mut peers = lock(&self.peers);
        let now = Instant::now();
        match peers.get_mut(&from) {
            Some(seen) if seen.incarnation == incarnation => seen.at = now,
            // The process at the node's address is the node: a restart.
            _ => {
                peers.insert(from, Seen { incarnation, at: now });
            }
        }
    }

    /// Notes that a peer refused this process's hello as a duplicate. One
    /// peer refusing is enough: a copy may be let in by a peer that has not
    /// heard from the original lately, never by all.
    pub fn hello_refused(&self, reason: &str) {
        let mut refused = lock(&self.refused);
        let now = Instant::now();
        match refused.as_mut() {
            Some(streak) if now.duration_since(streak.last) < Duration::from_millis(IDENTITY_LEASE_MS) => {
                streak.last = now;
                streak.reason = reason.to_string();
            }
            _ => {
                // A restart is refused for a moment too (until a peer hears
                // from it, or its previous process's lease runs out); only a
                // refusal that lasts is an error (`refused_for_good`).
                tracing::warn!(%reason, "a peer refused this process's hello as node {}; retrying", self.node_id);
                *refused = Some(Refusals { first: now, last: now, reason: reason.to_string() });
            }
        }
    }

    /// Notes that a peer refused this node as removed from the cluster.
    /// One peer is enough, at once: a removal is never undone, so no peer
    /// says it by mistake.
    pub fn removed(&self, reason: &str) {
        let mut removed = lock(&self.removed);
        if removed.is_none() {
            tracing::error!(%reason, "the cluster refused this node as removed");
            *removed = Some(reason.to_string());
        }
    }

    /// Why this process must stop: the cluster removed its node, or its
    /// hellos have been refused as a duplicate, never more than a lease
    /// apart, for [`IDENTITY_REFUSED_EXIT_MS`].
    pub fn refused_for_good(&self) -> Option<String> {
        if let Some(reason) = lock(&self.removed).clone() {
            return Some(reason);
        }
        let refused = lock(&self.refused);
        let streak = refused.as_ref()?;
        let lasting = streak.first.elapsed() >= Duration::from_millis(IDENTITY_REFUSED_EXIT_MS);
        let current = streak.last.elapsed() < Duration::from_millis(IDENTITY_LEASE_MS);
        (lasting && current).then(|| {
            format!(
                "the cluster has refused this process as node {} for {} s: {}",
                self.node_id,
                streak.first.elapsed().as_secs(),
                streak.reason
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_live_process_per_node() {
        let identities = Identities::new(1, 100, "a1".into());
        // A node seen at its registered address is let in; a copy elsewhere is not.
        assert_eq!(identities.check_hello(2, 7, "a2", Some("a2")), Ok(()));
        let elsewhere = identities.check_hello(2, 8, "b2", Some("a2"));
        assert!(matches!(elsewhere, Err(ApiError::IdentityInUse { node: 2, .. })), "{elsewhere:?}");
        // A second process at the same address, while the first is heard from.
        tokio::time::advance(Duration::from_millis(IDENTITY_LEASE_MS - 1)).await;
        assert!(identities.check_hello(2, 8, "a2", Some("a2")).is_err());
        assert_eq!(identities.check_request(2, 7), Ok(()), "the first keeps being served");
        assert!(identities.check_request(2, 8).is_err());
        // Once the first has been silent for the lease, the next (a restart) is the node.
        tokio::time::advance(Duration::from_millis(IDENTITY_LEASE_MS)).await;
        assert_eq!(identities.check_hello(2, 8, "a2", Some("a2")), Ok(()));
        assert!(identities.check_request(2, 7).is_err(), "the old process's connection is refused");
        // An answer from the node's address names its live process.
        identities.heard(2, 9);
        assert!(identities.check_request(2, 8).is_err());
        assert_eq!(identities.check_request(2, 9), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_refused_long_enough_must_stop() {
        let identities = Identities::new(1, 100, "a1".into());
        let step = Duration::from_millis(IDENTITY_LEASE_MS / 2);
        // A restart refused for a while, then let in: the streak lapses.
        identities.hello_refused("restart");
        tokio::time::advance(step).await;
        identities.hello_refused("restart");
        tokio::time::advance(Duration::from_millis(IDENTITY_REFUSED_EXIT_MS)).await;
        assert_eq!(identities.refused_for_good(), None, "no refusal for a lease ends the streak");
        // A copy refused again and again, never a lease apart, must stop.
        let mut waited = Duration::ZERO;
        while waited < Duration::from_millis(IDENTITY_REFUSED_EXIT_MS) {
            assert_eq!(identities.refused_for_good(), None);
            identities.hello_refused("copy");
            tokio::time::advance(step).await;
            waited += step;
        }
        identities.hello_refused("copy");
        assert!(
            identities.refused_for_good().is_some_and(|why| why.contains("copy")),
            "{:?}",
            identities.refused_for_good()
        );
    }

    #[test]
    fn a_removed_node_must_stop_at_once() {
        let identities = Identities::new(1, 100, "a1".into());
        assert_eq!(identities.refused_for_good(), None);
        identities.removed("node 1 was removed from the cluster");
        identities.removed("a second refusal keeps the first reason");
        assert_eq!(identities.refused_for_good().as_deref(), Some("node 1 was removed from the cluster"));
    }
}
