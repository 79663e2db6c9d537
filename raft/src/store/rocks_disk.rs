//! The production [`Disk`]: one RocksDB instance per node, with the group
//! commit syncer thread (see `syncer.rs`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB,
};

use crate::store::disk::SyncWaiter;
use crate::store::disk::{Batch, Cf, Disk, KeyValue, Op};
use crate::store::syncer::{Failure, Syncer};
use crate::Error;

pub struct RocksDisk {
    // Declared first so that it is dropped first: joining the syncer thread
    // releases the thread's handle on `rocks` before `rocks` itself drops.
    syncer: Syncer,
    rocks: Arc<DB>,
    path: PathBuf,
    failure: Arc<Failure>,
}

impl RocksDisk {
    /// Opens (or creates) the database in `path` and starts its syncer thread.
    ///
    /// Damage is never repaired silently: RocksDB's default recovery drops
    /// everything after a damaged WAL record, which for a Raft voter means
    /// forgetting entries it acknowledged. Only a torn last record (a write
    /// cut short, so never synced or acknowledged) is tolerated; any other
    /// damage, and a damaged SST or MANIFEST, fails the open as
    /// [`Error::Corrupt`].
    pub fn open(path: &Path) -> Result<RocksDisk, Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        options.set_paranoid_checks(true);
        let families = Cf::ALL.map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let rocks = match DB::open_cf_descriptors(&options, path, families) {
            Ok(rocks) => Arc::new(rocks),
            Err(error) if error.kind() == rocksdb::ErrorKind::Corruption => {
                return Err(Error::Corrupt { what: format!("store in {}", path.display()), message: error.to_string() })
            }
            Err(error) => return Err(error.into()),
        };
        let failure = Arc::new(Failure::default());
        let syncer = Syncer::start(Arc::clone(&rocks), Arc::clone(&failure))?;
        Ok(RocksDisk { syncer, rocks, path: path.to_path_buf(), failure })
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // `open` creates every column family, so a missing one is a bug.
        self.rocks.cf_handle(cf.name()).expect("column family created by RocksDisk::open")
    }
}

impl Disk for RocksDisk {
    fn write(&self, batch: Batch) -> Result<(), Error> {
        if let Some(error) = self.failure.get() {
            return Err(Error::Io(io::Error::other(format!("the store takes no writes after a failed one ({error})"))));
        }
        let mut rocks_batch = WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                Op::Put { cf, key, value } => rocks_batch.put_cf(self.cf(cf), key, value),
                Op::DeleteRange { cf, start, end } => rocks_batch.delete_range_cf(self.cf(cf), start, end),
            }
        }
        self.rocks.write(rocks_batch).map_err(|error| {
            self.failure.record(error.as_ref());
            Error::from(error)
        })
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.rocks.get_cf(self.cf(cf), key)?)
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(end);
        let iterator =
            self.rocks.iterator_cf_opt(self.cf(cf), read_options, IteratorMode::From(start, Direction::Forward));
        let mut pairs = Vec::new();
        for pair in iterator.take(limit) {
            pairs.push(pair?);
        }
        Ok(pairs)
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(start);
        read_options.set_iterate_upper_bound(end);
        let mut iterator = self.rocks.iterator_cf_opt(self.cf(cf), read_options, IteratorMode::End);
        Ok(iterator.next().transpose()?)
    }

    fn sync(&self, waiter: SyncWaiter) -> BoxFuture<'_, ()> {
        Box::pin(self.syncer.enqueue(waiter))
    }

    fn free_bytes(&self) -> io::Result<u64> {
        // What an unprivileged writer may still use (`f_bavail`), as `df` shows it.
        let stats = rustix::fs::statvfs(&self.path)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }
}
