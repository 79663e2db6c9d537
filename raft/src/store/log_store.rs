//! The Raft log and vote of one group, kept in the shared RocksDB instance.
//!
//! Nothing is cached in memory: every read goes to RocksDB, so any clone of
//! the store (the log reader given to replication tasks is one) sees every
//! write as soon as the writing call returns.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use crate::store::disk::Batch;
use agentd_protocol::ids::GroupId;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;

use crate::store::codec::{decode, encode, io_error};
use crate::store::keys::{self, LOG_CF, RAFT_CF};
use crate::store::Db;
use crate::types::{Entry, LogId, StoredMembership, TypeConfig, Vote};
use crate::Error;

/// The log store of one Raft group. Cloning it is cheap; clones share the
/// same data, which is how it doubles as its own log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    group: GroupId,
}

impl LogStore {
    pub(crate) fn new(db: Db, group: GroupId) -> LogStore {
        LogStore { db, group }
    }

    /// The group this store belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    fn read_raft_record<T: DeserializeOwned>(&self, key: Vec<u8>, what: &str) -> Result<Option<T>, Error> {
        let Some(bytes) = self.db.get(RAFT_CF, &key)? else {
            return Ok(None);
        };
        decode(|| format!("{what} of {}", self.group), &bytes).map(Some)
    }

    fn write_raft_record<T: serde::Serialize>(&self, key: Vec<u8>, value: &T) -> Result<(), Error> {
        let mut batch = Batch::default();
        batch.put(RAFT_CF, key, encode(value)?);
        self.db.write(batch)
    }

    fn last_purged(&self) -> Result<Option<LogId>, Error> {
        self.read_raft_record(keys::purged_key(self.group), "last purged log id")
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<(u64, Entry), Error> {
        let corrupt = |message: String| Error::Corrupt { what: format!("log of {}", self.group), message };
        let index = keys::log_index(self.group, key).ok_or_else(|| corrupt(format!("malformed log key {key:02x?}")))?;
        let entry: Entry = decode(|| format!("log entry {index} of {}", self.group), value)?;
        if entry.index() != index {
            return Err(corrupt(format!("entry stored under index {index} has log id {}", entry.log_id)));
        }
        Ok((index, entry))
    }

    fn read_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, Error> {
        let end_key = match end {
            Some(end) => keys::log_key(self.group, end),
            None => keys::group_end(self.group),
        };
        let pairs = self.db.scan(LOG_CF, &keys::log_key(self.group, start), &end_key, usize::MAX)?;
        let mut entries = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let (index, entry) = self.decode_entry(&key, &value)?;
            // The log must have no holes; a gap means lost or corrupt data.
            if let Some(previous) = entries.last().map(|entry: &Entry| entry.index()) {
                if previous.checked_add(1) != Some(index) {
                    return Err(Error::Corrupt {
                        what: format!("log of {}", self.group),
                        message: format!("hole between entries {previous} and {index}"),
                    });
                }
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The last membership entry at index `from` or after.
    pub(crate) fn last_membership_from(&self, from: u64) -> Result<Option<StoredMembership>, Error> {
        let entries = self.read_entries(from, None)?;
        Ok(entries.into_iter().rev().find_map(|entry| match entry.payload {
            openraft::EntryPayload::Membership(membership) => {
                Some(StoredMembership::new(Some(entry.log_id), membership))
            }
            _ => None,
        }))
    }

    fn read_log_state(&self) -> Result<LogState<TypeConfig>, Error> {
        let last_purged_log_id = self.last_purged()?;
        let last = self.db.last(LOG_CF, &keys::log_key(self.group, 0), &keys::group_end(self.group))?;
        let last_log_id = match last {
            Some((key, value)) => Some(self.decode_entry(&key, &value)?.1.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), Error> {
        let mut batch = Batch::default();
        for entry in entries {
            batch.put(LOG_CF, keys::log_key(self.group, entry.index()), encode(&entry)?);
        }
        self.db.write(batch)
    }

    fn delete_after(&self, last_log_id: Option<LogId>) -> Result<(), Error> {
        let start = match last_log_id {
            Some(log_id) => keys::log_key_after(self.group, log_id.index),
            None => keys::log_key(self.group, 0),
        };
        let mut batch = Batch::default();
        batch.delete_range(LOG_CF, start, keys::group_end(self.group));
        self.db.write(batch)
    }

    fn delete_upto(&self, log_id: LogId) -> Result<(), Error> {
        // The purge record and the deletion go in one batch, so that the
        // state after a crash is either before or after the purge.
        let mut batch = Batch::default();
        batch.put(RAFT_CF, keys::purged_key(self.group), encode(&log_id)?);
        batch.delete_range(LOG_CF, keys::log_key(self.group, 0), keys::log_key_after(self.group, log_id.index));
        self.db.write(batch)
    }
}

/// The first index in `range`, and the first index after it (`None` when the
/// range is unbounded above). Overflowing bounds clamp to the largest index.
fn index_range(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.checked_add(1),
        Bound::Excluded(&end) => Some(end),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = index_range(&range);
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        self.read_entries(start, end).map_err(io_error)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_raft_record(keys::vote_key(self.group), "vote").map_err(io_error)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.read_log_state().map_err(io_error)
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_raft_record(keys::vote_key(self.group), vote).map_err(io_error)?;
        self.db.synced().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Unsynced: losing the last few updates only delays re-applying on
        // restart, and the WAL keeps writes in order, so a recovered value is
        // never ahead of the recovered log.
        self.write_raft_record(keys::committed_key(self.group), &committed).map_err(io_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let committed: Option<Option<LogId>> =
            self.read_raft_record(keys::committed_key(self.group), "committed log id").map_err(io_error)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One batch: either every entry of the append survives a crash or none.
        self.write_entries(entries).map_err(io_error)?;
        // The entries are readable now; the callback fires once they are durable.
        self.db.on_synced(callback).await;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.delete_after(last_log_id).map_err(io_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.delete_upto(log_id).map_err(io_error)
    }
}
