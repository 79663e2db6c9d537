//! The harness's hand on the simulation: stepping it, and applying each
//! fault of the plan to the hosts, the network, the disks and the clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentd_protocol::ids::GroupId;
use agentd_raft::store::memory_disk::DiskFaults;
use agentd_raft::store::CrashMode;

use crate::faults::Fault;
use crate::world::{HostCommand, World};

pub(super) struct Runner<'a> {
    pub(super) sim: turmoil::Sim<'a>,
    pub(super) world: Arc<World>,
    down: BTreeSet<u64>,
    /// Nodes that stopped on their own, and when their supervisor restarts them.
    restarts: BTreeMap<u64, Duration>,
}

/// How long a supervisor waits before restarting a node that stopped.
const SUPERVISOR_DELAY: Duration = Duration::from_millis(200);

impl<'a> Runner<'a> {
    pub(super) fn new(sim: turmoil::Sim<'a>, world: Arc<World>) -> Runner<'a> {
        Runner { sim, world, down: BTreeSet::new(), restarts: BTreeMap::new() }
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
            Fault::Wipe { node } => {
                self.crash(*node, CrashMode::Wipe);
                self.world.initialised().remove(node);
            }
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
            Fault::ShrinkShard { shard, without } => self.shrink_shard(*shard, *without),
            Fault::RestoreShard { shard } => {
                let original = self.world.placements().get(shard).cloned();
                if let Some(original) = original {
                    self.place(*shard, original);
                }
            }
        }
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
            if current.get(&shard) != Some(&replicas) {
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
