//! Room on the data disk.
//!
//! A full disk must not take a node down: RocksDB fails the write that does
//! not fit, and a Raft group whose log store fails stops for good. So a node
//! keeps a free-space floor (`--min-free-disk`, as etcd's space quota and
//! CockroachDB's ballast do) and measures its disk every 200 ms. Under the
//! floor it takes no new writes:
//! - it refuses log entries and snapshots from leaders (they back off and
//!   retry, and the group commits on its other replicas);
//! - it stops standing for election and hands the leadership of each group
//!   it leads to the most caught-up other voter; it also stops those groups'
//!   heartbeats, so that a hand-off that does not take still ends with the
//!   other voters electing one of themselves once their lease runs out;
//! - its front doors answer writes with [`ApiError::StorageFull`]; reads and
//!   follow streams keep working.
//!
//! What it still writes fits in the floor: committed entries already in its
//! log being applied, votes, RocksDB's memtable flushes. Once the free space
//! is back above the floor plus a margin it takes writes again and stands
//! for election, and the leaders catch it up by themselves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agentd_protocol::ids::NodeId;
use openraft::async_runtime::watch::WatchReceiver;

use crate::host::{GroupHandle, RaftHost};
use agentd_protocol::limits::{DISK_CHECK_INTERVAL_MS, DISK_FREE_RESUME_DIVISOR};
use agentd_protocol::ApiError;

/// What the disk watcher remembers between measurements.
#[derive(Debug, Default)]
pub struct DiskWatch {
    /// The last measurement failed (warned once, not every round).
    unmeasurable: bool,
}

/// The free space of a node's data disk, as last measured, and whether it
/// is under the floor.
#[derive(Debug)]
pub struct DiskSpace {
    floor_bytes: u64,
    /// `u64::MAX` until the first measurement.
    free_bytes: AtomicU64,
    full: AtomicBool,
}

impl DiskSpace {
    pub fn new(floor_bytes: u64) -> Self {
        Self { floor_bytes, free_bytes: AtomicU64::new(u64::MAX), full: AtomicBool::new(false) }
    }

    pub fn floor_bytes(&self) -> u64 {
        self.floor_bytes
    }

    /// Free bytes at the last measurement, if there was one.
    pub fn free_bytes(&self) -> Option<u64> {
        Some(self.free_bytes.load(Ordering::Relaxed)).filter(|free| *free != u64::MAX)
    }

    /// Whether the node takes no new writes.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The answer to a write while the disk is full.
    pub fn refusal(&self, node: NodeId) -> ApiError {
        ApiError::StorageFull { node, free_bytes: self.free_bytes().unwrap_or(0), floor_bytes: self.floor_bytes }
    }

    /// Records a measurement. Answers `Some(full)` when the state changed:
    /// full under the floor, not full again only above the floor plus a
    /// quarter of it, so that a disk hovering at the floor does not flap.
    pub fn record(&self, free_bytes: u64) -> Option<bool> {
        self.free_bytes.store(free_bytes, Ordering::Relaxed);
        let resume_at = self.floor_bytes.saturating_add(self.floor_bytes / DISK_FREE_RESUME_DIVISOR);
        let full = self.is_full();
        if !full && free_bytes < self.floor_bytes {
            self.full.store(true, Ordering::Relaxed);
            return Some(true);
        }
        if full && free_bytes >= resume_at {
            self.full.store(false, Ordering::Relaxed);
            return Some(false);
        }
        None
    }
}

impl RaftHost {
    /// Measures the data disk forever (see the module documentation), with
    /// a gauge of the free bytes (`agentd_storage_free_bytes`) and one of the
    /// state (`agentd_storage_full`, 1 while full).
    pub async fn watch_disk_space(self) {
        let mut watch = DiskWatch::default();
        loop {
            tokio::time::sleep(Duration::from_millis(DISK_CHECK_INTERVAL_MS)).await;
            self.check_disk_space(&mut watch);
        }
    }

    /// Measures the data disk once and acts on it. The node calls it before
    /// it opens any group too, so that a node restarted on a full disk comes
    /// up taking no writes rather than failing on its first one.
    pub fn check_disk_space(&self, watch: &mut DiskWatch) {
        let free = match self.db().free_bytes() {
            Ok(free) => free,
            Err(error) => {
                if !watch.unmeasurable {
                    tracing::warn!(%error, "cannot measure the data disk's free space");
                }
                watch.unmeasurable = true;
                return;
            }
        };
        watch.unmeasurable = false;
        let node = self.node_id().to_string();
        let space = self.space();
        metrics::gauge!("agentd_storage_free_bytes", "node" => node.clone()).set(free as f64);
        match space.record(free) {
            Some(true) => {
                tracing::warn!(
                    free_bytes = free,
                    floor_bytes = space.floor_bytes(),
                    "the data disk is under its free-space floor: this node takes no new writes and gives up \
                     its leaderships until space is freed"
                );
                self.set_writable(false);
                self.hand_off_leaderships();
            }
            Some(false) => {
                tracing::info!(free_bytes = free, "the data disk has room again: this node takes writes again");
                self.set_writable(true);
            }
            None => {}
        }
        metrics::gauge!("agentd_storage_full", "node" => node).set(if space.is_full() { 1.0 } else { 0.0 });
    }

    /// Whether this node stands for election and, where it leads, sends
    /// heartbeats. A leader without heartbeats loses its followers once
    /// their lease runs out, and they elect one of themselves.
    pub(crate) fn set_writable(&self, writable: bool) {
        for handle in self.groups() {
            handle.raft.runtime_config().elect(writable && self.may_elect(handle.group));
            handle.raft.runtime_config().heartbeat(writable);
        }
    }

    /// Asks each group this node leads to move its leadership to the most
    /// caught-up other voter, without waiting for the hand-offs.
    fn hand_off_leaderships(&self) {
        for handle in self.groups() {
            if handle.raft.is_leader() {
                tracing::info!(group = %handle.group, "handing off leadership: the data disk is full");
                self.hand_off_leadership(&handle);
            }
        }
    }

    /// Asks `handle`'s group, which this node leads, to move its leadership
    /// to the most caught-up other voter, without waiting for the hand-off.
    pub fn hand_off_leadership(&self, handle: &GroupHandle) {
        let Some(target) = successor(handle, self.node_id()) else {
            tracing::debug!(group = %handle.group, "no other voter to hand the leadership to");
            return;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(error) = handle.raft.trigger().transfer_leader(target).await {
                tracing::warn!(group = %handle.group, %error, "the leadership hand-off failed");
            }
        });
    }
}

/// The voter other than `me` whose replicated log reaches furthest, as this
/// node (its leader) last saw it.
pub(crate) fn successor(handle: &GroupHandle, me: NodeId) -> Option<NodeId> {
    let membership = handle.raft.metrics().borrow_watched().membership_config.clone();
    let voters = membership.membership().voter_ids().filter(|id| *id != me).collect();
    crate::placement::successor_among(handle, &voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_under_the_floor_and_back_only_past_the_margin() {
        let space = DiskSpace::new(1000);
        assert_eq!(space.free_bytes(), None);
        assert_eq!(space.record(5000), None);
        assert!(!space.is_full());
        assert_eq!(space.record(1000), None, "at the floor is not under it");
        assert_eq!(space.record(999), Some(true));
        assert!(space.is_full());
        assert_eq!(space.record(1200), None, "above the floor but within the margin stays full");
        assert_eq!(space.record(1249), None);
        assert_eq!(space.record(1250), Some(false));
        assert!(!space.is_full());
        assert_eq!(space.free_bytes(), Some(1250));
        assert_eq!(
            space.refusal(3),
            ApiError::StorageFull { node: 3, free_bytes: 1250, floor_bytes: 1000 },
            "the refusal names the node and its numbers"
        );
    }
}
