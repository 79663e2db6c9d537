//! The multi-raft host: every Raft group (the metadata group and the shards)
//! that one node replicates, sharing one RocksDB and one set of peer
//! connections.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use agentd_protocol::cluster::{ClusterResponse, GroupMembers, RaftCall, RaftRpcKind};
use agentd_protocol::frame::encode_body;
use agentd_protocol::ids::{GroupId, NodeId};
use agentd_protocol::sync::{read, write};
use agentd_protocol::ApiError;
use openraft::async_runtime::watch::WatchReceiver;

use crate::network::{serve_rpc, GroupNetwork};
use crate::peers::Peers;
use crate::space::DiskSpace;
use crate::state::StateReader;
use crate::store::Db;
use crate::types::{LogId, Raft, Runtime};
use crate::Error;

/// One hosted group: its Raft handle and a reader of its applied state.
#[derive(Clone)]
pub struct GroupHandle {
    pub group: GroupId,
    pub raft: Raft,
    pub state: StateReader,
}

/// A cheap-to-clone handle to the groups this node hosts.
#[derive(Clone)]
pub struct RaftHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    node_id: NodeId,
    db: Db,
    peers: Peers,
    config: Arc<openraft::Config>,
    /// Seeds openraft's randomness; each group derives its own from it.
    seed: u64,
    space: DiskSpace,
    groups: RwLock<BTreeMap<GroupId, GroupHandle>>,
    // Serialises group creation so a group is never opened twice.
    opening: tokio::sync::Mutex<()>,
    /// Other node ids whose Raft calls reached this node (see `handle_rpc`),
    /// each logged once.
    mistaken_for: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
}

impl RaftHost {
    /// `seed` drives openraft's randomness (election timeouts) in every
    /// group: production passes an OS-random seed, the simulator its own.
    /// Under `disk_floor_bytes` of free space the node takes no new writes
    /// (see `space.rs`).
    pub fn new(
        node_id: NodeId,
        db: Db,
        peers: Peers,
        config: Arc<openraft::Config>,
        seed: u64,
        disk_floor_bytes: u64,
    ) -> Self {
        Self {
            inner: Arc::new(HostInner {
                node_id,
                db,
                peers,
                config,
                seed,
                space: DiskSpace::new(disk_floor_bytes),
                groups: RwLock::new(BTreeMap::new()),
                opening: tokio::sync::Mutex::new(()),
                mistaken_for: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            }),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The free space of the data disk, and whether the node takes writes.
    pub fn space(&self) -> &DiskSpace {
        &self.inner.space
    }

    /// Opens (or returns the already open) group, recovering its state from disk.
    pub async fn open_group(&self, group: GroupId) -> Result<GroupHandle, Error> {
        let _opening = self.inner.opening.lock().await;
        if let Some(handle) = self.group(group) {
            return Ok(handle);
        }
        let log_store = self.inner.db.log_store(group);
        let (state_machine, state) = self.inner.db.state_machine(group)?;
        let network = GroupNetwork { peers: self.inner.peers.clone(), group };
        // openraft draws its randomness from the task-local seed of the
        // scope it is started in; every task it spawns inherits a derived one.
        let seed = group_seed(self.inner.seed, self.inner.node_id, group);
        let start = Raft::new(self.inner.node_id, self.inner.config.clone(), network, log_store, state_machine);
        let raft =
            Runtime::scope(seed, start).await.map_err(|fatal| Error::Raft(format!("cannot start {group}: {fatal}")))?;
        if self.space().is_full() {
            raft.runtime_config().elect(false);
            raft.runtime_config().heartbeat(false);
        }
        if self.inner.db.rejoin_floor(group)?.is_some() {
            raft.runtime_config().elect(false);
        }
        let handle = GroupHandle { group, raft, state };
        write(&self.inner.groups).insert(group, handle.clone());
        tracing::debug!(%group, "group opened");
        Ok(handle)
    }

    /// Deletes this node's replica of `group`, given `removed_at`: the log
    /// id of a committed membership of the group without this node. The
    /// group is stopped first. If its copy's newest membership leaves this
    /// node out, or is older than `removed_at`, the copy has taken no part in
    /// the group since it was removed (a leader sends entries only to the
    /// members of its newest membership, so any entry it got later would
    /// follow a newer membership counting it in), and its data is deleted
    /// durably, all but its vote. Otherwise it was added back and is opened
    /// again. Answers whether the replica was deleted.
    pub async fn retire_group(&self, group: GroupId, removed_at: &LogId) -> Result<bool, Error> {
        let opening = self.inner.opening.lock().await;
        let Some(handle) = write(&self.inner.groups).remove(&group) else {
            return Ok(false);
        };
        if let Err(error) = handle.raft.shutdown().await {
            tracing::warn!(%group, %error, "retired group did not shut down cleanly");
        }
        // The copy's newest membership: if it counts this node in and is
        // as new as the removal, this node was added back since.
        let known = self.inner.db.latest_membership(group)?;
        let counted = known.membership().get_node(&self.node_id()).is_some();
        if counted && known.log_id().as_ref().is_some_and(|known| known >= removed_at) {
            drop(opening);
            tracing::info!(%group, "this node was added back to the group: keeping its replica");
            self.open_group(group).await?;
            return Ok(false);
        }
        self.inner.db.delete_group(group, removed_at).await?;
        tracing::info!(%group, %removed_at, "replica removed: the group's data on this node is deleted");
        Ok(true)
    }

    /// Lets each replica made after a deletion stand for election once its
    /// log has reached its rejoin floor (see `Db::delete_group`).
    pub fn release_rejoined(&self) -> Result<(), Error> {
        for handle in self.groups() {
            let Some(floor) = self.inner.db.rejoin_floor(handle.group)? else { continue };
            let applied = handle.raft.metrics().borrow_watched().last_applied;
            if applied.as_ref().is_some_and(|applied| *applied >= floor) {
                tracing::info!(group = %handle.group, %floor, "the new replica caught up: it may stand for election");
                self.inner.db.clear_rejoin_floor(handle.group)?;
                handle.raft.runtime_config().elect(!self.space().is_full());
            }
        }
        Ok(())
    }

    /// Whether `group`'s replica here may stand for election as far as its
    /// history goes (a disk that is full is another matter).
    pub fn may_elect(&self, group: GroupId) -> bool {
        !matches!(self.inner.db.rejoin_floor(group), Ok(Some(_)))
    }

    /// Whether this node's disk holds `group` (it has voted or followed in it).
    pub fn holds_group(&self, group: GroupId) -> Result<bool, Error> {
        self.inner.db.holds_group(group)
    }

    /// The voters and learners of `group`'s latest membership if this node
    /// has applied it (a quorum committed it), else `None`.
    pub fn committed_members(&self, group: GroupId) -> Option<GroupMembers> {
        let handle = self.group(group)?;
        let metrics = handle.raft.metrics().borrow_watched().clone();
        let stored = &metrics.membership_config;
        let log_id = stored.log_id().as_ref()?;
        let applied = metrics.last_applied.as_ref()?.index;
        if log_id.index > applied {
            return None;
        }
        Some(GroupMembers {
            voters: stored.membership().voter_ids().collect(),
            learners: stored.membership().learner_ids().collect(),
            log_id: encode_body(log_id).ok()?,
        })
    }

    pub fn group(&self, group: GroupId) -> Option<GroupHandle> {
        read(&self.inner.groups).get(&group).cloned()
    }

    pub fn groups(&self) -> Vec<GroupHandle> {
        read(&self.inner.groups).values().cloned().collect()
    }

    /// Answers a Raft RPC from a peer. A group this node does not host yet is
    /// refused; the sender backs off and retries, which is what a new replica
    /// needs while its placement is still replicating to it. While the disk
    /// is full, new entries and snapshots are refused the same way.
    pub async fn handle_rpc(&self, to: NodeId, group: GroupId, kind: RaftRpcKind, payload: &[u8]) -> ClusterResponse {
        if to != self.node_id() {
            // The caller knows this address as another node's (this machine
            // came back under a new id): answering would speak for that node.
            if agentd_protocol::sync::lock(&self.inner.mistaken_for).insert(to) {
                tracing::warn!(
                    node = to,
                    "refusing Raft calls meant for node {to}: this address is node {}'s now \
                     (drain and remove node {to} to stop them)",
                    self.node_id()
                );
            }
            metrics::counter!("agentd_raft_wrong_node_calls_total").increment(1);
            return ClusterResponse::Error(ApiError::WrongNode { expected: to, found: self.node_id() });
        }
        let Some(handle) = self.group(group) else {
            return ClusterResponse::Error(ApiError::NotReplica { group: group.to_string() });
        };
        let space = self.space();
        let refusal = space.is_full().then(|| space.refusal(self.node_id()));
        match serve_rpc(&handle.raft, kind, payload, refusal).await {
            Ok(response) => response,
            Err(Error::Refused(error)) => ClusterResponse::Error(error),
            Err(error) => ClusterResponse::Error(ApiError::Malformed { message: error.to_string() }),
        }
    }

    /// Answers a batch of Raft RPCs from one peer. The calls are for
    /// different groups, so they run side by side.
    pub async fn handle_rpc_batch(&self, calls: &[RaftCall]) -> Vec<ClusterResponse> {
        let answers = calls.iter().map(|call| self.handle_rpc(call.to, call.group, call.kind, &call.payload));
        futures_util::future::join_all(answers).await
    }

    /// Stops every group's Raft tasks.
    pub async fn shutdown(&self) {
        for handle in self.groups() {
            if let Err(error) = handle.raft.shutdown().await {
                tracing::warn!(group = %handle.group, %error, "group did not shut down cleanly");
            }
        }
    }
}

/// A group's seed: the host seed mixed with the node and the group, so that
/// groups (and nodes sharing a seed) draw different election timeouts.
fn group_seed(seed: u64, node_id: NodeId, group: GroupId) -> u64 {
    let mut mixed = seed ^ node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(group.storage_key());
    mixed ^= mixed >> 33;
    mixed = mixed.wrapping_mul(0xff51_afd7_ed55_8ccd);
    mixed ^ (mixed >> 33)
}
