//! Session actors: a virtual actor (ractor) per session on the node that
//! leads the session's shard, activated by the first request for the
//! session and passivated when idle. It refuses client events that answer
//! nothing before they cost a Raft round, keeps the tail of the session's
//! log in memory, and serves reads from that tail.
//!
//! The replicated state machine enforces the same rules again on every
//! replica; the actor is the fast path, never the authority.

mod actor;
mod registry;

pub use actor::SessionMessage;
pub use registry::Sessions;
