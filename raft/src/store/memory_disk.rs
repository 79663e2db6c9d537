//! An in-memory [`Disk`] for the simulator, with faults.
//!
//! The disk lives outside the simulated host: a host crash drops the host's
//! runtime, while the `MemoryDisk` keeps what was durable and decides what
//! of the unsynced tail survives ([`MemoryDisk::crash`]). A host mounts it
//! on every boot ([`MemoryDisk::mount`]); handles of an earlier boot are
//! detached and fail.
//!
//! Faults, all drawn from the disk's own seeded generator:
//! - sync latency (a uniform range), which is what makes the unsynced window
//!   real;
//! - fsync errors: the sync fails, its waiters get the error and the writes
//!   it covered stay unsynced (they may be lost in a later crash);
//! - read corruption in checksummed data: a read fails with
//!   `Error::Corrupt` (the checksum catches it; data is never silently
//!   wrong);
//! - on crash: every unsynced batch lost, a prefix of them kept (the last
//!   one torn and so dropped by its checksum), or the whole disk wiped.
//!
//! No OS threads, no wall clock: the syncer is a tokio task on the host's
//! runtime and latency is a `tokio::time::sleep`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentd_protocol::limits::WRITE_QUEUE_DEPTH_MAX;
use agentd_protocol::sync::lock;
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::store::disk::SyncWaiter;
use crate::store::disk::{Batch, Cf, Disk, KeyValue, Op};
use crate::Error;

type Table = BTreeMap<Vec<u8>, Vec<u8>>;
type Tables = BTreeMap<Cf, Table>;

/// The faults a [`MemoryDisk`] injects. Rates are per million operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFaults {
    pub sync_latency_min: Duration,
    pub sync_latency_max: Duration,
    pub fsync_errors_per_million: u32,
    pub read_errors_per_million: u32,
}

impl Default for DiskFaults {
    fn default() -> Self {
        DiskFaults {
            sync_latency_min: Duration::from_micros(200),
            sync_latency_max: Duration::from_millis(2),
            fsync_errors_per_million: 0,
            read_errors_per_million: 0,
        }
    }
}

/// What a crash does to the unsynced tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced batch is lost.
    LoseUnsynced,
    /// A random prefix of the unsynced batches reached the device; the next
    /// one was torn and is dropped (its checksum fails on recovery).
    KeepPrefix,
    /// The disk is replaced by an empty one.
    Wipe,
    /// Only the process stopped: the operating system still holds every
    /// write, synced or not.
    ProcessExit,
}

/// What a crash did, for the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashReport {
    pub kept: usize,
    pub lost: usize,
    pub torn: bool,
}

/// Counters of what the disk did, for the trace and the final report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub fsync_errors: u64,
    pub read_errors: u64,
}

pub struct MemoryDisk {
    state: Mutex<State>,
    /// What `free_bytes` reports: unbounded, unless the simulator fills the
    /// disk (`set_free_bytes`).
    free_bytes: std::sync::atomic::AtomicU64,
}

struct State {
    /// What reads see: `durable` plus every pending batch.
    view: Tables,
    durable: Tables,
    /// Written but not yet synced, oldest first, with their write numbers.
    pending: VecDeque<(u64, Batch)>,
    written: u64,
    /// Bumped by every crash; handles of an older boot are detached.
    generation: u64,
    faults: DiskFaults,
    rng: StdRng,
    stats: DiskStats,
    /// A sync failed since the last crash (the harness restarts such a node,
    /// as a supervisor restarts a process that stopped on an fsync error).
    fsync_failed: bool,
}

impl MemoryDisk {
    pub fn new(seed: u64, faults: DiskFaults) -> Arc<MemoryDisk> {
        Arc::new(MemoryDisk {
            state: Mutex::new(State {
                view: Tables::new(),
                durable: Tables::new(),
                pending: VecDeque::new(),
                written: 0,
                generation: 0,
                faults,
                rng: StdRng::seed_from_u64(seed),
                stats: DiskStats::default(),
                fsync_failed: false,
            }),
            free_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A handle for the current boot of the host, with its syncer task
    /// spawned on the calling (host's) runtime.
    pub fn mount(self: &Arc<Self>) -> Arc<dyn Disk> {
        let generation = self.lock().generation;
        let (sender, mut receiver) = mpsc::channel::<SyncWaiter>(WRITE_QUEUE_DEPTH_MAX);
        let disk = Arc::clone(self);
        tokio::spawn(async move {
            let mut waiters = Vec::new();
            while let Some(first) = receiver.recv().await {
                waiters.push(first);
                while waiters.len() < WRITE_QUEUE_DEPTH_MAX {
                    match receiver.try_recv() {
                        Ok(waiter) => waiters.push(waiter),
                        Err(_) => break,
                    }
                }
                let (target, latency) = disk.begin_sync();
                tokio::time::sleep(latency).await;
                let result = disk.finish_sync(generation, target);
                for waiter in waiters.drain(..) {
                    waiter.complete(&result);
                }
            }
        });
        Arc::new(Mounted { disk: Arc::clone(self), generation, syncer: sender })
    }

    /// The host crashed: keeps the durable data and, per `mode`, some of the
    /// unsynced tail; detaches every handle of the old boot.
    pub fn crash(&self, mode: CrashMode) -> CrashReport {
        let mut state = self.lock();
        state.generation += 1;
        state.fsync_failed = false;
        let unsynced = state.pending.len();
        let report = match mode {
            CrashMode::Wipe => {
                state.durable.clear();
                state.pending.clear();
                CrashReport { kept: 0, lost: unsynced, torn: false }
            }
            CrashMode::ProcessExit => {
                let survivors: Vec<Batch> = state.pending.drain(..).map(|(_, batch)| batch).collect();
                for batch in survivors {
                    apply(&mut state.durable, batch);
                }
                CrashReport { kept: unsynced, lost: 0, torn: false }
            }
            CrashMode::LoseUnsynced => {
                state.pending.clear();
                CrashReport { kept: 0, lost: unsynced, torn: false }
            }
            CrashMode::KeepPrefix => {
                let kept = if unsynced == 0 { 0 } else { state.rng.random_range(0..=unsynced) };
                let survivors: Vec<Batch> = state.pending.drain(..).take(kept).map(|(_, batch)| batch).collect();
                for batch in survivors {
                    apply(&mut state.durable, batch);
                }
                CrashReport { kept, lost: unsynced - kept, torn: kept < unsynced }
            }
        };
        state.view = state.durable.clone();
        report
    }

    /// Whether a sync failed since the last crash.
    pub fn fsync_failed(&self) -> bool {
        self.lock().fsync_failed
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Changes the faults (the liveness phase turns them off).
    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// Sets the free space the disk reports (`u64::MAX`: unbounded). The
    /// simulator's disk-full fault: writes still succeed, as they do on a
    /// real disk above zero; it is the node's floor that must stop them.
    pub fn set_free_bytes(&self, free_bytes: u64) {
        self.free_bytes.store(free_bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many written batches are not yet durable.
    pub fn unsynced(&self) -> usize {
        self.lock().pending.len()
    }

    fn begin_sync(&self) -> (u64, Duration) {
        let mut state = self.lock();
        let (min, max) = (state.faults.sync_latency_min, state.faults.sync_latency_max);
        let latency = if max > min { state.rng.random_range(min..=max) } else { min };
        (state.written, latency)
    }

    fn finish_sync(&self, generation: u64, target: u64) -> Result<(), String> {
        let mut state = self.lock();
        if state.generation != generation {
            return Err("the disk was detached by a crash".to_string());
        }
        state.stats.syncs += 1;
        let rate = state.faults.fsync_errors_per_million;
        if rate > 0 && state.rng.random_range(0..1_000_000) < rate {
            state.stats.fsync_errors += 1;
            state.fsync_failed = true;
            return Err("fsync failed: EIO (injected)".to_string());
        }
        while state.pending.front().is_some_and(|(number, _)| *number < target) {
            let Some((_, batch)) = state.pending.pop_front() else { break };
            apply(&mut state.durable, batch);
        }
        Ok(())
    }

    fn read<T>(&self, generation: u64, read: impl FnOnce(&Tables) -> T) -> Result<T, Error> {
        let mut state = self.lock();
        check_generation(&state, generation)?;
        let rate = state.faults.read_errors_per_million;
        if rate > 0 && state.rng.random_range(0..1_000_000) < rate {
            state.stats.read_errors += 1;
            return Err(Error::Corrupt {
                what: "a block of the simulated disk".to_string(),
                message: "checksum mismatch (injected read corruption)".to_string(),
            });
        }
        Ok(read(&state.view))
    }
}

fn check_generation(state: &State, generation: u64) -> Result<(), Error> {
    if state.generation == generation {
        Ok(())
    } else {
        Err(Error::Io(std::io::Error::other("the disk was detached by a crash of its host")))
    }
}

fn apply(tables: &mut Tables, batch: Batch) {
    for op in batch.into_ops() {
        match op {
            Op::Put { cf, key, value } => {
                tables.entry(cf).or_default().insert(key, value);
            }
            Op::DeleteRange { cf, start, end } => {
                if let Some(table) = tables.get_mut(&cf) {
                    if start < end {
                        let doomed: Vec<Vec<u8>> = table.range(start..end).map(|(key, _)| key.clone()).collect();
                        for key in doomed {
                            table.remove(&key);
                        }
                    }
                }
            }
        }
    }
}

fn range<'a>(
    table: Option<&'a Table>,
    start: &[u8],
    end: &[u8],
) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    let bounds = (Bound::Included(start.to_vec()), Bound::Excluded(end.to_vec()));
    let valid = start < end;
    table.filter(|_| valid).into_iter().flat_map(move |table| table.range(bounds.clone()))
}

fn pair(key: &[u8], value: &[u8]) -> KeyValue {
    (key.to_vec().into_boxed_slice(), value.to_vec().into_boxed_slice())
}

/// One boot's handle on a [`MemoryDisk`].
struct Mounted {
    disk: Arc<MemoryDisk>,
    generation: u64,
    syncer: mpsc::Sender<SyncWaiter>,
}

impl Disk for Mounted {
    fn write(&self, batch: Batch) -> Result<(), Error> {
        let mut state = self.disk.lock();
        check_generation(&state, self.generation)?;
        state.stats.writes += 1;
        let number = state.written;
        state.written += 1;
        apply(&mut state.view, batch.clone());
        state.pending.push_back((number, batch));
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.disk.read(self.generation, |tables| tables.get(&cf).and_then(|table| table.get(key)).cloned())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, Error> {
        self.disk.read(self.generation, |tables| {
            range(tables.get(&cf), start, end).take(limit).map(|(key, value)| pair(key, value)).collect()
        })
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, Error> {
        self.disk.read(self.generation, |tables| {
            range(tables.get(&cf), start, end).next_back().map(|(key, value)| pair(key, value))
        })
    }

    fn sync(&self, waiter: SyncWaiter) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(mpsc::error::SendError(waiter)) = self.syncer.send(waiter).await {
                waiter.complete(&Err("the simulated disk's syncer has stopped".to_string()));
            }
        })
    }

    fn free_bytes(&self) -> std::io::Result<u64> {
        Ok(self.disk.free_bytes.load(std::sync::atomic::Ordering::Relaxed))
    }
}
