//! Replication for agentd: the multi-raft host (`host.rs`) with its QUIC
//! Raft network (`network.rs`, `peers.rs`), the one door into Raft for a
//! command (`propose.rs`), shard placement (`placement.rs`), the storage
//! seam and log store (`store/`), the free-space floor of the data disk
//! (`space.rs`), and the state machine (`state/`).

pub mod balance;
mod error;
pub mod host;
pub mod identity;
pub mod network;
mod peer_health;
pub mod peers;
pub mod placement;
mod propose;
pub mod space;
pub mod state;
pub mod store;
pub mod types;

pub use error::Error;
pub use propose::propose;
