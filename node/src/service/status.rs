//! The cluster's status: each node reports itself and the groups it hosts;
//! the node that receives the request asks every other node.

use std::time::Duration;

use agentd_protocol::api::{ClusterStatus, GroupStatus, NodeStatus};
use agentd_protocol::cluster::{ClusterRequest, ClusterResponse};
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
        NodeStatus { node_id: self.host().node_id(), addr: self.inner.advertise.clone(), reachable: true, groups }
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
            let status = match self.host().peers().call(&addr, ClusterRequest::NodeStatus, NODE_STATUS_TIMEOUT).await {
                Ok(ClusterResponse::NodeStatus(status)) => status,
                _ => NodeStatus { node_id, addr, reachable: false, groups: Vec::new() },
            };
            nodes.push(status);
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
