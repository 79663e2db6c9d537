//! `agentd cluster rebalance`: even out the replicas across nodes (each
//! shard's leader carries its move out, as for `shard move`), then the
//! leaderships (each hand-off is a `shard transfer-leader`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::api::ClusterStatus;
use agentd_protocol::ids::{GroupId, NodeId};
use anyhow::{bail, Result};
use serde_json::json;

use super::cluster::leader_reports;
use super::{moves, Target};

/// One group as the leader plan sees it: its leader and voters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Led {
    group: GroupId,
    leader: Option<NodeId>,
    voters: Vec<NodeId>,
}

/// A planned leadership hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transfer {
    group: GroupId,
    from: NodeId,
    to: NodeId,
}

pub async fn run(dry_run: bool, timeout_secs: u64, target: Target) -> Result<()> {
    let client = target.client()?;
    let started = Instant::now();
    let planned = client.rebalance(dry_run).await?;
    if !target.json {
        if planned.is_empty() {
            outln!("replicas: every node holds within one of an even share; nothing to move");
        }
        for one in &planned {
            let verb = if dry_run { "would move" } else { "moving" };
            outln!("{}: {verb} node {} -> node {} (replicas then {:?})", one.shard, one.from, one.to, one.replicas);
        }
    }
    let phases = if !dry_run && !planned.is_empty() {
        Some(moves::follow(&client, &planned, Duration::from_secs(timeout_secs), target.json).await?)
    } else {
        None
    };

    let status = client.cluster_status().await?;
    let transfers = plan_transfers(&groups(&status), &reachable(&status));
    if !target.json {
        outln!("leaders per node: {}", per_node(&leaders_per_node(&status)));
        if transfers.is_empty() {
            outln!("leaders: every node leads within one of an even share; nothing to hand off");
        }
    }
    let failed = hand_off(&client, &transfers, dry_run, target.json, started).await;

    let status = if dry_run { status } else { client.cluster_status().await? };
    let (replicas, leaders) = (replicas_per_node(&status), leaders_per_node(&status));
    if target.json {
        let mut answer = moves::moves_json(&planned, phases.as_deref());
        answer["dry_run"] = json!(dry_run);
        answer["leader_transfers"] = transfers
            .iter()
            .map(|one| json!({"group": one.group.to_string(), "from": one.from, "to": one.to}))
            .collect();
        answer["failed_transfers"] = json!(failed);
        answer["replicas_per_node"] = json!(replicas);
        answer["leaders_per_node"] = json!(leaders);
        outln!("{answer}");
    } else if !dry_run {
        outln!("replicas per node: {}", per_node(&replicas));
        outln!("leaders per node: {}", per_node(&leaders));
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} leadership hand-offs failed ({}); run `agentd cluster rebalance` again",
            failed.len(),
            transfers.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// Carries the hand-offs out one by one (or only prints them, for a dry
/// run), printing each; answers the ones that failed, with the reason.
async fn hand_off(client: &Client, transfers: &[Transfer], dry_run: bool, json: bool, started: Instant) -> Vec<String> {
    let mut failed = Vec::new();
    for transfer in transfers {
        let Transfer { group, from, to } = *transfer;
        if dry_run {
            if !json {
                outln!("{group}: would hand the leadership from node {from} to node {to}");
            }
            continue;
        }
        match client.transfer_leader(group, to).await {
            Ok((leader, term)) if !json => outln!(
                "[{:>6.1}s] {group}: leadership node {from} -> node {leader} (term {term})",
                started.elapsed().as_secs_f64()
            ),
            Ok(_) => {}
            Err(error) => {
                if !json {
                    outln!(
                        "[{:>6.1}s] {group}: hand-off to node {to} failed: {error}",
                        started.elapsed().as_secs_f64()
                    );
                }
                failed.push(format!("{group} to node {to}: {error}"));
            }
        }
    }
    failed
}

/// Every group with its leader and voters, as its leader reports it.
fn groups(status: &ClusterStatus) -> Vec<Led> {
    leader_reports(status)
        .into_iter()
        .map(|(_, view)| Led { group: view.group, leader: view.leader, voters: view.voters.clone() })
        .collect()
}

fn reachable(status: &ClusterStatus) -> Vec<NodeId> {
    status.nodes.iter().filter(|node| node.reachable).map(|node| node.node_id).collect()
}

fn leaders_per_node(status: &ClusterStatus) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = reachable(status).into_iter().map(|node| (node, 0)).collect();
    for led in groups(status) {
        if let Some(leader) = led.leader {
            *counts.entry(leader).or_default() += 1;
        }
    }
    counts
}

/// Shard replicas (voters) per node; the metadata group is not counted.
fn replicas_per_node(status: &ClusterStatus) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = status.nodes.iter().map(|node| (node.node_id, 0)).collect();
    for led in groups(status).into_iter().filter(|led| led.group != GroupId::Metadata) {
        for voter in led.voters {
            *counts.entry(voter).or_default() += 1;
        }
    }
    counts
}

fn per_node(counts: &BTreeMap<NodeId, usize>) -> String {
    counts.iter().map(|(node, count)| format!("node {node}: {count}")).collect::<Vec<_>>().join(", ")
}

/// Hand-offs that bring every node of `nodes` within one of an even share
/// of the leaderships: each from a node leading the most to a voter of the
/// group leading the fewest. A group moves at most once; groups without a
/// leader are left to their election.
fn plan_transfers(groups: &[Led], nodes: &[NodeId]) -> Vec<Transfer> {
    let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (*node, 0)).collect();
    for leader in groups.iter().filter_map(|led| led.leader) {
        *counts.entry(leader).or_default() += 1;
    }
    let mut leaders: BTreeMap<GroupId, Option<NodeId>> = groups.iter().map(|led| (led.group, led.leader)).collect();
    let mut transfers: Vec<Transfer> = Vec::new();
    'plan: loop {
        let mut busiest: Vec<(NodeId, usize)> = counts.iter().map(|(node, count)| (*node, *count)).collect();
        busiest.sort_by_key(|(node, count)| (std::cmp::Reverse(*count), std::cmp::Reverse(*node)));
        let mut idlest = busiest.clone();
        idlest.sort_by_key(|(node, count)| (*count, *node));
        for (from, most) in &busiest {
            for (to, _) in
                idlest.iter().filter(|(to, _)| nodes.contains(to)).take_while(|(_, few)| most.saturating_sub(*few) >= 2)
            {
                let movable = groups.iter().find(|led| {
                    leaders[&led.group] == Some(*from)
                        && led.voters.contains(to)
                        && !transfers.iter().any(|done| done.group == led.group)
                });
                if let Some(led) = movable {
                    transfers.push(Transfer { group: led.group, from: *from, to: *to });
                    leaders.insert(led.group, Some(*to));
                    *counts.entry(*from).or_default() -= 1;
                    *counts.entry(*to).or_default() += 1;
                    continue 'plan;
                }
            }
        }
        return transfers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_protocol::ids::ShardId;

    fn led(shard: Option<u32>, leader: u64, voters: &[u64]) -> Led {
        let group = shard.map_or(GroupId::Metadata, |shard| GroupId::Shard(ShardId(shard)));
        Led { group, leader: Some(leader), voters: voters.to_vec() }
    }

    fn counts_after(groups: &[Led], transfers: &[Transfer], nodes: &[NodeId]) -> Vec<usize> {
        let mut leaders: BTreeMap<GroupId, NodeId> =
            groups.iter().map(|led| (led.group, led.leader.unwrap_or_default())).collect();
        for one in transfers {
            assert_eq!(leaders[&one.group], one.from, "{one:?}");
            leaders.insert(one.group, one.to);
        }
        nodes.iter().map(|node| leaders.values().filter(|leader| *leader == node).count()).collect()
    }

    #[test]
    fn leaderships_spread_within_one_of_even_over_voters_only() {
        // Node 1 ran --init and leads all five groups of three voters.
        let mut groups: Vec<Led> = (0..4).map(|shard| led(Some(shard), 1, &[1, 2, 3])).collect();
        groups.push(led(None, 1, &[1, 2, 3]));
        let transfers = plan_transfers(&groups, &[1, 2, 3]);
        let mut counts = counts_after(&groups, &transfers, &[1, 2, 3]);
        counts.sort_unstable();
        assert_eq!(counts, vec![1, 2, 2]);
        assert!(transfers.iter().all(|one| one.from == 1), "{transfers:?}");
        // Even already: nothing.
        let even = vec![led(Some(0), 1, &[1, 2]), led(Some(1), 2, &[1, 2]), led(Some(2), 1, &[1, 2])];
        assert_eq!(plan_transfers(&even, &[1, 2]), vec![]);
        // A node that is no voter of the groups cannot take them.
        let stuck = vec![led(Some(0), 1, &[1, 2]), led(Some(1), 1, &[1, 2]), led(Some(2), 1, &[1, 2])];
        let transfers = plan_transfers(&stuck, &[1, 2, 3]);
        assert_eq!(counts_after(&stuck, &transfers, &[1, 2, 3]), vec![2, 1, 0]);
        // A group without a leader is left alone.
        let leaderless = vec![Led { group: GroupId::Shard(ShardId(0)), leader: None, voters: vec![1, 2] }];
        assert_eq!(plan_transfers(&leaderless, &[1, 2]), vec![]);
    }
}
