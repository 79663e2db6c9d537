//! The storage seam: what the log stores and state machines need of a disk.
//!
//! Production uses RocksDB ([`RocksDisk`](super::rocks_disk::RocksDisk)); the
//! simulator uses [`MemoryDisk`](super::memory_disk::MemoryDisk), which lives
//! outside a simulated host, survives its crashes and models the difference
//! between written and synced data. Both pass the same conformance suite
//! (`raft/tests/storage.rs`).
//!
//! The contract:
//! - a [`Batch`] is atomic: after a crash either all of it or none of it is
//!   there;
//! - a write is readable at once, and durable once a later [`Disk::sync`]
//!   completes;
//! - batches become durable in the order they were written (one write-ahead
//!   log): a crash keeps a prefix of the unsynced batches, never a later
//!   batch without an earlier one.

use std::io;

use futures_util::future::BoxFuture;
use openraft::storage::IOFlushed;
use tokio::sync::oneshot;

use crate::types::TypeConfig;
use crate::Error;

/// A key and its value, as a disk returns them.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

/// The column families (key spaces) of a node's store; see `keys.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    Log,
    Raft,
    State,
    Snapshot,
}

impl Cf {
    pub const ALL: [Cf; 4] = [Cf::Log, Cf::Raft, Cf::State, Cf::Snapshot];

    /// The RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::Raft => "raft",
            Cf::State => "state",
            Cf::Snapshot => "snapshot",
        }
    }
}

/// One change of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Changes written atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put { cf, key: key.into(), value: value.into() });
    }

    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange { cf, start: start.into(), end: end.into() });
    }

    /// Deletes `key`: the range from it to the first key after it.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        let start = key.into();
        let mut end = start.clone();
        end.push(0);
        self.delete_range(cf, start, end);
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A node's disk. Reads and writes are synchronous and short (RocksDB
/// memtables, or memory); only [`Disk::sync`] waits for the device.
pub trait Disk: Send + Sync + 'static {
    /// Writes `batch` atomically, unsynced: readable at once, durable after
    /// the next sync.
    fn write(&self, batch: Batch) -> Result<(), Error>;

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// Every `(key, value)` of `cf` in `[start, end)`, at most `limit` of
    /// them, in key order, from one consistent view.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, Error>;

    /// The last `(key, value)` of `cf` in `[start, end)`, if any.
    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, Error>;

    /// Completes `waiter` once everything written before this call is
    /// durable (or the sync failed). Returns once the waiter is queued; a
    /// full queue slows the caller down.
    fn sync(&self, waiter: SyncWaiter) -> BoxFuture<'_, ()>;

    /// Bytes free for this disk's writes on its device (`u64::MAX` for a
    /// disk with no such bound).
    fn free_bytes(&self) -> io::Result<u64>;
}

/// Someone waiting for their writes to become durable.
pub enum SyncWaiter {
    /// An openraft log append.
    Flushed(IOFlushed<TypeConfig>),
    /// An internal caller that awaits the sync (votes, installed snapshots).
    Notify(oneshot::Sender<io::Result<()>>),
}

impl SyncWaiter {
    /// Completes the waiter with the outcome of a sync (the error message of
    /// a failed sync, shared by every waiter of that sync).
    pub fn complete(self, result: &Result<(), String>) {
        let result = result
            .as_ref()
            .map(|_| ())
            .map_err(|error| io::Error::other(format!("syncing the write-ahead log: {error}")));
        match self {
            SyncWaiter::Flushed(callback) => callback.io_completed(result),
            // The waiter may have given up (its task was cancelled); nothing to tell.
            SyncWaiter::Notify(sender) => {
                let _ = sender.send(result);
            }
        }
    }
}
