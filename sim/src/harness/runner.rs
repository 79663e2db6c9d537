//! The harness's hand on the simulation: stepping it, and applying each
//! fault of the plan to the hosts, the network, the disks and the clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentd_protocol::ids::GroupId;
use agentd_raft::store::memory_disk::DiskFaults;
use agentd_raft::store::CrashMode;
use openraft::async_runtime::watch::WatchReceiver;

use agentd_protocol::sync::lock;

use crate::faults::Fault;
use crate::world::{HostCommand, World};

pub(super) struct Runner<'a> {
    pub(super) sim: turmoil::Sim<'a>,
    pub(super) world: Arc<World>,
    down: BTreeSet<u64>,
    /// Nodes that stopped on their own, and when their supervisor restarts them.
    restarts: BTreeMap<u64, Duration>,
    /// Node ids whose machine was wiped (it came back under a new id), still
    /// to be drained and removed, and when the operator next asks.
    replacing: BTreeSet<u64>,
    next_replace: Duration,
}

/// How long a supervisor waits before restarting a node that stopped.
const SUPERVISOR_DELAY: Duration = Duration::from_millis(200);
/// How often the operator asks again to drain and remove a wiped machine's old id.
const REPLACE_INTERVAL: Duration = Duration::from_millis(500);

impl<'a> Runner<'a> {
    pub(super) fn new(sim: turmoil::Sim<'a>, world: Arc<World>) -> Runner<'a> {
        Runner {
            sim,
            world,
            down: BTreeSet::new(),
            restarts: BTreeMap::new(),
            replacing: BTreeSet::new(),
            next_replace: Duration::ZERO,
        }
    }

    pub(super) fn host_name(node: u64) -> String {
        format!("n{node}")
    }

    pub(super) fn trace(&self, line: impl AsRef<str>) {
        self.world.trace_at(self.sim.elapsed(), line);
    }

    pub(super) fn step(&mut self) -> Result<(), String> {
        self.sim.step().map(|_| ()).map_err(|error| format!("the simulation failed: {error}"))
    }

    fn crash(&mut self, node: u64, mode: CrashMode) {
        if self.down.contains(&node) {
            return;
        }
        // The harness's handles go first, so that the node's socket is
        // released inside the crash (turmoil unbinds it there).
        self.world.handles().remove(&node);
        self.world.commands().remove(&node);
        self.sim.crash(Self::host_name(node));
        let report = self.world.disks[&node].crash(mode);
        self.down.insert(node);
        self.trace(format!(
            "n{node} crashed: {} unsynced writes kept, {} lost{}",
            report.kept,
            report.lost,
            if report.torn { ", the next one torn" } else { "" }
        ));
    }

    pub(super) fn restart(&mut self, node: u64) {
        self.restarts.remove(&node);
        if !self.down.remove(&node) {
            return;
        }
        self.sim.bounce(Self::host_name(node));
    }

    pub(super) fn heal(&mut self) {
        let hosts: Vec<String> = (1..=self.world.options.nodes).map(Self::host_name).collect();
        for a in &hosts {
            for b in &hosts {
                if a != b {
                    self.sim.repair(a.as_str(), b.as_str());
                }
            }
        }
    }

    pub(super) fn apply(&mut self, fault: &Fault) {
        self.trace(format!("fault: {fault}"));
        let nodes = 1..=self.world.options.nodes;
        match fault {
            Fault::Crash { node, keep_unsynced } => {
                self.crash(*node, if *keep_unsynced { CrashMode::KeepPrefix } else { CrashMode::LoseUnsynced })
            }
            Fault::Wipe { node } => self.wipe(*node),
            Fault::Restart { node } => self.restart(*node),
            Fault::PowerLoss => nodes.for_each(|node| self.crash(node, CrashMode::LoseUnsynced)),
            Fault::RestartAll => nodes.for_each(|node| self.restart(node)),
            Fault::Partition { a, b } => self.sim.partition(Self::host_name(*a), Self::host_name(*b)),
            Fault::OneWay { from, to } => self.sim.partition_oneway(Self::host_name(*from), Self::host_name(*to)),
            Fault::Isolate { node } => self.isolate(*node),
            Fault::Heal => self.heal(),
            Fault::Delay { max } => self.sim.set_max_message_latency(*max),
            Fault::Loss { per_mille } => self.sim.set_fail_rate(f64::from(*per_mille) / 1000.0),
            Fault::LossEnd => {
                self.sim.set_fail_rate(0.0);
                self.heal();
            }
            Fault::DiskFaults { node, fsync_per_million, read_per_million } => {
                self.world.disks[node].set_faults(DiskFaults {
                    fsync_errors_per_million: *fsync_per_million,
                    read_errors_per_million: *read_per_million,
                    ..DiskFaults::default()
                })
            }
            Fault::DiskFaultsEnd { node } => self.world.disks[node].set_faults(DiskFaults::default()),
            Fault::DiskFull { node } => self.world.disks[node].set_free_bytes(0),
            Fault::DiskRoom { node } => self.world.disks[node].set_free_bytes(u64::MAX),
            Fault::ClockJump { node, delta_ms } => {
                self.world.clocks[node].fetch_add(*delta_ms, Ordering::Relaxed);
            }
            Fault::LeaderTransfer { shard } => {
                for node in nodes {
                    self.world.send(node, HostCommand::TransferLeader { shard: *shard });
                }
            }
            Fault::Snapshot { node } => {
                self.world.send(*node, HostCommand::Snapshot);
            }
            Fault::DuplicateWake { node } => {
                self.world.send(*node, HostCommand::DuplicateWake);
            }
            Fault::Duplicate { per_mille } => {
                self.world.duplicate_per_million.store(per_mille * 1000, Ordering::Relaxed)
            }
            Fault::DuplicateEnd => self.world.duplicate_per_million.store(0, Ordering::Relaxed),
            Fault::ShrinkShard { shard, without } if !self.names_replaced(*shard) => {
                self.shrink_shard(*shard, self.world.node_id(*without))
            }
            Fault::RestoreShard { shard } if !self.names_replaced(*shard) => {
                let original = self.world.placements().get(shard).cloned();
                if let Some(original) = original {
                    self.place(*shard, original);
                }
            }
            Fault::ShrinkShard { .. } | Fault::RestoreShard { .. } => {
                self.trace("placement fault skipped: the shard's replicas name a node being replaced")
            }
        }
    }

    /// A machine loses its disk. It comes back empty under a new node id, as
    /// an operator brings back a wiped server (`--join` with a new
    /// `--node-id`), and the old id is drained and removed. With the planted
    /// bug `wipe-same-id` it comes back under its old id instead: a voter
    /// that lost its log and its votes.
    fn wipe(&mut self, machine: u64) {
        let same_id = self.world.options.bug == Some(super::Bug::WipeSameId);
        if !self.replacing.is_empty() || !self.disk_loss_survivable(machine) {
            // Losing a disk while another wiped machine is still being
            // replaced, or while a shard it votes in has fewer than three
            // settled copies, can lose a majority of a shard's copies:
            // beyond what replication promises.
            self.trace(format!(
                "n{machine} crashes but keeps its disk: a shard it holds has too few copies to lose one"
            ));
            self.crash(machine, CrashMode::LoseUnsynced);
            return;
        }
        self.crash(machine, CrashMode::Wipe);
        self.world.initialised().remove(&machine);
        if same_id {
            return;
        }
        let (old, new) = self.world.renumber(machine);
        self.replacing.insert(old);
        self.trace(format!("n{machine} comes back as node {new}; node {old} is to be drained and removed"));
    }

    /// Whether every group the node on `machine` votes in keeps a majority
    /// of intact copies without it: the group's leader sees a settled
    /// membership (not joint, no learner being added) of at least three
    /// voters, and the shard's placement keeps at least three replicas.
    fn disk_loss_survivable(&self, machine: u64) -> bool {
        let node = self.world.node_id(machine);
        let handles = self.world.handles();
        let placements = handles.values().find_map(|handle| {
            let metadata = handle.host().group(GroupId::Metadata)?;
            metadata.raft.is_leader().then(|| metadata.state.placements().ok()).flatten()
        });
        let Some(placements) = placements else { return false };
        if placements.iter().any(|(_, replicas)| replicas.contains(&node) && replicas.len() < 3) {
            return false;
        }
        let mut groups = vec![GroupId::Metadata];
        groups.extend(placements.iter().map(|(shard, _)| GroupId::Shard(*shard)));
        groups.into_iter().all(|group| {
            let views: Vec<_> = handles
                .values()
                .filter_map(|handle| handle.host().group(group))
                .map(|handle| handle.raft.metrics().borrow_watched().clone())
                .collect();
            let counted =
                views.iter().any(|metrics| metrics.membership_config.membership().voter_ids().any(|v| v == node));
            let settled = views.iter().filter(|metrics| metrics.state.is_leader()).any(|metrics| {
                let membership = metrics.membership_config.membership();
                membership.get_joint_config().len() == 1
                    && membership.voter_ids().count() >= 3
                    && membership.learner_ids().count() == 0
            });
            !counted || settled
        })
    }

    /// The operator's side of a replacement, every [`REPLACE_INTERVAL`]:
    /// asks the cluster to drain and remove each old id, and once one is
    /// removed, names the replica that took its place in the placements the
    /// run restores.
    pub(super) fn replace(&mut self) {
        let now = self.sim.elapsed();
        if self.replacing.is_empty() || now < self.next_replace {
            return;
        }
        self.next_replace = now + REPLACE_INTERVAL;
        let removed = lock(&self.world.removed).clone();
        let done: Vec<u64> = self.replacing.intersection(&removed).copied().collect();
        for old in done {
            self.replacing.remove(&old);
            self.forget_in_placements(old);
        }
        for old in self.replacing.clone() {
            for machine in 1..=self.world.options.nodes {
                self.world.send(machine, HostCommand::Replace { old });
            }
        }
    }

    /// Whether every wiped machine's old id is drained and removed.
    pub(super) fn replaced(&self) -> bool {
        self.replacing.is_empty()
    }

    /// Puts, in every recorded placement that names `old`, the replica that
    /// took its place (the node the drain chose, as the cluster places the
    /// shard now), or else a live node the placement does not name.
    fn forget_in_placements(&mut self, old: u64) {
        let current: BTreeMap<u32, Vec<u64>> = self
            .world
            .handles()
            .values()
            .find_map(|handle| handle.host().group(GroupId::Metadata)?.state.placements().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(shard, replicas)| (shard.0, replicas))
            .collect();
        let live: Vec<u64> = (1..=self.world.options.nodes).map(|machine| self.world.node_id(machine)).collect();
        let mut placements = self.world.placements();
        for (shard, replicas) in placements.iter_mut() {
            let Some(at) = replicas.iter().position(|node| *node == old) else { continue };
            let now_placed = current.get(shard).cloned().unwrap_or_default();
            let successor = now_placed
                .iter()
                .chain(&live)
                .copied()
                .find(|node| *node != old && !replicas.contains(node) && live.contains(node));
            match successor {
                Some(successor) => replicas[at] = successor,
                None => {
                    replicas.remove(at);
                }
            }
        }
    }

    /// Whether the run's recorded placement of `shard` names an id that is
    /// being replaced (drained and removed): it is not to be placed again.
    fn names_replaced(&self, shard: u32) -> bool {
        self.world
            .placements()
            .get(&shard)
            .is_some_and(|replicas| replicas.iter().any(|node| self.replacing.contains(node)))
    }

    /// Cuts `node` off from every other node, both ways.
    fn isolate(&mut self, node: u64) {
        for other in 1..=self.world.options.nodes {
            if other != node {
                self.sim.partition(Self::host_name(node), Self::host_name(other));
            }
        }
    }

    /// Places `shard` on its formed replicas less `without` (or less its
    /// first replica when `without` holds none), keeping at least one.
    fn shrink_shard(&mut self, shard: u32, without: u64) {
        let original = { self.world.placements().get(&shard).cloned() }.unwrap_or_default();
        let mut replicas: Vec<u64> = original.iter().copied().filter(|node| *node != without).collect();
        if replicas.len() == original.len() && replicas.len() > 1 {
            replicas.remove(0);
        }
        if !replicas.is_empty() && replicas.len() < original.len() {
            self.place(shard, replicas);
        }
    }

    /// Re-proposes every shard placement that differs from the formed
    /// cluster's, as an operator would after the faults.
    pub(super) fn restore_placements(&mut self) {
        let current = self.world.handles().values().find_map(|handle| {
            let metadata = handle.host().group(GroupId::Metadata)?;
            metadata.raft.is_leader().then(|| metadata.state.placements().ok()).flatten()
        });
        let Some(current) = current else { return };
        let current: BTreeMap<u32, Vec<u64>> =
            current.into_iter().map(|(shard, replicas)| (shard.0, replicas)).collect();
        let wanted = self.world.placements().clone();
        for (shard, replicas) in wanted {
            if current.get(&shard) != Some(&replicas) && !self.names_replaced(shard) {
                self.place(shard, replicas);
            }
        }
    }

    /// Asks every node to place `shard` on `replicas`; the metadata leader does.
    fn place(&mut self, shard: u32, replicas: Vec<u64>) {
        for node in 1..=self.world.options.nodes {
            self.world.send(node, HostCommand::Place { shard, replicas: replicas.clone() });
        }
    }

    /// A node whose disk failed a sync, or whose software stopped, is
    /// restarted, as a supervisor restarts a process that exited.
    pub(super) fn supervise(&mut self) {
        let now = self.sim.elapsed();
        let due: Vec<u64> = self.restarts.iter().filter(|(_, at)| **at <= now).map(|(node, _)| *node).collect();
        for node in due {
            self.trace(format!("n{node}: its supervisor restarts it"));
            self.restart(node);
        }
        for node in 1..=self.world.options.nodes {
            if self.down.contains(&node) {
                continue;
            }
            let stopped = if self.world.disks[&node].fsync_failed() {
                // After a failed fsync the kernel may have dropped the
                // dirty pages: what was not synced is gone.
                Some(("a failed fsync", CrashMode::LoseUnsynced))
            } else if !self.sim.is_host_running(Self::host_name(node)) {
                Some(("its process exited", CrashMode::ProcessExit))
            } else {
                None
            };
            if let Some((why, mode)) = stopped {
                self.trace(format!("n{node} stopped after {why}"));
                self.crash(node, mode);
                self.restarts.insert(node, now + SUPERVISOR_DELAY);
            }
        }
    }
}
