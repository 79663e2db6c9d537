//! Shard placement: where each group's replicas should be, and the
//! reconciler that moves every group this node leads towards that.
//!
//! Moving a replica is "add learner, catch up, change voters" — the
//! decisions are pure functions (tested below); [`reconcile`] carries them out.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentd_protocol::ids::{GroupId, NodeId, ShardId};
use agentd_protocol::limits::METADATA_VOTERS_MAX;
use agentd_protocol::ApiError;
use futures_util::stream::{self, StreamExt};

use crate::host::{GroupHandle, RaftHost};
use crate::propose::propose;
use agentd_protocol::command::Command;

use crate::types::NodeInfo;
use crate::Error;

/// How long one group's reconciliation step may take before it is retried
/// on the next pass (a learner may need a snapshot to catch up).
const RECONCILE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many groups are reconciled at once.
const RECONCILE_CONCURRENCY: usize = 8;

/// One step towards a desired voter set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipStep {
    AddLearner(NodeId),
    SetVoters(BTreeSet<NodeId>),
}

/// The next step for a group, or `None` when it already matches.
pub fn next_step(
    desired: &BTreeSet<NodeId>,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
) -> Option<MembershipStep> {
    if desired.is_empty() {
        return None;
    }
    if let Some(missing) = desired.iter().find(|node| !voters.contains(node) && !learners.contains(node)) {
        return Some(MembershipStep::AddLearner(*missing));
    }
    if desired != voters {
        return Some(MembershipStep::SetVoters(desired.clone()));
    }
    None
}

/// The shards whose replica sets change when `node` joins: every shard with
/// fewer than `replication_factor` replicas gains the node.
pub fn place_new_node(
    placements: &[(ShardId, Vec<NodeId>)],
    node: NodeId,
    replication_factor: u32,
) -> Vec<(ShardId, Vec<NodeId>)> {
    placements
        .iter()
        .filter(|(_, replicas)| replicas.len() < replication_factor as usize && !replicas.contains(&node))
        .map(|(shard, replicas)| {
            let mut replicas = replicas.clone();
            replicas.push(node);
            (*shard, replicas)
        })
        .collect()
}

/// The voters the metadata group should have: the lowest node ids, at most
/// [`METADATA_VOTERS_MAX`]; every other node follows it as a learner.
pub fn metadata_voters(nodes: &[(NodeId, String)]) -> BTreeSet<NodeId> {
    nodes.iter().map(|(node, _)| *node).take(METADATA_VOTERS_MAX).collect()
}

/// Admits a node: records it in the metadata group and gives it replicas.
/// Must run on the metadata leader. Safe to repeat.
pub async fn admit_node(metadata: &GroupHandle, node_id: NodeId, addr: String) -> Result<(), ApiError> {
    propose(metadata, Command::AddNode { node_id, addr }).await?;
    let (_, replication_factor) = metadata
        .state
        .cluster_config()
        .map_err(internal)?
        .ok_or_else(|| ApiError::Unavailable { message: "cluster is not initialised yet".into() })?;
    let placements = metadata.state.placements().map_err(internal)?;
    for (shard, replicas) in place_new_node(&placements, node_id, replication_factor) {
        propose(metadata, Command::SetPlacement { shard, replicas }).await?;
    }
    Ok(())
}

/// One pass: opens the shards placed on this node, initialises shards that
/// start here, and moves every group this node leads towards its placement.
pub async fn reconcile(host: &RaftHost) -> Result<(), Error> {
    let Some(metadata) = host.group(GroupId::Metadata) else {
        return Ok(());
    };
    let nodes = metadata.state.nodes()?;
    let addresses: BTreeMap<NodeId, String> = nodes.iter().cloned().collect();
    let placements = metadata.state.placements()?;

    for (shard, replicas) in &placements {
        if !replicas.contains(&host.node_id()) {
            continue;
        }
        let handle = host.open_group(GroupId::Shard(*shard)).await?;
        // A shard placed on this node alone is new: this node starts it.
        if replicas.as_slice() == [host.node_id()] && !handle.raft.is_initialized().await.map_err(fatal)? {
            let addr = addresses.get(&host.node_id()).cloned().unwrap_or_default();
            let members = BTreeMap::from([(host.node_id(), NodeInfo { addr })]);
            if let Err(error) = handle.raft.initialize(members).await {
                tracing::warn!(%shard, %error, "shard initialisation failed");
            }
        }
    }

    let mut work: Vec<(GroupHandle, BTreeSet<NodeId>)> = Vec::new();
    work.push((metadata.clone(), metadata_voters(&nodes)));
    for (shard, replicas) in placements {
        if let Some(handle) = host.group(GroupId::Shard(shard)) {
            work.push((handle, replicas.into_iter().collect()));
        }
    }
    let learners_for_metadata: BTreeSet<NodeId> = addresses.keys().copied().collect();
    stream::iter(work)
        .for_each_concurrent(RECONCILE_CONCURRENCY, |(handle, desired)| {
            let addresses = &addresses;
            let learners_for_metadata = &learners_for_metadata;
            async move {
                if !handle.raft.is_leader() {
                    return;
                }
                let extra_learners =
                    if handle.group == GroupId::Metadata { learners_for_metadata.clone() } else { BTreeSet::new() };
                let step = tokio::time::timeout(
                    RECONCILE_STEP_TIMEOUT,
                    reconcile_group(&handle, &desired, &extra_learners, addresses),
                )
                .await;
                match step {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::info!(group = %handle.group, %error, "placement step failed; will retry")
                    }
                    Err(_) => tracing::info!(group = %handle.group, "placement step timed out; will retry"),
                }
            }
        })
        .await;
    Ok(())
}

async fn reconcile_group(
    handle: &GroupHandle,
    desired: &BTreeSet<NodeId>,
    extra_learners: &BTreeSet<NodeId>,
    addresses: &BTreeMap<NodeId, String>,
) -> Result<(), Error> {
    let membership = handle.raft.metrics().borrow_watched().membership_config.clone();
    let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.membership().learner_ids().collect();
    let address = |node: NodeId| NodeInfo { addr: addresses.get(&node).cloned().unwrap_or_default() };

    // Nodes that only follow (metadata learners beyond the voter cap).
    for node in extra_learners.difference(desired) {
        if !voters.contains(node) && !learners.contains(node) {
            handle
                .raft
                .add_learner(*node, address(*node), false)
                .await
                .map_err(|error| Error::Raft(error.to_string()))?;
        }
    }
    // One step per pass: the next pass sees the membership this step made.
    match next_step(desired, &voters, &learners) {
        Some(MembershipStep::AddLearner(node)) => {
            tracing::info!(group = %handle.group, node, "adding learner");
            handle.raft.add_learner(node, address(node), true).await.map_err(|error| Error::Raft(error.to_string()))?;
        }
        Some(MembershipStep::SetVoters(voters)) => {
            tracing::info!(group = %handle.group, ?voters, "changing voters");
            handle.raft.change_membership(voters, false).await.map_err(|error| Error::Raft(error.to_string()))?;
            metrics::counter!("agentd_placement_membership_changes_total").increment(1);
        }
        None => {}
    }
    Ok(())
}

fn internal(error: Error) -> ApiError {
    ApiError::Internal { message: error.to_string() }
}

fn fatal(error: openraft::errors::Fatal<crate::types::TypeConfig>) -> Error {
    Error::Raft(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nodes: &[NodeId]) -> BTreeSet<NodeId> {
        nodes.iter().copied().collect()
    }

    #[test]
    fn a_missing_replica_is_added_as_learner_first() {
        assert_eq!(next_step(&set(&[1, 2, 3]), &set(&[1]), &set(&[])), Some(MembershipStep::AddLearner(2)));
        assert_eq!(next_step(&set(&[1, 2, 3]), &set(&[1]), &set(&[2])), Some(MembershipStep::AddLearner(3)));
    }

    #[test]
    fn voters_change_once_every_replica_is_a_learner() {
        assert_eq!(
            next_step(&set(&[1, 2, 3]), &set(&[1]), &set(&[2, 3])),
            Some(MembershipStep::SetVoters(set(&[1, 2, 3])))
        );
        // A move: 3 replaces 4.
        assert_eq!(
            next_step(&set(&[1, 2, 3]), &set(&[1, 2, 4]), &set(&[3])),
            Some(MembershipStep::SetVoters(set(&[1, 2, 3])))
        );
        assert_eq!(next_step(&set(&[1, 2, 3]), &set(&[1, 2, 3]), &set(&[])), None);
        assert_eq!(next_step(&set(&[]), &set(&[1]), &set(&[])), None);
    }

    #[test]
    fn new_nodes_fill_shards_up_to_the_replication_factor() {
        let placements = vec![(ShardId(0), vec![1]), (ShardId(1), vec![1, 2]), (ShardId(2), vec![1, 2, 3])];
        assert_eq!(place_new_node(&placements, 4, 3), vec![(ShardId(0), vec![1, 4]), (ShardId(1), vec![1, 2, 4])]);
        // Admitting the same node twice changes nothing the second time.
        let placements = vec![(ShardId(0), vec![1, 4])];
        assert_eq!(place_new_node(&placements, 4, 3), vec![]);
    }

    #[test]
    fn metadata_voters_are_capped() {
        let nodes: Vec<(NodeId, String)> = (1..=7).map(|node| (node, format!("127.0.0.1:{node}"))).collect();
        assert_eq!(metadata_voters(&nodes), set(&[1, 2, 3, 4, 5]));
    }
}
