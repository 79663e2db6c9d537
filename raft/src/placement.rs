//! Shard placement: where each group's replicas should be, and the
//! reconciler that moves every group this node leads towards that.
//!
//! Moving a replica is "add learner, catch up, change voters" — the
//! decisions are pure functions (tested below); [`reconcile`] carries them out.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentd_protocol::api::ShardMove;
use agentd_protocol::cluster::{ClusterRequest, ClusterResponse, GroupMembers};
use agentd_protocol::frame::decode_body;
use agentd_protocol::ids::{GroupId, NodeId, ShardId};
use agentd_protocol::limits::{METADATA_VOTERS_MAX, REPLICA_CATCH_UPS_PER_NODE_MAX, REPLICA_CATCH_UP_LAG_MAX};
use agentd_protocol::ApiError;
use futures_util::stream::{self, StreamExt};

use crate::host::{GroupHandle, RaftHost};
use crate::propose::propose;
use agentd_protocol::command::Command;

use crate::types::{LogId, NodeInfo};
use crate::Error;

/// How long one group's reconciliation step may take before it is retried
/// on the next pass (a learner may need a snapshot to catch up).
const RECONCILE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many groups are reconciled at once.
const RECONCILE_CONCURRENCY: usize = 8;
/// How long a replica that was moved away waits for a peer to confirm it.
const MEMBERS_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One step towards a desired voter set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipStep {
    AddLearner(NodeId),
    /// A new replica is a learner still catching up: nothing to do but wait.
    AwaitCatchUp(NodeId),
    SetVoters(BTreeSet<NodeId>),
}

/// The next step for a group, or `None` when it already matches.
/// `caught_up` holds the learners whose logs are close enough to the
/// leader's to vote: the voters change only once every new replica is one
/// of them, so that a move never counts on a replica that cannot yet serve.
pub fn next_step(
    desired: &BTreeSet<NodeId>,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    caught_up: &BTreeSet<NodeId>,
) -> Option<MembershipStep> {
    if desired.is_empty() {
        return None;
    }
    if let Some(missing) = desired.iter().find(|node| !voters.contains(node) && !learners.contains(node)) {
        return Some(MembershipStep::AddLearner(*missing));
    }
    if let Some(behind) = desired.iter().find(|node| learners.contains(node) && !caught_up.contains(node)) {
        return Some(MembershipStep::AwaitCatchUp(*behind));
    }
    if desired != voters {
        return Some(MembershipStep::SetVoters(desired.clone()));
    }
    None
}

/// Which of the groups whose next step is `AddLearner` may start it now:
/// at most `max` catch-ups run at once on a node (those awaiting included),
/// first come (by group) first served; the rest wait for a later pass.
pub fn catch_ups_to_start(steps: &[(GroupId, Option<MembershipStep>)], max: usize) -> BTreeSet<GroupId> {
    let in_flight = steps.iter().filter(|(_, step)| matches!(step, Some(MembershipStep::AwaitCatchUp(_)))).count();
    steps
        .iter()
        .filter(|(_, step)| matches!(step, Some(MembershipStep::AddLearner(_))))
        .map(|(group, _)| *group)
        .take(max.saturating_sub(in_flight))
        .collect()
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

/// How many replicas each node holds (nodes holding none included).
fn replica_counts(placements: &[(ShardId, Vec<NodeId>)], nodes: &[NodeId]) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (*node, 0)).collect();
    for (_, replicas) in placements {
        for node in replicas {
            *counts.entry(*node).or_default() += 1;
        }
    }
    counts
}

/// Moves one replica of `shard` to `to`: from `from`, or else from the
/// replica whose node holds the most replicas (the highest id on a tie).
/// The error says, for an operator, why the move makes no sense.
pub fn plan_move(
    placements: &[(ShardId, Vec<NodeId>)],
    nodes: &[NodeId],
    shard: ShardId,
    to: NodeId,
    from: Option<NodeId>,
) -> Result<ShardMove, String> {
    let Some((_, replicas)) = placements.iter().find(|(placed, _)| *placed == shard) else {
        return Err(format!("there is no {shard} (this cluster has shards 0..{})", placements.len()));
    };
    if !nodes.contains(&to) {
        return Err(format!("node {to} is not a member of the cluster (its nodes: {nodes:?})"));
    }
    if replicas.contains(&to) {
        if let Some(from) = from.filter(|from| !replicas.contains(from)) {
            // Already placed so (a retried request): the same answer again.
            return Ok(ShardMove { shard, from, to, replicas: replicas.clone() });
        }
        return Err(format!("node {to} already holds a replica of {shard} (its replicas: {replicas:?})"));
    }
    let counts = replica_counts(placements, nodes);
    let from = match from {
        Some(from) if replicas.contains(&from) => from,
        Some(from) => return Err(format!("node {from} holds no replica of {shard} (its replicas: {replicas:?})")),
        None => *replicas
            .iter()
            .max_by_key(|node| (counts.get(node).copied().unwrap_or(0), **node))
            .ok_or_else(|| format!("{shard} has no replica to move"))?,
    };
    let replicas = replicas.iter().map(|node| if *node == from { to } else { *node }).collect();
    Ok(ShardMove { shard, from, to, replicas })
}

/// Moves every replica on `node` to the other nodes, each to the node
/// holding the fewest replicas (the lowest id on a tie) that holds none of
/// that shard yet. Fails, moving nothing, if some shard has nowhere to go.
pub fn plan_drain(
    placements: &[(ShardId, Vec<NodeId>)],
    nodes: &[NodeId],
    node: NodeId,
) -> Result<Vec<ShardMove>, String> {
    if !nodes.contains(&node) {
        return Err(format!("node {node} is not a member of the cluster (its nodes: {nodes:?})"));
    }
    let mut counts = replica_counts(placements, nodes);
    counts.remove(&node);
    let mut moves = Vec::new();
    for (shard, replicas) in placements.iter().filter(|(_, replicas)| replicas.contains(&node)) {
        let Some(to) = counts
            .iter()
            .filter(|(candidate, _)| !replicas.contains(candidate))
            .min_by_key(|(candidate, count)| (**count, **candidate))
            .map(|(candidate, _)| *candidate)
        else {
            return Err(format!(
                "node {node} cannot be drained: every other node already holds a replica of {shard} \
                 ({} nodes, {} replicas per shard); add a node first",
                nodes.len(),
                replicas.len()
            ));
        };
        *counts.entry(to).or_default() += 1;
        let replicas = replicas.iter().map(|held| if *held == node { to } else { *held }).collect();
        moves.push(ShardMove { shard: *shard, from: node, to, replicas });
    }
    Ok(moves)
}

/// Replica moves that bring every node within one of an even share of the
/// replicas: each from a node holding the most to one holding the fewest
/// (the highest and lowest ids on ties), of the lowest-numbered shard the
/// first holds and the second does not. A shard moves at most once per
/// plan. Empty when the nodes are even already, or no move helps.
pub fn plan_rebalance(placements: &[(ShardId, Vec<NodeId>)], nodes: &[NodeId]) -> Vec<ShardMove> {
    let mut counts = replica_counts(placements, nodes);
    let mut placements: BTreeMap<ShardId, Vec<NodeId>> = placements.iter().cloned().collect();
    counts.retain(|node, _| nodes.contains(node));
    let mut moves = Vec::new();
    while let Some(one) = next_rebalance_move(&placements, &counts, &moves) {
        *counts.entry(one.from).or_default() -= 1;
        *counts.entry(one.to).or_default() += 1;
        placements.insert(one.shard, one.replicas.clone());
        moves.push(one);
    }
    moves
}

/// The next move of [`plan_rebalance`], if any.
fn next_rebalance_move(
    placements: &BTreeMap<ShardId, Vec<NodeId>>,
    counts: &BTreeMap<NodeId, usize>,
    planned: &[ShardMove],
) -> Option<ShardMove> {
    let mut busiest: Vec<(NodeId, usize)> = counts.iter().map(|(node, count)| (*node, *count)).collect();
    busiest.sort_by_key(|(node, count)| (std::cmp::Reverse(*count), std::cmp::Reverse(*node)));
    let mut idlest = busiest.clone();
    idlest.sort_by_key(|(node, count)| (*count, *node));
    for (from, most) in &busiest {
        for (to, _) in idlest.iter().take_while(|(_, fewest)| most.saturating_sub(*fewest) >= 2) {
            let shard = placements.iter().find(|(shard, replicas)| {
                replicas.contains(from) && !replicas.contains(to) && !planned.iter().any(|one| one.shard == **shard)
            });
            if let Some((shard, replicas)) = shard {
                let replicas = replicas.iter().map(|node| if node == from { *to } else { *node }).collect();
                return Some(ShardMove { shard: *shard, from: *from, to: *to, replicas });
            }
        }
    }
    None
}

/// The voters the metadata group should have: the lowest node ids, at most
/// [`METADATA_VOTERS_MAX`]; every other node follows it as a learner.
pub fn metadata_voters(nodes: &[(NodeId, String)]) -> BTreeSet<NodeId> {
    nodes.iter().map(|(node, _)| *node).take(METADATA_VOTERS_MAX).collect()
}

/// Admits a node: records it in the metadata group and gives it replicas:
/// of every shard short of the replication factor, then its share of the
/// others (moves from the nodes holding the most, as `plan_rebalance`
/// plans them; each shard's leader carries its move out). Must run on the
/// metadata leader. Safe to repeat.
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
    let placements = metadata.state.placements().map_err(internal)?;
    let nodes: Vec<NodeId> = metadata.state.nodes().map_err(internal)?.into_iter().map(|(node, _)| node).collect();
    for one in plan_rebalance(&placements, &nodes).into_iter().filter(|one| one.to == node_id) {
        tracing::info!(shard = %one.shard, from = one.from, to = one.to, "moving a replica to the new node");
        propose(metadata, Command::SetPlacement { shard: one.shard, replicas: one.replicas }).await?;
    }
    Ok(())
}

/// One pass: opens the shards placed on this node, initialises shards that
/// start here, and moves every group this node leads towards its placement.
pub async fn reconcile(host: &RaftHost) -> Result<(), Error> {
    let Some(metadata) = host.group(GroupId::Metadata) else {
        return Ok(());
    };
    if metadata.state.is_removed(host.node_id())? {
        // The metadata group says so itself (a learner hears it before it
        // is dropped); peers refuse this node too (see `identity.rs`).
        let reason = ApiError::NodeRemoved { node: host.node_id() }.to_string();
        host.peers().identities().removed(&reason);
        return Ok(());
    }
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

    retire_replicas(host, &placements, &addresses).await?;
    host.release_rejoined()?;

    let mut work: Vec<(GroupHandle, BTreeSet<NodeId>)> = Vec::new();
    work.push((metadata.clone(), metadata_voters(&nodes)));
    for (shard, replicas) in placements {
        if let Some(handle) = host.group(GroupId::Shard(shard)) {
            work.push((handle, replicas.into_iter().collect()));
        }
    }
    work.retain(|(handle, _)| handle.raft.is_leader());
    let steps: Vec<(GroupId, Option<MembershipStep>)> =
        work.iter().map(|(handle, desired)| (handle.group, planned_step(handle, desired))).collect();
    let may_start = catch_ups_to_start(&steps, REPLICA_CATCH_UPS_PER_NODE_MAX);
    let learners_for_metadata: BTreeSet<NodeId> = addresses.keys().copied().collect();
    stream::iter(work)
        .for_each_concurrent(RECONCILE_CONCURRENCY, |(handle, desired)| {
            let addresses = &addresses;
            let learners_for_metadata = &learners_for_metadata;
            let start_catch_up = may_start.contains(&handle.group);
            async move {
                let extra_learners =
                    if handle.group == GroupId::Metadata { learners_for_metadata.clone() } else { BTreeSet::new() };
                let step = tokio::time::timeout(
                    RECONCILE_STEP_TIMEOUT,
                    reconcile_group(&handle, &desired, &extra_learners, addresses, start_catch_up),
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

/// Deletes this node's copy of every shard that was moved off it, once a
/// replica that stays reports a committed membership without this node
/// that is newer than any membership the copy holds (see
/// [`RaftHost::retire_group`]). Until then the copy stays a full replica: a
/// move never lowers a shard's replica count while it is in flight, and a
/// node never forgets entries it may have acknowledged. A copy left on disk
/// by a restart mid-move is opened so that it can be retired.
async fn retire_replicas(
    host: &RaftHost,
    placements: &[(ShardId, Vec<NodeId>)],
    addresses: &BTreeMap<NodeId, String>,
) -> Result<(), Error> {
    let me = host.node_id();
    for (shard, replicas) in placements.iter().filter(|(_, replicas)| !replicas.contains(&me)) {
        let group = GroupId::Shard(*shard);
        let handle = match host.group(group) {
            Some(handle) => handle,
            None if host.holds_group(group)? => host.open_group(group).await?,
            None => continue,
        };
        // A leader first hands the group to a replica that stays (see
        // `reconcile_group`); the new leader finishes the move.
        if handle.raft.is_leader() {
            continue;
        }
        for node in replicas {
            let Some(members) = committed_members(host, group, addresses.get(node)).await else { continue };
            if members.voters.contains(&me) || members.learners.contains(&me) {
                continue;
            }
            let Ok(removed_at) = decode_body::<LogId>(&members.log_id) else { continue };
            tracing::info!(%group, peer = node, voters = ?members.voters, "moved off this node: retiring the replica");
            if host.retire_group(group, &removed_at).await? {
                metrics::counter!("agentd_placement_replicas_removed_total").increment(1);
            }
            break;
        }
    }
    Ok(())
}

/// Refuses to forget `node` while a placement names it, naming the shards
/// and the repair.
pub fn check_unplaced<'a>(
    placements: impl IntoIterator<Item = (&'a ShardId, &'a Vec<NodeId>)>,
    node: NodeId,
) -> Result<(), ApiError> {
    let holding: Vec<String> = placements
        .into_iter()
        .filter(|(_, replicas)| replicas.contains(&node))
        .map(|(shard, _)| shard.to_string())
        .collect();
    if holding.is_empty() {
        return Ok(());
    }
    Err(ApiError::InvalidRequest {
        message: format!(
            "node {node} still holds replicas of {}: drain it first (agentd node drain {node} --wait)",
            holding.join(", ")
        ),
    })
}

/// Why `node` may not be forgotten yet, shard by shard: a committed
/// membership still counts it (a move off it is in flight), or no replica
/// of the shard answered. Asks the shard's placed replicas, other than
/// `node`, in turn; empty when every shard is free of it.
pub async fn shards_counting(
    host: &RaftHost,
    placements: &[(ShardId, Vec<NodeId>)],
    addresses: &BTreeMap<NodeId, String>,
    node: NodeId,
) -> Vec<String> {
    // Collected first: a lazy map over borrowed placements would make the
    // caller's future not `Send` for every lifetime.
    let asks: Vec<_> = placements
        .iter()
        .map(|(shard, replicas)| shard_counting(host, *shard, replicas.clone(), addresses, node))
        .collect();
    let reasons: Vec<Option<String>> = stream::iter(asks).buffered(RECONCILE_CONCURRENCY).collect().await;
    reasons.into_iter().flatten().collect()
}

/// Why `shard` still counts `node`, as the first of its other replicas to
/// answer says; `None` if it does not.
async fn shard_counting(
    host: &RaftHost,
    shard: ShardId,
    replicas: Vec<NodeId>,
    addresses: &BTreeMap<NodeId, String>,
    node: NodeId,
) -> Option<String> {
    let group = GroupId::Shard(shard);
    for replica in replicas.into_iter().filter(|replica| *replica != node) {
        let Some(members) = committed_members(host, group, addresses.get(&replica)).await else { continue };
        return if members.voters.contains(&node) {
            Some(format!("{shard} still has node {node} as a voter"))
        } else if members.learners.contains(&node) {
            Some(format!("{shard} still has node {node} as a learner"))
        } else {
            None
        };
    }
    Some(format!("no replica of {shard} answered"))
}

/// `group`'s committed membership as the node at `addr` has applied it,
/// if it answers and has one.
async fn committed_members(host: &RaftHost, group: GroupId, addr: Option<&String>) -> Option<GroupMembers> {
    let request = ClusterRequest::GroupMembers { group };
    match host.peers().call(addr?, request, MEMBERS_QUERY_TIMEOUT).await {
        Ok(ClusterResponse::GroupMembers(members)) => members,
        _ => None,
    }
}

/// The group's voters, learners, and the learners caught up enough to
/// vote, as this node (its leader) sees them now.
fn members_now(handle: &GroupHandle) -> (BTreeSet<NodeId>, BTreeSet<NodeId>, BTreeSet<NodeId>) {
    let metrics = handle.raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let last = metrics.last_log_index.unwrap_or_default();
    let caught_up = learners
        .iter()
        .copied()
        .filter(|node| {
            let matched = metrics.replication.as_ref().and_then(|replication| replication.get(node).cloned().flatten());
            matched.is_some_and(|log_id| log_id.index + REPLICA_CATCH_UP_LAG_MAX >= last)
        })
        .collect();
    (voters, learners, caught_up)
}

/// The next step towards `desired`, as the group stands now.
fn planned_step(handle: &GroupHandle, desired: &BTreeSet<NodeId>) -> Option<MembershipStep> {
    let (voters, learners, caught_up) = members_now(handle);
    next_step(desired, &voters, &learners, &caught_up)
}

async fn reconcile_group(
    handle: &GroupHandle,
    desired: &BTreeSet<NodeId>,
    extra_learners: &BTreeSet<NodeId>,
    addresses: &BTreeMap<NodeId, String>,
    start_catch_up: bool,
) -> Result<(), Error> {
    let (voters, learners, caught_up) = members_now(handle);
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
    // Learners of an abandoned move (placed, then placed elsewhere).
    let stale: BTreeSet<NodeId> =
        learners.iter().filter(|node| !desired.contains(node) && !extra_learners.contains(node)).copied().collect();
    if !stale.is_empty() && next_step(desired, &voters, &learners, &caught_up).is_none() {
        tracing::info!(group = %handle.group, ?stale, "removing learners no longer placed here");
        let change = openraft::ChangeMembers::RemoveNodes(stale);
        handle.raft.change_membership(change, false).await.map_err(|error| Error::Raft(error.to_string()))?;
        return Ok(());
    }
    // One step per pass: the next pass sees the membership this step made.
    match next_step(desired, &voters, &learners, &caught_up) {
        Some(MembershipStep::AddLearner(node)) if start_catch_up => {
            // Not blocking: the pass goes on, and a later pass changes the
            // voters once the learner has caught up.
            tracing::info!(group = %handle.group, node, "adding learner");
            handle
                .raft
                .add_learner(node, address(node), false)
                .await
                .map_err(|error| Error::Raft(error.to_string()))?;
        }
        Some(MembershipStep::AddLearner(node)) => {
            tracing::debug!(group = %handle.group, node, "a new replica waits: this node catches up enough at once");
        }
        Some(MembershipStep::AwaitCatchUp(_)) => {}
        Some(MembershipStep::SetVoters(new_voters)) if !new_voters.contains(handle.raft.node_id()) => {
            // A leader that is moved off does not remove itself: it hands
            // the group to the most caught-up voter that stays.
            let me = *handle.raft.node_id();
            let staying: BTreeSet<NodeId> = voters.intersection(&new_voters).copied().collect();
            match successor_among(handle, &staying) {
                Some(target) => {
                    tracing::info!(group = %handle.group, to = target, "moved off this node: handing off the leadership");
                    handle
                        .raft
                        .trigger()
                        .transfer_leader(target)
                        .await
                        .map_err(|error| Error::Raft(error.to_string()))?;
                }
                None => {
                    // No voter stays (one replica moving): the change itself ends this leadership.
                    tracing::info!(group = %handle.group, ?new_voters, me, "changing voters, leaving this node");
                    handle
                        .raft
                        .change_membership(new_voters, false)
                        .await
                        .map_err(|error| Error::Raft(error.to_string()))?;
                    metrics::counter!("agentd_placement_membership_changes_total").increment(1);
                }
            }
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

/// Of `candidates`, the one whose replicated log reaches furthest as this
/// node (the leader) last saw it.
pub(crate) fn successor_among(handle: &GroupHandle, candidates: &BTreeSet<NodeId>) -> Option<NodeId> {
    let metrics = handle.raft.metrics().borrow_watched().clone();
    let replication = metrics.replication.as_ref()?;
    candidates.iter().copied().max_by_key(|id| replication.get(id).cloned().flatten().map(|log_id| log_id.index))
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

    fn counts_after(placements: &[(ShardId, Vec<NodeId>)], moves: &[ShardMove]) -> Vec<usize> {
        let mut after: BTreeMap<ShardId, Vec<NodeId>> = placements.iter().cloned().collect();
        for one in moves {
            assert!(after[&one.shard].contains(&one.from) && !after[&one.shard].contains(&one.to), "{one:?}");
            after.insert(one.shard, one.replicas.clone());
        }
        let after: Vec<(ShardId, Vec<NodeId>)> = after.into_iter().collect();
        let nodes: Vec<NodeId> = (1..=4).collect();
        replica_counts(&after, &nodes).into_values().collect()
    }

    #[test]
    fn a_rebalance_evens_replicas_out_moving_each_shard_at_most_once() {
        // Four shards of three replicas on nodes 1-3, and a new node 4.
        let placements: Vec<(ShardId, Vec<NodeId>)> = (0..4).map(|shard| (ShardId(shard), vec![1, 2, 3])).collect();
        let nodes = [1, 2, 3, 4];
        let moves = plan_rebalance(&placements, &nodes);
        assert_eq!(counts_after(&placements, &moves), vec![3, 3, 3, 3]);
        assert_eq!(moves.len(), 3);
        let shards: BTreeSet<ShardId> = moves.iter().map(|one| one.shard).collect();
        assert_eq!(shards.len(), moves.len(), "a shard moved twice: {moves:?}");
        assert!(moves.iter().all(|one| one.to == 4 && one.replicas.len() == 3));
        // Even already: nothing moves; within one of even is even enough.
        let after: Vec<(ShardId, Vec<NodeId>)> = {
            let mut map: BTreeMap<ShardId, Vec<NodeId>> = placements.iter().cloned().collect();
            moves.iter().for_each(|one| drop(map.insert(one.shard, one.replicas.clone())));
            map.into_iter().collect()
        };
        assert_eq!(plan_rebalance(&after, &nodes), vec![]);
        let uneven_by_one = vec![(ShardId(0), vec![1, 2]), (ShardId(1), vec![3, 4]), (ShardId(2), vec![1, 3])];
        assert_eq!(plan_rebalance(&uneven_by_one, &nodes), vec![]);
        // Every replica on one node of many shards of one replica.
        let lopsided: Vec<(ShardId, Vec<NodeId>)> = (0..9).map(|shard| (ShardId(shard), vec![1])).collect();
        let moves = plan_rebalance(&lopsided, &nodes);
        let mut counts = counts_after(&lopsided, &moves);
        counts.sort_unstable();
        assert_eq!(counts, vec![2, 2, 2, 3]);
    }

    #[test]
    fn a_missing_replica_is_added_as_learner_first() {
        let none = set(&[]);
        assert_eq!(next_step(&set(&[1, 2, 3]), &set(&[1]), &none, &none), Some(MembershipStep::AddLearner(2)));
        assert_eq!(next_step(&set(&[1, 2, 3]), &set(&[1]), &set(&[2]), &none), Some(MembershipStep::AddLearner(3)));
    }

    #[test]
    fn voters_change_once_every_new_replica_has_caught_up() {
        assert_eq!(
            next_step(&set(&[1, 2, 3]), &set(&[1]), &set(&[2, 3]), &set(&[2, 3])),
            Some(MembershipStep::SetVoters(set(&[1, 2, 3])))
        );
        // A move: 3 replaces 4, once 3 has caught up.
        assert_eq!(
            next_step(&set(&[1, 2, 3]), &set(&[1, 2, 4]), &set(&[3]), &set(&[])),
            Some(MembershipStep::AwaitCatchUp(3))
        );
        assert_eq!(
            next_step(&set(&[1, 2, 3]), &set(&[1, 2, 4]), &set(&[3]), &set(&[3])),
            Some(MembershipStep::SetVoters(set(&[1, 2, 3])))
        );
        assert_eq!(next_step(&set(&[1, 2, 3]), &set(&[1, 2, 3]), &set(&[]), &set(&[])), None);
        assert_eq!(next_step(&set(&[]), &set(&[1]), &set(&[]), &set(&[])), None);
    }

    #[test]
    fn catch_ups_are_paced_per_node() {
        let shard = |n| GroupId::Shard(ShardId(n));
        let steps: Vec<(GroupId, Option<MembershipStep>)> = vec![
            (shard(0), Some(MembershipStep::AwaitCatchUp(4))),
            (shard(1), Some(MembershipStep::AddLearner(4))),
            (shard(2), Some(MembershipStep::SetVoters(set(&[1, 2, 4])))),
            (shard(3), Some(MembershipStep::AddLearner(4))),
            (shard(4), Some(MembershipStep::AddLearner(5))),
            (shard(5), None),
        ];
        // One catch-up runs: two more may start, the third waits.
        assert_eq!(catch_ups_to_start(&steps, 3), [shard(1), shard(3)].into_iter().collect());
        assert!(catch_ups_to_start(&steps, 1).is_empty());
        assert_eq!(catch_ups_to_start(&steps, 8).len(), 3);
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
    fn a_move_replaces_one_replica_and_says_why_it_cannot() {
        let placements = vec![(ShardId(0), vec![1, 2, 3]), (ShardId(1), vec![1, 2, 4]), (ShardId(2), vec![1, 3, 4])];
        let nodes = [1, 2, 3, 4, 5];
        let moved = plan_move(&placements, &nodes, ShardId(0), 5, Some(2)).unwrap();
        assert_eq!(moved, ShardMove { shard: ShardId(0), from: 2, to: 5, replicas: vec![1, 5, 3] });
        // Without --from: the replica on the busiest node (node 1 holds 3).
        assert_eq!(plan_move(&placements, &nodes, ShardId(0), 5, None).unwrap().from, 1);
        // A retry of a move that took effect answers the same move.
        let placed = vec![(ShardId(0), vec![1, 5, 3])];
        assert_eq!(plan_move(&placed, &nodes, ShardId(0), 5, Some(2)).unwrap(), moved);
        let refused = |shard, to, from| plan_move(&placements, &nodes, ShardId(shard), to, from).unwrap_err();
        assert!(refused(9, 5, None).contains("there is no shard-9"));
        assert!(refused(0, 6, None).contains("node 6 is not a member"));
        assert!(refused(0, 3, None).contains("already holds a replica"));
        assert!(refused(0, 5, Some(4)).contains("node 4 holds no replica of shard-0"));
    }

    #[test]
    fn a_drain_spreads_the_replicas_over_the_least_loaded_nodes() {
        let placements = vec![(ShardId(0), vec![1, 2, 3]), (ShardId(1), vec![1, 2, 3]), (ShardId(2), vec![2, 3, 4])];
        let moves = plan_drain(&placements, &[1, 2, 3, 4, 5], 1).unwrap();
        // Node 5 holds none and takes the first; then 4 and 5 hold one each.
        let targets: Vec<(ShardId, NodeId)> = moves.iter().map(|one| (one.shard, one.to)).collect();
        assert_eq!(targets, vec![(ShardId(0), 5), (ShardId(1), 4)]);
        assert_eq!(moves[0].replicas, vec![5, 2, 3]);
        assert_eq!(plan_drain(&placements, &[1, 2, 3, 4, 5], 5).unwrap(), vec![], "node 5 holds nothing");
        // Three nodes, three replicas: nowhere to go, and nothing moves.
        let error = plan_drain(&placements[..2], &[1, 2, 3], 1).unwrap_err();
        assert!(error.contains("every other node already holds a replica of shard-0"), "{error}");
        assert!(plan_drain(&placements, &[1, 2, 3], 9).unwrap_err().contains("not a member"));
    }

    #[test]
    fn metadata_voters_are_capped() {
        let nodes: Vec<(NodeId, String)> = (1..=7).map(|node| (node, format!("127.0.0.1:{node}"))).collect();
        assert_eq!(metadata_voters(&nodes), set(&[1, 2, 3, 4, 5]));
    }
}
