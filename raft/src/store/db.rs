//! The node's one RocksDB instance, shared by the log stores and state
//! machines of every Raft group it hosts.

use std::io;
use std::path::Path;
use std::sync::Arc;

use agentd_protocol::ids::GroupId;
use openraft::storage::IOFlushed;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB};
use tokio::sync::oneshot;

use crate::store::keys::COLUMN_FAMILIES;
use crate::store::syncer::{SyncWaiter, Syncer};
use crate::store::{LogStore, StateMachine, StateReader};
use crate::types::TypeConfig;
use crate::Error;

/// A handle on the node's RocksDB instance. Cheap to clone; the database
/// closes, after its last pending sync, when the last handle is dropped
/// (log stores, state machines and state readers each hold one).
/// A key and its value, as RocksDB returns them.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    // Declared first so that it is dropped first: joining the syncer thread
    // releases the thread's handle on `rocks` before `rocks` itself drops.
    syncer: Syncer,
    rocks: Arc<DB>,
}

impl Db {
    /// Opens (or creates) the database in `path` and starts its syncer thread.
    pub fn open(path: &Path) -> Result<Db, Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = COLUMN_FAMILIES.map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let rocks = Arc::new(DB::open_cf_descriptors(&options, path, families)?);
        let syncer = Syncer::start(Arc::clone(&rocks))?;
        Ok(Db { inner: Arc::new(DbInner { syncer, rocks }) })
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

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // `open` creates every column family, so a missing one is a bug.
        self.inner.rocks.cf_handle(name).expect("column family created by Db::open")
    }

    /// Writes a batch without syncing: readable at once, durable after the
    /// next sync.
    pub(crate) fn write(&self, batch: WriteBatch) -> Result<(), Error> {
        Ok(self.inner.rocks.write(batch)?)
    }

    pub(crate) fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.inner.rocks.get_cf(self.cf(cf), key)?)
    }

    /// Every `(key, value)` of `cf` in `[start, end)`, at most `limit` of them,
    /// in key order. The iterator reads one consistent view of the database.
    pub(crate) fn scan(&self, cf: &str, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(end);
        let iterator =
            self.inner.rocks.iterator_cf_opt(self.cf(cf), read_options, IteratorMode::From(start, Direction::Forward));
        let mut pairs = Vec::new();
        for pair in iterator.take(limit) {
            pairs.push(pair?);
        }
        Ok(pairs)
    }

    /// The last `(key, value)` of `cf` in `[start, end)`, if any.
    pub(crate) fn last(&self, cf: &str, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(start);
        read_options.set_iterate_upper_bound(end);
        let mut iterator = self.inner.rocks.iterator_cf_opt(self.cf(cf), read_options, IteratorMode::End);
        Ok(iterator.next().transpose()?)
    }

    /// Calls `callback` once everything written so far is durable.
    pub(crate) async fn on_synced(&self, callback: IOFlushed<TypeConfig>) {
        self.inner.syncer.enqueue(SyncWaiter::Flushed(callback)).await;
    }

    /// Returns once everything written so far is durable.
    pub(crate) async fn synced(&self) -> io::Result<()> {
        let (sender, receiver) = oneshot::channel();
        self.inner.syncer.enqueue(SyncWaiter::Notify(sender)).await;
        receiver.await.unwrap_or_else(|_| Err(io::Error::other("the storage syncer dropped a sync request")))
    }
}
