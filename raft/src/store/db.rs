//! The node's store handle, shared by the log stores and state machines of
//! every Raft group it hosts, over one [`Disk`].

use std::io;
use std::path::Path;
use std::sync::Arc;

use agentd_protocol::ids::GroupId;
use openraft::storage::IOFlushed;
use tokio::sync::oneshot;

use crate::state::group_state::AppliedState;
use crate::state::{StateMachine, StateReader};
use crate::store::disk::SyncWaiter;
use crate::store::disk::{Batch, Cf, Disk, KeyValue};
use crate::store::rocks_disk::RocksDisk;
use crate::store::{codec, keys, LogStore};
use crate::types::{LogId, StoredMembership, TypeConfig};
use crate::Error;

/// The format of what the store holds. 2: Raft leader ids are standard
/// Raft's (one leader per term). Bump it whenever stored bytes change meaning.
pub const STORE_FORMAT: u32 = 2;

/// A handle on the node's disk. Cheap to clone; the disk closes, after its
/// last pending sync, when the last handle is dropped (log stores, state
/// machines and state readers each hold one).
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    disk: Arc<dyn Disk>,
    bugs: PlantedBugs,
}

/// Bugs planted on purpose, for the simulator to prove that its checkers
/// catch them (`agentd sim run --bug NAME`). Production never sets any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Log appends are acknowledged to Raft at once, without a sync.
    pub ack_before_sync: bool,
    /// The state machine lets any orchestrator epoch append, not only the
    /// current one.
    pub skip_epoch_fence: bool,
}

impl Db {
    /// Opens (or creates) the RocksDB database in `path`.
    /// Refuses a store written in another format (see [`STORE_FORMAT`]).
    pub fn open(path: &Path) -> Result<Db, Error> {
        let db = Db::with_disk(Arc::new(RocksDisk::open(path)?));
        db.check_format()?;
        Ok(db)
    }

    /// Checks the store's format record, writing it into a new store. A
    /// store with data but no record was written in format 1. The record
    /// needs no sync of its own: batches become durable in order, so it is
    /// durable as soon as anything written after it is.
    fn check_format(&self) -> Result<(), Error> {
        let key = keys::format_key();
        let found = match self.get(keys::RAFT_CF, &key)? {
            Some(bytes) => codec::decode::<u32>(|| "store format record".to_string(), &bytes)?,
            None if self.is_empty()? => {
                let mut batch = Batch::default();
                batch.put(keys::RAFT_CF, key, codec::encode(&STORE_FORMAT)?);
                return self.write(batch);
            }
            None => 1,
        };
        if found == STORE_FORMAT {
            return Ok(());
        }
        let reason = match found {
            1 => "format 1 recorded Raft leader ids with openraft's multi-leader-per-term encoding",
            _ => "the format is newer than this build",
        };
        Err(Error::UnsupportedFormat { found, supported: STORE_FORMAT, reason })
    }

    /// Whether no column family holds a key.
    fn is_empty(&self) -> Result<bool, Error> {
        let end = [0xff; keys::GROUP_BYTES + keys::SUFFIX_BYTES_MAX + 1];
        for cf in Cf::ALL {
            if !self.scan(cf, &[], &end, 1)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A store over any disk (the simulator passes its in-memory disk).
    pub fn with_disk(disk: Arc<dyn Disk>) -> Db {
        Db::with_planted_bugs(disk, PlantedBugs::default())
    }

    /// A store with planted bugs; only the simulator uses this.
    pub fn with_planted_bugs(disk: Arc<dyn Disk>, bugs: PlantedBugs) -> Db {
        Db { inner: Arc::new(DbInner { disk, bugs }) }
    }

    pub(crate) fn bugs(&self) -> PlantedBugs {
        self.inner.bugs
    }

    /// The Raft log store of `group`.
    pub fn log_store(&self, group: GroupId) -> LogStore {
        LogStore::new(self.clone(), group)
    }

    /// The state machine of `group`, and a reader of its state for serving
    /// queries. Fails if the group's applied state cannot be read.
    pub fn state_machine(&self, group: GroupId) -> Result<(StateMachine, StateReader), Error> {
        StateMachine::open(self.clone(), group)
    }

    /// Writes a batch without syncing: readable at once, durable after the
    /// next sync.
    pub(crate) fn write(&self, batch: Batch) -> Result<(), Error> {
        self.inner.disk.write(batch)
    }

    pub(crate) fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.disk.get(cf, key)
    }

    /// Every `(key, value)` of `cf` in `[start, end)`, at most `limit` of them,
    /// in key order, from one consistent view.
    pub(crate) fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, Error> {
        self.inner.disk.scan(cf, start, end, limit)
    }

    /// The last `(key, value)` of `cf` in `[start, end)`, if any.
    pub(crate) fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, Error> {
        self.inner.disk.last(cf, start, end)
    }

    /// Calls `callback` once everything written so far is durable.
    pub(crate) async fn on_synced(&self, callback: IOFlushed<TypeConfig>) {
        if self.inner.bugs.ack_before_sync {
            // The planted bug: acknowledged at once, durable only when some
            // later sync (a vote, an installed snapshot) happens to cover it.
            callback.io_completed(Ok(()));
            return;
        }
        self.inner.disk.sync(SyncWaiter::Flushed(callback)).await;
    }

    /// Deletes what `group` stored (log, state, snapshot) but its vote, and
    /// records `rejoin_floor`; returns once both are durable. The vote stays
    /// so that a replica made here later never votes twice in a term; the
    /// floor keeps that replica from standing for election before its log
    /// reaches the floor (replaying the log from the start, it would meet
    /// memberships in which it once was the only voter).
    pub(crate) async fn delete_group(&self, group: GroupId, rejoin_floor: &LogId) -> Result<(), Error> {
        let vote = self.get(Cf::Raft, &keys::vote_key(group))?;
        let mut batch = Batch::default();
        for cf in Cf::ALL {
            batch.delete_range(cf, keys::group_prefix(group), keys::group_end(group));
        }
        if let Some(vote) = vote {
            batch.put(Cf::Raft, keys::vote_key(group), vote);
        }
        batch.put(Cf::Raft, keys::rejoin_key(group), codec::encode(rejoin_floor)?);
        self.write(batch)?;
        Ok(self.synced().await?)
    }

    /// The log id `group`'s replica must reach before it stands for
    /// election, if it was deleted here once and has not reached it yet.
    pub(crate) fn rejoin_floor(&self, group: GroupId) -> Result<Option<LogId>, Error> {
        match self.get(Cf::Raft, &keys::rejoin_key(group))? {
            Some(bytes) => Ok(Some(codec::decode(|| format!("rejoin floor of {group}"), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Forgets `group`'s rejoin floor (unsynced: if a crash loses this, the
    /// replica is held back again until it is seen past the floor again).
    pub(crate) fn clear_rejoin_floor(&self, group: GroupId) -> Result<(), Error> {
        let mut batch = Batch::default();
        batch.delete(Cf::Raft, keys::rejoin_key(group));
        self.write(batch)
    }

    /// Whether this disk holds a replica of `group`: applied state or log
    /// entries (a deleted replica leaves only its vote).
    pub(crate) fn holds_group(&self, group: GroupId) -> Result<bool, Error> {
        let (start, end) = (keys::group_prefix(group), keys::group_end(group));
        Ok(self.last(Cf::State, &start, &end)?.is_some() || self.last(Cf::Log, &start, &end)?.is_some())
    }

    /// The newest membership of `group` on this disk, applied or only logged.
    pub(crate) fn latest_membership(&self, group: GroupId) -> Result<StoredMembership, Error> {
        let applied: AppliedState = match self.get(Cf::State, &keys::applied_key(group))? {
            Some(bytes) => codec::decode(|| format!("applied state of {group}"), &bytes)?,
            None => AppliedState::default(),
        };
        let after = applied.last_applied.as_ref().map_or(0, |log_id| log_id.index + 1);
        let logged = self.log_store(group).last_membership_from(after)?;
        Ok(logged.unwrap_or(applied.membership))
    }

    /// Bytes free on the disk's device.
    pub(crate) fn free_bytes(&self) -> io::Result<u64> {
        self.inner.disk.free_bytes()
    }

    /// Returns once everything written so far is durable.
    pub(crate) async fn synced(&self) -> io::Result<()> {
        let (sender, receiver) = oneshot::channel();
        self.inner.disk.sync(SyncWaiter::Notify(sender)).await;
        receiver.await.unwrap_or_else(|_| Err(io::Error::other("the storage syncer dropped a sync request")))
    }
}
