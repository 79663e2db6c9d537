//! Operator requests about one group, run on its current leader: who leads
//! it (`TransferLeader`) and what it holds (`GroupStats`).

use std::time::Duration;

use agentd_protocol::api::{ClientResponse, GroupStats};
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

    /// Counts what `group`, which this node leads, holds.
    pub(super) async fn group_stats_here(
        &self,
        caller: &Caller,
        group: &GroupHandle,
    ) -> Result<ClientResponse, ApiError> {
        if !caller.is_admin() {
            return Err(ApiError::PermissionDenied { message: "reading a group's totals needs an admin key".into() });
        }
        // Synchronous reads, as every state query here is; an operator's
        // command, rare enough to run on the runtime.
        let (sessions, events, bytes) = group.state.stats()?;
        Ok(ClientResponse::GroupStats(GroupStats { group: group.group, sessions, events, bytes }))
    }
}
