//! Wire and log types shared by every agentd crate.
//!
//! This crate is deliberately free of async code and IO: it defines what goes
//! over the network and into the log (ids, events, requests, responses), how
//! those values are framed and decoded, and the named limits that bound them.
//! Decoding untrusted bytes returns [`Error`]; it never panics.

pub mod agent;
pub mod api;
pub mod approval;
pub mod cluster;
pub mod command;
pub mod egress;
mod error;
pub mod event;
pub mod frame;
pub mod hands;
pub mod ids;
pub mod limits;
pub mod resource;
pub mod rules;
pub mod sync;
pub mod tenancy;

pub use error::{ApiError, Error};

/// The version of the client protocol spoken by this build. A request
/// carrying another version is answered with [`ApiError::UnsupportedVersion`].
/// Version 2 added API keys to client requests and callers to forwarded
/// ones. (The hands protocol has its own: `hands::HANDS_PROTOCOL_VERSION`.)
pub const PROTOCOL_VERSION: u16 = 2;

/// The version of the cluster protocol (node to node: Raft, forwarding,
/// hellos, joins), answered the same way. Version 3: Raft votes and log ids
/// carry standard Raft leader ids (one leader per term), which version 2
/// nodes cannot decode. Version 4: every Raft RPC names the node it is for,
/// so that a machine brought back under a new id at the old address never
/// answers for the old id.
pub const CLUSTER_PROTOCOL_VERSION: u16 = 4;

/// ALPN for client calls (sessions, events, status).
pub const CLIENT_ALPN: &[u8] = b"agentd/1";
/// ALPN for node-to-node traffic (Raft, forwarding); mutual TLS.
pub const CLUSTER_ALPN: &[u8] = b"agentd-cluster/1";
/// ALPN used once by a new node to obtain its certificate with a join token.
pub const JOIN_ALPN: &[u8] = b"agentd-join/1";
/// ALPN for a node's calls to the `agentd hands` agent inside a sandbox;
/// mutual TLS with certificates issued by the cluster CA.
pub const HANDS_ALPN: &[u8] = b"agentd-hands/1";
