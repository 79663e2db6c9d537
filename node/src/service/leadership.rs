//! Operator requests about who leads a group: `TransferLeader`, run on the
//! group's current leader.

use std::time::Duration;

use agentd_protocol::api::ClientResponse;
use agentd_protocol::ids::NodeId;
use agentd_protocol::tenancy::Caller;
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use openraft::async_runtime::watch::WatchReceiver;

use super::Service;

/// How long the new leader has to take over before the request fails.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

impl Service {
    /// Hands the leadership of `group`, which this node leads, to voter
    /// `to`, and answers once `to` leads (or already did).
    pub(super) async fn transfer_leader_here(
        &self,
        caller: &Caller,
        group: &GroupHandle,
        to: NodeId,
    ) -> Result<ClientResponse, ApiError> {
        if !caller.is_admin() {
            return Err(ApiError::PermissionDenied { message: "moving leaderships needs an admin key".into() });
        }
        let metrics = group.raft.metrics().borrow_watched().clone();
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        if !voters.contains(&to) {
            return Err(ApiError::InvalidRequest {
                message: format!("node {to} is not a voter of {} (its voters: {voters:?})", group.group),
            });
        }
        let transferred =
            |leader: NodeId, term: u64| ClientResponse::LeaderTransferred { group: group.group, leader, term };
        if to == self.host().node_id() {
            return Ok(transferred(to, metrics.current_term));
        }
        tracing::info!(group = %group.group, to, "handing off leadership on an operator's request");
        group
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|fatal| ApiError::Internal { message: format!("{} stopped: {fatal}", group.group) })?;
        let taken = group
            .raft
            .wait(Some(TRANSFER_TIMEOUT))
            .metrics(|metrics| metrics.current_leader == Some(to), "the new leader to take over")
            .await;
        match taken {
            Ok(metrics) => Ok(transferred(to, metrics.current_term)),
            Err(_) => {
                let now = group.raft.metrics().borrow_watched().current_leader;
                Err(ApiError::Unavailable {
                    message: format!(
                        "node {to} did not take the leadership of {} within {}s (leader now: {}); \
                         is it up, caught up, and is its disk not full?",
                        group.group,
                        TRANSFER_TIMEOUT.as_secs(),
                        now.map_or_else(|| "none".to_string(), |node| format!("node {node}"))
                    ),
                })
            }
        }
    }
}
