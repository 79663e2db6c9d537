//! The agentd node: one member of a cluster, embeddable in another program.
//! [`Node::start`] composes it (store, QUIC endpoint, Raft groups, brain,
//! hands) and returns a [`NodeHandle`]; [`NodeHandle::service`] is every
//! client operation as one typed API, which the QUIC front door serves.
//!
//! The native client is the `agentd-client` crate, the `agentd` program the
//! `agentd` crate, the simulator `agentd-sim`: none of them is linked here.

mod bootstrap;
pub mod clock;
pub mod credentials;
pub mod hands;
pub mod health;
// A front door for clients only: it never runs under the simulator, so its
// request ids and new objects' ids may come from OS randomness.
#[allow(
    clippy::disallowed_methods,
    reason = "the HTTP front door never runs under the simulator; ids of new objects need no seed"
)]
pub mod http;
pub mod identity;
pub mod leader;
pub mod mcp;
pub mod node;
pub mod options;
mod serve;
pub mod service;
pub mod session;
pub mod vault;

/// What an embedding program implements to serve a model in process
/// ([`Node::start_with_models`]): `model::ModelProvider` and its request
/// and response types.
pub use agentd_actors::model;
/// The future a `model::ModelProvider` returns.
pub use futures_util::future::BoxFuture;
pub use node::{Node, NodeHandle, NodeIo};
pub use options::{Bootstrap, NodeOptions, RaftTuning};
pub use service::{Caller, Service};
