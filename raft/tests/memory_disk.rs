//! The simulator's in-memory disk: openraft's conformance suite (the same
//! one RocksDB passes), and its crash model: what survives a crash is what
//! was synced plus, at most, a prefix of what was not.

use std::sync::Arc;

use agentd_protocol::ids::{GroupId, ShardId};
use agentd_raft::state::StateMachine;
use agentd_raft::store::memory_disk::DiskFaults;
use agentd_raft::store::{CrashMode, Db, LogStore, MemoryDisk};
use agentd_raft::types::{Entry, LogId, TypeConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;

const GROUP: GroupId = GroupId::Shard(ShardId(3));

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn blank(index: u64) -> Entry {
    Entry::new_blank(log_id(1, index))
}

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Arc<MemoryDisk>> for MemoryBuilder {
    async fn build(&self) -> Result<(Arc<MemoryDisk>, LogStore, StateMachine), StorageError<TypeConfig>> {
        let disk = MemoryDisk::new(7, DiskFaults::default());
        let db = Db::with_disk(disk.mount());
        let (state_machine, _reader) = db.state_machine(GroupId::Metadata).expect("open the state machine");
        Ok((disk, db.log_store(GroupId::Metadata), state_machine))
    }
}

#[tokio::test(start_paused = true)]
async fn conformance_suite_on_the_memory_disk() {
    Suite::test_all(MemoryBuilder).await.expect("conformance suite");
}

/// Appends and returns the outcome of the sync that makes them durable.
async fn append(store: &mut LogStore, entries: Vec<Entry>) -> Result<(), std::io::Error> {
    let (sender, receiver) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(sender)).await.expect("append");
    receiver.await.expect("the callback is called")
}

async fn indexes(disk: &Arc<MemoryDisk>) -> Vec<u64> {
    let mut store = Db::with_disk(disk.mount()).log_store(GROUP);
    store.try_get_log_entries(..).await.expect("read").iter().map(|entry| entry.index()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_crash_keeps_synced_writes_and_loses_unsynced_ones() {
    let disk = MemoryDisk::new(1, DiskFaults::default());
    let mut store = Db::with_disk(disk.mount()).log_store(GROUP);
    append(&mut store, (1..=3).map(blank).collect()).await.expect("synced");
    // Written but never synced: readable now, gone after the crash.
    store.append(vec![blank(4)], IOFlushed::noop()).await.expect("append");
    assert_eq!(store.try_get_log_entries(..).await.expect("read").len(), 4);
    let report = disk.crash(CrashMode::LoseUnsynced);
    assert_eq!(report.lost, 1);
    assert_eq!(indexes(&disk).await, vec![1, 2, 3]);
    // The handle of the crashed boot is detached.
    assert!(store.try_get_log_entries(..).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_torn_tail_keeps_only_a_prefix_of_unsynced_writes() {
    for seed in 0..20 {
        let disk = MemoryDisk::new(seed, DiskFaults::default());
        let mut store = Db::with_disk(disk.mount()).log_store(GROUP);
        append(&mut store, vec![blank(1)]).await.expect("synced");
        for index in 2..=6 {
            store.append(vec![blank(index)], IOFlushed::noop()).await.expect("append");
        }
        let report = disk.crash(CrashMode::KeepPrefix);
        let expected: Vec<u64> = (1..=1 + report.kept as u64).collect();
        assert_eq!(indexes(&disk).await, expected, "seed {seed}");
        assert_eq!(report.kept + report.lost, 5);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_fsync_is_reported_and_leaves_the_writes_unsynced() {
    let faults = DiskFaults { fsync_errors_per_million: 1_000_000, ..DiskFaults::default() };
    let disk = MemoryDisk::new(3, faults);
    let mut store = Db::with_disk(disk.mount()).log_store(GROUP);
    let error = append(&mut store, vec![blank(1)]).await.expect_err("the sync fails");
    assert!(error.to_string().contains("EIO"), "{error}");
    assert!(disk.fsync_failed());
    assert_eq!(disk.unsynced(), 1);
    disk.crash(CrashMode::LoseUnsynced);
    assert!(indexes(&disk).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn read_corruption_is_a_typed_error() {
    let faults = DiskFaults { read_errors_per_million: 1_000_000, ..DiskFaults::default() };
    let disk = MemoryDisk::new(4, faults);
    let db = Db::with_disk(disk.mount());
    let error = db.state_machine(GROUP).err().expect("the read fails");
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_wipe_empties_the_disk() {
    let disk = MemoryDisk::new(5, DiskFaults::default());
    let mut store = Db::with_disk(disk.mount()).log_store(GROUP);
    append(&mut store, (1..=2).map(blank).collect()).await.expect("synced");
    disk.crash(CrashMode::Wipe);
    assert!(indexes(&disk).await.is_empty());
}
