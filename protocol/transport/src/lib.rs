//! The wire in motion, shared by every program that speaks agentd's QUIC:
//! nodes, the native client, the `agentd hands` agent inside a sandbox.
//!
//! - [`wire`]: one length-prefixed bincode frame at a time over an async
//!   stream, bounded by the caller's limit before the body is read;
//! - [`tls`]: the cluster CA, node and sandbox certificates, and the quinn
//!   client and server configurations built from them;
//! - [`dial`]: resolving `host:port`, and one cached connection per address.
//!
//! **Boundary:** nothing here knows Raft, storage or sessions; what goes in a
//! frame is `agentd_protocol`'s vocabulary.

pub mod dial;
mod error;
pub mod tls;
pub mod wire;

pub use error::Error;
