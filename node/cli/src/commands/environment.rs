//! `agentd environment`: where an agent's tools run (driver, network,
//! resources, vaults).

use agentd_protocol::agent::{EnvironmentSpec, Network, Resources, SandboxDriver};
use agentd_protocol::ids::{EnvironmentId, VaultId};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::Target;

#[derive(Debug, Subcommand)]
pub enum EnvironmentCommand {
    /// Create an environment (or, with --id, add a version to one); prints its id.
    Create {
        #[command(flatten)]
        target: Target,
        /// Add a version to this environment instead of creating a new one.
        #[arg(long)]
        id: Option<EnvironmentId>,
        #[arg(long)]
        name: String,
        /// Sandbox driver: namespace (bubblewrap), oci (runc), gvisor (runsc) or microvm (QEMU).
        #[arg(long, default_value_t = SandboxDriver::Namespace)]
        driver: SandboxDriver,
        /// Let tools use the host's network, unfiltered.
        #[arg(long, conflicts_with = "allowed_hosts")]
        network: bool,
        /// Let tools reach this host, and no other, through the sandbox's egress proxy
        /// (repeatable): `host`, `host:port`, `*.domain`, an IP address, or
        /// `https://host` (port 443 only). Without --network or --allow-host, tools have
        /// no network.
        #[arg(long = "allow-host", value_name = "HOST")]
        allowed_hosts: Vec<String>,
        #[arg(long, default_value_t = agentd_protocol::limits::TOOL_TIMEOUT_MS_DEFAULT)]
        tool_timeout_ms: u64,
        /// Provision the sandbox when a turn starts instead of at the first tool call.
        #[arg(long)]
        eager_provisioning: bool,
        /// A vault whose secrets every tool call gets (repeatable).
        #[arg(long = "vault")]
        vaults: Vec<VaultId>,
        /// Memory of each sandbox, all its processes together (default 1024).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Processes and threads of each sandbox (default 256).
        #[arg(long)]
        processes_max: Option<u64>,
        /// CPU time of each sandbox in thousandths of a core (default 1000: one core).
        #[arg(long)]
        cpu_millicores: Option<u64>,
    },
}

pub async fn run(command: EnvironmentCommand) -> Result<()> {
    let EnvironmentCommand::Create {
        target,
        id,
        name,
        driver,
        network,
        allowed_hosts,
        tool_timeout_ms,
        eager_provisioning,
        vaults,
        memory_mib,
        processes_max,
        cpu_millicores,
    } = command;
    let network = match (network, allowed_hosts.is_empty()) {
        (true, _) => Network::Unrestricted,
        (false, true) => Network::None,
        (false, false) => Network::Allowlist(allowed_hosts),
    };
    let resources = Resources { memory_mib, processes_max, cpu_millicores };
    let driver = driver.name().to_string();
    let spec = EnvironmentSpec { name, driver, network, tool_timeout_ms, eager_provisioning, vaults, resources };
    let environment = target.client()?.put_environment(id, spec).await?;
    if target.json {
        outln!("{}", json!({"environment_id": environment.id.to_string(), "version": environment.versions.len()}));
    } else {
        outln!("{}", environment.id);
    }
    Ok(())
}
