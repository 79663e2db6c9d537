//! The cluster's status: each node reports itself and the groups it hosts;
//! the node that receives the request asks every other node.

use std::collections::BTreeSet;
use std::time::Duration;

use agentd_protocol::api::{ClusterStatus, GroupStatus, NodeStatus};
use agentd_protocol::cluster::{ClusterRequest, ClusterResponse};
use agentd_protocol::limits::{CLOCK_CHECK_INTERVAL_MS, CLOCK_SKEW_WARN_MS};
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use openraft::async_runtime::watch::WatchReceiver;

use super::Service;

/// How long a node's own report may take to arrive.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

impl Service {
    /// This node's own report: one entry per hosted group.
    pub fn local_status(&self) -> NodeStatus {
        let groups = self.host().groups().iter().map(group_status).collect();
        NodeStatus {
            node_id: self.host().node_id(),
            addr: self.inner.advertise.clone(),
            reachable: true,
            groups,
            clock_ms: self.now_ms(),
            clock_skew_ms: Some(0),
            disk_free_bytes: self.host().space().free_bytes(),
            disk_floor_bytes: self.host().space().floor_bytes(),
            storage_full: self.host().space().is_full(),
        }
    }

    /// A peer's report, with its clock compared to this node's: the peer
    /// stamped its report somewhere between send and receive, so its skew is
    /// its stamp minus the midpoint (off by at most half the round trip).
    async fn peer_status(&self, node_id: u64, addr: String) -> NodeStatus {
        let sent_ms = self.now_ms();
        let answer = self.host().peers().call(&addr, ClusterRequest::NodeStatus, NODE_STATUS_TIMEOUT).await;
        let received_ms = self.now_ms();
        match answer {
            Ok(ClusterResponse::NodeStatus(mut status)) => {
                let midpoint = sent_ms / 2 + received_ms / 2;
                let skew = status.clock_ms as i64 - midpoint as i64;
                status.clock_skew_ms = Some(skew);
                metrics::gauge!("agentd_clock_skew_seconds", "node" => node_id.to_string()).set(skew as f64 / 1000.0);
                status
            }
            _ => NodeStatus {
                node_id,
                addr,
                reachable: false,
                groups: Vec::new(),
                clock_ms: 0,
                clock_skew_ms: None,
                disk_free_bytes: None,
                disk_floor_bytes: 0,
                storage_full: false,
            },
        }
    }

    /// Measures every peer's clock against this node's forever: a gauge per
    /// peer (`agentd_clock_skew_seconds`), and one log line when a peer's
    /// skew passes [`CLOCK_SKEW_WARN_MS`] and one when it comes back.
    pub async fn watch_clock_skew(self) {
        let mut skewed: BTreeSet<u64> = BTreeSet::new();
        loop {
            tokio::time::sleep(Duration::from_millis(CLOCK_CHECK_INTERVAL_MS)).await;
            let Ok(nodes) = self.metadata().and_then(|metadata| Ok(metadata.state.nodes()?)) else { continue };
            for (node_id, addr) in nodes {
                if node_id == self.host().node_id() {
                    continue;
                }
                let Some(skew) = self.peer_status(node_id, addr).await.clock_skew_ms else { continue };
                let past = skew.unsigned_abs() > CLOCK_SKEW_WARN_MS;
                if past && skewed.insert(node_id) {
                    tracing::warn!(peer = node_id, skew_ms = skew, "a peer's clock differs from this node's");
                } else if !past && skewed.remove(&node_id) {
                    tracing::info!(peer = node_id, skew_ms = skew, "a peer's clock agrees with this node's again");
                }
            }
        }
    }

    /// Every node's report; a node that does not answer in time is reported unreachable.
    pub(super) async fn gather_cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        let metadata = self.metadata()?;
        let (shards, replication_factor) = metadata.state.cluster_config()?.unwrap_or((0, 0));
        let mut nodes = Vec::new();
        for (node_id, addr) in metadata.state.nodes()? {
            if node_id == self.host().node_id() {
                nodes.push(self.local_status());
                continue;
            }
            nodes.push(self.peer_status(node_id, addr).await);
        }
        Ok(ClusterStatus { shards, replication_factor, nodes })
    }
}

fn group_status(group: &GroupHandle) -> GroupStatus {
    let metrics = group.raft.metrics().borrow_watched().clone();
    let last_log_index = metrics.last_log_index;
    let replica_lag = metrics
        .replication
        .as_ref()
        .map(|replication| {
            replication
                .iter()
                .map(|(node, matched)| {
                    let matched = matched.as_ref().map(|log_id| log_id.index).unwrap_or(0);
                    (*node, last_log_index.map(|last| last.saturating_sub(matched)))
                })
                .collect()
        })
        .unwrap_or_default();
    let membership = metrics.membership_config.membership();
    GroupStatus {
        group: group.group,
        role: format!("{:?}", metrics.state),
        term: metrics.current_term,
        leader: metrics.current_leader,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        last_log_index,
        last_applied_index: metrics.last_applied.as_ref().map(|log_id| log_id.index),
        snapshot_index: metrics.snapshot.as_ref().map(|log_id| log_id.index),
        purged_index: metrics.purged.as_ref().map(|log_id| log_id.index),
        replica_lag,
    }
}
