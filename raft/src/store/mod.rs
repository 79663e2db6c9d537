//! Bytes on disk for every Raft group of a node: the [`Disk`] seam
//! (RocksDB in production, [`MemoryDisk`] in the simulator), the key layout,
//! and the log store. What the bytes mean (sessions, events, agents) is in
//! `crate::state`.
//!
//! One RocksDB instance ([`Db`]) holds all groups; keys are prefixed by the
//! group (see `keys`). Log appends are made durable by group commit: one WAL
//! sync covers the concurrent appends of every group (see `syncer`).
//!
//! **Invariant:** nothing here keeps a copy of the log or of the state in
//! memory; RocksDB is the only source, so every clone of a store or reader
//! sees every completed write.

pub(crate) mod codec;
mod db;
pub mod disk;
pub(crate) mod keys;
mod log_store;
pub mod memory_disk;
mod rocks_disk;
// RocksDB's group commit runs on an OS thread (a WAL sync blocks for a
// disk flush). Production only: the simulator's `MemoryDisk` syncs on a
// tokio task of its host.
#[allow(
    clippy::disallowed_methods,
    reason = "the RocksDB syncer thread is production-only; the simulator's disk syncs on a tokio task"
)]
mod syncer;

pub use db::{Db, PlantedBugs, STORE_FORMAT};
pub use disk::{Batch, Cf, Disk, SyncWaiter};
pub use log_store::LogStore;
pub use memory_disk::{CrashMode, MemoryDisk};
pub use rocks_disk::RocksDisk;
