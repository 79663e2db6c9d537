//! Replication for agentd: the openraft type configuration, the RocksDB log
//! store and state machine, the QUIC Raft network and the multi-raft host.

mod error;
pub mod host;
pub mod network;
pub mod peers;
pub mod placement;
mod propose;
pub mod store;
pub mod types;

pub use error::Error;
pub use propose::propose;
