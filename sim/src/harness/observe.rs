//! Looking at the simulated cluster from outside its hosts: what every
//! replica holds, whether the cluster converged, and reports for failures.

use std::collections::{BTreeMap, BTreeSet};

use agentd_protocol::ids::{GroupId, SessionId, ShardId};
use openraft::async_runtime::watch::WatchReceiver;

use crate::checkers::Replica;
use crate::world::World;

/// Everything each live node holds, session by session.
pub(super) fn scan_replicas(world: &World) -> BTreeMap<u64, Replica> {
    let mut replicas = BTreeMap::new();
    for (node, handle) in world.handles().iter() {
        let mut replica = Replica::new();
        for group in handle.host().groups() {
            if !matches!(group.group, GroupId::Shard(_)) {
                continue;
            }
            let Ok(sessions) = group.state.session_ids() else { continue };
            for session_id in sessions {
                // A read that fails (an injected read fault) ends what this replica shows.
                let events = group.state.events_from(session_id, 1).unwrap_or_default();
                replica.insert(session_id, events);
            }
        }
        replicas.insert(*node, replica);
    }
    replicas
}

/// Remembers every shard's replicas as the formed cluster placed them.
pub(super) fn record_placements(world: &World) {
    let placements = world.handles().values().find_map(|handle| {
        let metadata = handle.host().group(GroupId::Metadata)?;
        metadata.state.placements().ok()
    });
    if let Some(placements) = placements {
        *world.placements() =
            placements.into_iter().map(|(shard, replicas)| (shard.0, replicas)).collect::<BTreeMap<_, _>>();
    }
}

/// A session as its shard leader holds it: status, epoch and last events.
pub(super) fn describe_session(world: &World, session_id: SessionId) -> String {
    for handle in world.handles().values() {
        let Ok(shard) = handle.service().shard_of(session_id) else { continue };
        let Some(group) = handle.host().group(GroupId::Shard(shard)) else { continue };
        if !group.raft.is_leader() {
            continue;
        }
        let Ok(Some(info)) = group.state.session(session_id) else { continue };
        let from = info.last_seq.saturating_sub(3) + 1;
        let last: Vec<&str> = group
            .state
            .events(session_id, from, 3)
            .map(|events| events.iter().map(|event| event.payload.type_name()).collect())
            .unwrap_or_default();
        return format!(
            "{session_id} ({shard} led by n{}: {:?}, stop reason {:?}, epoch {}, last seq {}, last events {})",
            handle.node_id(),
            info.status,
            info.stop_reason,
            info.epoch,
            info.last_seq,
            last.join(" ")
        );
    }
    format!("{session_id} (no leader holds it)")
}

/// Each group's state on each live node, for a liveness report: role,
/// term and last applied index.
pub(super) fn group_report(world: &World, shards: u32) -> String {
    let handles = world.handles();
    let mut groups = vec![GroupId::Metadata];
    groups.extend((0..shards).map(|shard| GroupId::Shard(ShardId(shard))));
    let mut lines = Vec::new();
    for group in groups {
        let mut cells = Vec::new();
        for (node, handle) in handles.iter() {
            let Some(handle) = handle.host().group(group) else { continue };
            let metrics = handle.raft.metrics().borrow_watched().clone();
            let host = handles[node].host();
            cells.push(format!(
                "n{node} {:?} term {} vote {} last log {:?} applied {:?} voters {:?}{}",
                metrics.state,
                metrics.current_term,
                metrics.vote,
                metrics.last_log_index,
                metrics.last_applied,
                metrics.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                if host.may_elect(group) { "" } else { " (waits for its rejoin floor)" }
            ));
        }
        lines.push(format!("{group}: {}", cells.join("; ")));
    }
    lines.join(" | ")
}

/// Whether every shard has a leader that every replica agrees on and has
/// fully applied.
pub(super) fn converged(world: &World, shards: u32) -> bool {
    let handles = world.handles();
    if handles.len() as u64 != world.options.nodes {
        return false;
    }
    for shard in 0..shards {
        let group = GroupId::Shard(ShardId(shard));
        let mut leader = None;
        let mut applied = BTreeSet::new();
        let mut replicas = 0;
        for (node, handle) in handles.iter() {
            let Some(handle) = handle.host().group(group) else { continue };
            let metrics = handle.raft.metrics().borrow_watched().clone();
            replicas += 1;
            if metrics.state.is_leader() {
                if leader.is_some() {
                    return false;
                }
                leader = Some(*node);
            }
            applied.insert(metrics.last_applied.map(|log_id| log_id.index));
        }
        if leader.is_none() || applied.len() != 1 || replicas < world.options.nodes.min(3) {
            return false;
        }
    }
    true
}
