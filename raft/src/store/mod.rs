//! RocksDB storage for every Raft group of a node: the log store, the state
//! machine and the reader that serves queries from the state.
//!
//! One RocksDB instance ([`Db`]) holds all groups; keys are prefixed by the
//! group (see `keys`). Log appends are made durable by group commit: one WAL
//! sync covers the concurrent appends of every group (see `syncer`).
//!
//! **Invariant:** nothing here keeps a copy of the log or of the state in
//! memory; RocksDB is the only source, so every clone of a store or reader
//! sees every completed write.

mod apply;
mod codec;
mod db;
pub mod disk;
mod group_state;
mod keys;
mod log_store;
pub mod memory_disk;
mod rocks_disk;
mod snapshot;
mod state_machine;
mod state_reader;
mod syncer;

pub use db::{Db, PlantedBugs};
pub use disk::{Batch, Cf, Disk};
pub use log_store::LogStore;
pub use memory_disk::{CrashMode, MemoryDisk};
pub use rocks_disk::RocksDisk;
pub use snapshot::SnapshotBuilder;
pub use state_machine::StateMachine;
pub use state_reader::StateReader;
pub use syncer::SyncWaiter;
