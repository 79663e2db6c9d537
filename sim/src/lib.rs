//! The simulator: a whole agentd cluster of real nodes (`agentd-node`) run
//! as turmoil hosts in one process on simulated time, network and disks,
//! under a seeded plan of faults, then checked against every invariant.
//!
//! - `world/`: what lives outside the hosts (disks, clocks, identities, the
//!   record of the run) and the stand-ins for the world around a cluster
//!   (a simulated UDP socket, a fake sandbox with an effect ledger, a
//!   scripted model);
//! - `faults.rs`: the fault vocabulary and the seeded plan;
//! - `checkers.rs`: the invariants, as pure functions over the history and
//!   the replicas;
//! - `harness/`: running real nodes over those seams, phase by phase;
//! - `cli.rs`: `agentd sim run|sweep|replay|check-determinism|bugs`.
//!
//! **Boundary:** the simulator depends on the node it simulates, never the
//! reverse; the node's seams (`agentd_node::NodeIo`) are all it swaps.

#![deny(clippy::print_stdout)]

/// Prints one line of a report; a closed reader (`| head`) ends the run
/// quietly instead of panicking on the broken pipe.
macro_rules! outln {
    () => { $crate::cli::write_stdout_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout_line(format_args!($($arg)*)) };
}

pub mod checkers;
pub mod cli;
pub mod faults;
pub mod harness;
pub mod world;
