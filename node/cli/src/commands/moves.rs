//! Following replica moves to their end: what `shard move` and
//! `node drain --wait` print while each shard's leader carries its move out
//! (add the new replica as a learner, catch it up, swap the voters, and the
//! old node deletes its copy).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::api::{ClusterStatus, ShardMove};
use agentd_protocol::ids::{GroupId, ShardId};
use anyhow::{bail, Result};
use serde_json::json;

/// How often the cluster is asked how the moves stand.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often a learner's catching up is reported while it goes on.
const CATCH_UP_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Where one move stands, as the cluster reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The shard's leader has not added the new replica yet.
    Waiting,
    /// The new replica is a learner, `behind` entries behind the leader.
    CatchingUp { behind: Option<u64> },
    /// The new replica caught up; the voters are changing.
    SwappingVoters,
    /// The old replica is out of the group; its node still holds its copy.
    DeletingOldCopy,
    /// The move is done. `old_node_down`: the old node could not be asked;
    /// it deletes its copy when it is back.
    Done { old_node_down: bool },
}

impl Phase {
    fn describe(self, one: &ShardMove) -> String {
        let (from, to) = (one.from, one.to);
        match self {
            Phase::Waiting => format!("waiting for its leader to add node {to}"),
            Phase::CatchingUp { behind: Some(behind) } => format!("node {to} is catching up, {behind} entries behind"),
            Phase::CatchingUp { behind: None } => format!("node {to} is catching up"),
            Phase::SwappingVoters => format!("node {to} caught up; swapping voters (node {from} out, node {to} in)"),
            Phase::DeletingOldCopy => format!("node {from} left the group; it is deleting its copy"),
            Phase::Done { old_node_down: false } => format!("moved to node {to}; replicas {:?}", one.replicas),
            Phase::Done { old_node_down: true } => format!(
                "moved to node {to}; replicas {:?} (node {from} is down and deletes its copy when it is back)",
                one.replicas
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::CatchingUp { .. } => "catching_up",
            Phase::SwappingVoters => "swapping_voters",
            Phase::DeletingOldCopy => "deleting_old_copy",
            Phase::Done { .. } => "done",
        }
    }
}

/// How `one` stands in `status`: judged from the shard's leader's view of
/// its membership, and from the old node's list of the groups it hosts.
pub(super) fn phase(status: &ClusterStatus, one: &ShardMove) -> Phase {
    let group = GroupId::Shard(one.shard);
    let leader_view = status
        .nodes
        .iter()
        .filter(|node| node.reachable)
        .find_map(|node| node.groups.iter().find(|view| view.group == group && view.leader == Some(node.node_id)));
    let Some(view) = leader_view else {
        return Phase::Waiting;
    };
    if view.learners.contains(&one.to) {
        let behind = view.replica_lag.iter().find(|(node, _)| *node == one.to).and_then(|(_, lag)| *lag);
        return Phase::CatchingUp { behind };
    }
    if !view.voters.contains(&one.to) {
        return Phase::Waiting;
    }
    if view.voters.contains(&one.from) || view.learners.contains(&one.from) {
        return Phase::SwappingVoters;
    }
    match status.nodes.iter().find(|node| node.node_id == one.from) {
        Some(old) if old.reachable && old.groups.iter().any(|held| held.group == group) => Phase::DeletingOldCopy,
        Some(old) if old.reachable => Phase::Done { old_node_down: false },
        _ => Phase::Done { old_node_down: true },
    }
}

/// Waits until every move is done, printing each change of phase (unless
/// `quiet`), and fails after `timeout` naming the moves still under way.
pub(crate) async fn follow(client: &Client, moves: &[ShardMove], timeout: Duration, quiet: bool) -> Result<Vec<Phase>> {
    let started = Instant::now();
    let mut printed: BTreeMap<ShardId, (Phase, Instant)> = BTreeMap::new();
    let mut done_printed = 0;
    loop {
        let phases = match client.cluster_status().await {
            Ok(status) => moves.iter().map(|one| phase(&status, one)).collect::<Vec<_>>(),
            Err(error) if started.elapsed() < timeout => {
                if !quiet {
                    eprintln!("agentd: cannot read the cluster's status ({error}); trying again");
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        for (one, now) in moves.iter().zip(&phases) {
            let report = match printed.get(&one.shard) {
                None => true,
                Some((before, _)) if before.name() != now.name() => true,
                Some((before, at)) => before != now && at.elapsed() >= CATCH_UP_REPORT_INTERVAL,
            };
            if report {
                if !quiet {
                    outln!("[{:>6.1}s] {}: {}", started.elapsed().as_secs_f64(), one.shard, now.describe(one));
                }
                printed.insert(one.shard, (*now, Instant::now()));
            }
        }
        let done = phases.iter().filter(|phase| matches!(phase, Phase::Done { .. })).count();
        if moves.len() > 1 && done != done_printed && !quiet {
            outln!("[{:>6.1}s] {done} of {} moves done", started.elapsed().as_secs_f64(), moves.len());
            done_printed = done;
        }
        if done == moves.len() {
            return Ok(phases);
        }
        if started.elapsed() >= timeout {
            let pending: Vec<String> = moves
                .iter()
                .zip(&phases)
                .filter(|(_, phase)| !matches!(phase, Phase::Done { .. }))
                .map(|(one, phase)| format!("{}: {}", one.shard, phase.describe(one)))
                .collect();
            bail!(
                "{} of {} moves are not done after {}s ({}); they go on in the background: \
                 follow them with `agentd shard list`",
                pending.len(),
                moves.len(),
                timeout.as_secs(),
                pending.join("; ")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The moves as `--json` prints them, with the phase each reached.
pub(super) fn moves_json(moves: &[ShardMove], phases: Option<&[Phase]>) -> serde_json::Value {
    let rows: Vec<_> = moves
        .iter()
        .enumerate()
        .map(|(index, one)| {
            let phase = phases.and_then(|phases| phases.get(index));
            json!({
                "shard": one.shard.to_string(),
                "from": one.from,
                "to": one.to,
                "replicas": one.replicas,
                "phase": phase.map_or("recorded", |phase| phase.name()),
                "old_node_down": matches!(phase, Some(Phase::Done { old_node_down: true })),
            })
        })
        .collect();
    json!({ "moves": rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_protocol::api::{GroupStatus, NodeStatus};

    fn node(node_id: u64, reachable: bool, groups: Vec<GroupStatus>) -> NodeStatus {
        NodeStatus {
            node_id,
            addr: String::new(),
            reachable,
            groups,
            clock_ms: 0,
            clock_skew_ms: None,
            disk_free_bytes: None,
            disk_floor_bytes: 0,
            storage_full: false,
        }
    }

    fn view(leader: u64, voters: &[u64], learners: &[u64], lag: &[(u64, Option<u64>)]) -> GroupStatus {
        GroupStatus {
            group: GroupId::Shard(ShardId(3)),
            role: String::new(),
            term: 1,
            leader: Some(leader),
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            last_log_index: None,
            last_applied_index: None,
            snapshot_index: None,
            purged_index: None,
            replica_lag: lag.to_vec(),
        }
    }

    fn status(nodes: Vec<NodeStatus>) -> ClusterStatus {
        ClusterStatus { shards: 4, replication_factor: 3, nodes }
    }

    #[test]
    fn a_move_goes_through_its_phases_in_order() {
        let one = ShardMove { shard: ShardId(3), from: 1, to: 4, replicas: vec![4, 2, 3] };
        let on_leader = |voters: &[u64], learners: &[u64], lag: &[(u64, Option<u64>)]| {
            status(vec![
                node(1, true, vec![view(2, voters, learners, &[])]),
                node(2, true, vec![view(2, voters, learners, lag)]),
                node(4, true, vec![]),
            ])
        };
        assert_eq!(phase(&on_leader(&[1, 2, 3], &[], &[]), &one), Phase::Waiting);
        assert_eq!(
            phase(&on_leader(&[1, 2, 3], &[4], &[(4, Some(120))]), &one),
            Phase::CatchingUp { behind: Some(120) }
        );
        assert_eq!(phase(&on_leader(&[1, 2, 3, 4], &[], &[]), &one), Phase::SwappingVoters);
        assert_eq!(phase(&on_leader(&[2, 3, 4], &[], &[]), &one), Phase::DeletingOldCopy, "node 1 still hosts it");
        let after = status(vec![node(1, true, vec![]), node(2, true, vec![view(2, &[2, 3, 4], &[], &[])])]);
        assert_eq!(phase(&after, &one), Phase::Done { old_node_down: false });
        let old_down = status(vec![node(1, false, vec![]), node(2, true, vec![view(2, &[2, 3, 4], &[], &[])])]);
        assert_eq!(phase(&old_down, &one), Phase::Done { old_node_down: true });
    }

    #[test]
    fn without_a_leader_a_move_is_waiting() {
        let one = ShardMove { shard: ShardId(3), from: 1, to: 4, replicas: vec![4, 2, 3] };
        let follower_only = status(vec![node(2, true, vec![view(1, &[2, 3, 4], &[], &[])])]);
        assert_eq!(phase(&follower_only, &one), Phase::Waiting);
    }
}
