//! The agentd node: the composition root that wires the replicated store,
//! the QUIC endpoint and the client API together, plus the native client and
//! the `agentd` command line. Embed a node with [`Node::start`].

pub mod bench;
pub mod brain;
pub mod cli;
pub mod client;
pub mod clock;
pub mod dev;
pub mod hands;
pub mod identity;
pub mod json;
pub mod node;
pub mod options;
pub mod router;
pub mod server;
pub mod sim;
pub mod vault;

pub use client::{Client, ClientError};
pub use node::{Node, NodeHandle};
pub use options::{Bootstrap, NodeOptions, RaftTuning};
