//! The simulator's stand-ins for the world around a cluster, and its
//! checkers. The harness that runs real nodes over them lives in
//! `agentd-node` (`node/src/sim/`), which composes everything; see
//! `ARCHITECTURE.md`, "The simulator".

pub mod checkers;
pub mod faults;
pub mod model;
pub mod net;
pub mod sandbox;
