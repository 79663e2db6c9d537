//! Leadership balance: without it the node that initialised the cluster
//! leads every group, and does all the leader work (proposals, replication,
//! fsync fan-in) while the others only follow.
//!
//! Every node runs the same local rule over the groups it hosts, as its
//! metrics show them: while it leads at least two groups more than some
//! other voter of a group it leads, it hands that group's leadership to
//! that voter (openraft's leader transfer), a few groups per pass. Each
//! hand-off lowers the spread, so the cluster settles with every node
//! within one of even wherever the voter sets allow it. Nothing moves while
//! any hosted group is without a leader (an election or failover has not
//! settled), and a voter that did not take a hand-off is left alone for a
//! while (its disk may be full, or it may be unreachable).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentd_protocol::ids::{GroupId, NodeId};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::Instant as _;
use tokio::time::Instant;

use crate::host::RaftHost;

/// Hand-offs started per pass, at most.
pub const BALANCE_MOVES_PER_PASS: usize = 4;
/// A voter is a target only if its log is within this many entries of the
/// leader's (openraft's transfer waits for the target to flush the rest).
const BALANCE_LAG_MAX: u64 = 64;
/// A voter is a target only if it acknowledged the leader's heartbeats or
/// entries this recently: a hand-off to a node that is down leaves the
/// group without a leader until an election.
const BALANCE_ALIVE_WITHIN: Duration = Duration::from_secs(1);
/// How long a hand-off has to take effect before it counts as refused.
const BALANCE_TAKE_WITHIN: Duration = Duration::from_secs(5);
/// How long a voter that refused a hand-off gets none.
const BALANCE_REFUSED_BACKOFF: Duration = Duration::from_secs(60);

/// One hosted group as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub group: GroupId,
    pub leader: Option<NodeId>,
    pub voters: BTreeSet<NodeId>,
    /// On a group this node leads: the voters caught up enough to take over,
    /// and heard from lately.
    pub caught_up: BTreeSet<NodeId>,
}

/// The hand-offs `me` should start now: `(group, to)`, at most `max`.
/// Empty while any group has no leader.
pub fn plan_hand_offs(
    me: NodeId,
    groups: &[GroupView],
    avoid: &BTreeSet<NodeId>,
    busy: &BTreeSet<GroupId>,
    max: usize,
) -> Vec<(GroupId, NodeId)> {
    if groups.iter().any(|view| view.leader.is_none()) {
        return Vec::new();
    }
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    for view in groups {
        for voter in &view.voters {
            leads.entry(*voter).or_default();
        }
        if let Some(leader) = view.leader {
            *leads.entry(leader).or_default() += 1;
        }
    }
    let mut plan = Vec::new();
    let mut moved = BTreeSet::new();
    while plan.len() < max {
        let mine = leads.get(&me).copied().unwrap_or_default();
        let best = groups
            .iter()
            .filter(|view| view.leader == Some(me) && !busy.contains(&view.group) && !moved.contains(&view.group))
            .flat_map(|view| {
                view.caught_up
                    .iter()
                    .filter(|to| **to != me && view.voters.contains(to) && !avoid.contains(to))
                    .map(|to| (leads.get(to).copied().unwrap_or_default(), view.group, *to))
            })
            .filter(|(theirs, _, _)| mine >= theirs + 2)
            .min();
        let Some((_, group, to)) = best else { break };
        *leads.entry(me).or_default() -= 1;
        *leads.entry(to).or_default() += 1;
        moved.insert(group);
        plan.push((group, to));
    }
    plan
}

/// What the balancer remembers between passes.
#[derive(Debug, Default)]
pub struct BalanceState {
    /// Hand-offs started and not yet judged: group, target, when.
    pending: Vec<(GroupId, NodeId, Instant)>,
    /// Voters that did not take a hand-off, and until when they get none.
    avoid: BTreeMap<NodeId, Instant>,
}

impl RaftHost {
    /// One pass of the balancer (see the module documentation). Does
    /// nothing while this node's disk is full: it is handing off anyway.
    pub fn balance_leaders(&self, state: &mut BalanceState) {
        let now = Instant::now();
        let mut views = Vec::new();
        for handle in self.groups() {
            let metrics = handle.raft.metrics().borrow_watched().clone();
            let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
            let last = metrics.last_log_index.unwrap_or_default();
            let caught_up = match (&metrics.replication, &metrics.heartbeat) {
                (Some(replication), Some(heartbeat)) if metrics.current_leader == Some(self.node_id()) => replication
                    .iter()
                    .filter(|(node, matched)| {
                        let alive = heartbeat
                            .get(node)
                            .and_then(|acked| acked.as_ref())
                            .is_some_and(|acked| acked.elapsed() <= BALANCE_ALIVE_WITHIN);
                        alive && matched.as_ref().is_some_and(|log_id| log_id.index + BALANCE_LAG_MAX >= last)
                    })
                    .map(|(node, _)| *node)
                    .collect(),
                _ => BTreeSet::new(),
            };
            views.push(GroupView { group: handle.group, leader: metrics.current_leader, voters, caught_up });
        }

        let leader_of: BTreeMap<GroupId, Option<NodeId>> = views.iter().map(|view| (view.group, view.leader)).collect();
        state.pending.retain(|(group, to, started)| {
            if now.duration_since(*started) < BALANCE_TAKE_WITHIN {
                return true;
            }
            if leader_of.get(group).copied().flatten() != Some(*to) {
                tracing::info!(%group, to, "a leadership hand-off did not take; leaving that node alone for a while");
                state.avoid.insert(*to, now + BALANCE_REFUSED_BACKOFF);
            }
            false
        });
        state.avoid.retain(|_, until| *until > now);
        if self.space().is_full() {
            return;
        }

        let avoid: BTreeSet<NodeId> = state.avoid.keys().copied().collect();
        let busy: BTreeSet<GroupId> = state.pending.iter().map(|(group, _, _)| *group).collect();
        for (group, to) in plan_hand_offs(self.node_id(), &views, &avoid, &busy, BALANCE_MOVES_PER_PASS) {
            let Some(handle) = self.group(group) else { continue };
            tracing::info!(%group, to, "handing off leadership to balance leaders across nodes");
            metrics::counter!("agentd_leader_balance_hand_offs_total").increment(1);
            state.pending.push((group, to, now));
            tokio::spawn(async move {
                if let Err(error) = handle.raft.trigger().transfer_leader(to).await {
                    tracing::warn!(group = %handle.group, %error, "the leadership hand-off failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use agentd_protocol::ids::ShardId;

    use super::*;

    fn set(nodes: &[NodeId]) -> BTreeSet<NodeId> {
        nodes.iter().copied().collect()
    }

    /// `n` groups on voters 1, 2, 3, led as `leaders` says, all caught up.
    fn cluster(leaders: &[Option<NodeId>]) -> Vec<GroupView> {
        leaders
            .iter()
            .enumerate()
            .map(|(shard, leader)| GroupView {
                group: GroupId::Shard(ShardId(shard as u32)),
                leader: *leader,
                voters: set(&[1, 2, 3]),
                caught_up: set(&[1, 2, 3]),
            })
            .collect()
    }

    /// Runs every node's planner until nothing moves; returns leads per node.
    fn settle(mut groups: Vec<GroupView>) -> BTreeMap<NodeId, usize> {
        for _ in 0..1000 {
            let mut moved = false;
            for me in [1, 2, 3] {
                for (group, to) in plan_hand_offs(me, &groups, &BTreeSet::new(), &BTreeSet::new(), 4) {
                    groups.iter_mut().find(|view| view.group == group).unwrap().leader = Some(to);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        let mut leads = BTreeMap::from([(1, 0), (2, 0), (3, 0)]);
        for view in &groups {
            *leads.get_mut(&view.leader.unwrap()).unwrap() += 1;
        }
        leads
    }

    #[test]
    fn one_node_leading_everything_settles_within_one_of_even() {
        let leads = settle(cluster(&[Some(1); 65]));
        assert_eq!(leads.values().sum::<usize>(), 65);
        let (min, max) = (leads.values().min().unwrap(), leads.values().max().unwrap());
        assert!(max - min <= 1, "{leads:?}");
    }

    #[test]
    fn a_pass_moves_at_most_max_groups_to_the_least_loaded_voters() {
        let mut groups = cluster(&[Some(1); 10]);
        groups.extend(cluster(&[Some(2); 2]).into_iter().map(|mut view| {
            view.group = GroupId::Shard(ShardId(100 + view.group.storage_key()));
            view
        }));
        let plan = plan_hand_offs(1, &groups, &BTreeSet::new(), &BTreeSet::new(), 4);
        assert_eq!(plan.len(), 4);
        // Node 3 leads nothing, node 2 leads two: node 3 is filled first.
        assert!(plan[..2].iter().all(|(_, to)| *to == 3), "{plan:?}");
    }

    #[test]
    fn nothing_moves_while_a_group_has_no_leader_or_when_even() {
        let mut leaders = vec![Some(1); 9];
        leaders[4] = None;
        assert!(plan_hand_offs(1, &cluster(&leaders), &BTreeSet::new(), &BTreeSet::new(), 4).is_empty());
        let even = cluster(&[Some(1), Some(2), Some(3), Some(1)]);
        for me in [1, 2, 3] {
            assert!(plan_hand_offs(me, &even, &BTreeSet::new(), &BTreeSet::new(), 4).is_empty());
        }
    }

    #[test]
    fn avoided_lagging_and_busy_targets_are_skipped() {
        let mut groups = cluster(&[Some(1); 6]);
        for view in &mut groups {
            view.caught_up = set(&[1, 2]);
        }
        let plan = plan_hand_offs(1, &groups, &set(&[2]), &BTreeSet::new(), 4);
        assert!(plan.is_empty(), "node 3 lags and node 2 is avoided: {plan:?}");
        let busy: BTreeSet<GroupId> = groups.iter().take(5).map(|view| view.group).collect();
        let plan = plan_hand_offs(1, &groups, &BTreeSet::new(), &busy, 4);
        assert_eq!(plan, vec![(groups[5].group, 2)]);
    }
}
