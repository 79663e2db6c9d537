//! Resource limits of one sandbox.

pub use agentd_protocol::egress::Network;

/// Limits applied to every tool call of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Default and maximum wall-clock time of one `bash` call.
    pub wall_clock_ms: u64,
    /// Output kept per tool call; the excess is dropped and reported.
    pub output_bytes_max: usize,
    /// Memory of all processes of the sandbox together (cgroup), or address space per process (rlimit fallback).
    pub memory_bytes_max: u64,
    /// Processes and threads of the sandbox together (cgroup), or per user (rlimit fallback).
    pub pids_max: u64,
    /// What the sandbox may connect to: nothing, anything (the host's network
    /// namespace), or an allowlist of hosts (through its egress proxy).
    pub network: Network,
    /// CPU time of all processes of the sandbox together, in thousandths of a core
    /// (a CFS quota per 100 ms period: 1000 is one core, 500 half of one).
    pub cpu_millicores: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wall_clock_ms: 120_000,
            output_bytes_max: 100 * 1024,
            memory_bytes_max: 1024 * 1024 * 1024,
            pids_max: 256,
            network: Network::None,
            cpu_millicores: 1000,
        }
    }
}
