//! One file per command group of `agentd`. Each holds its clap arguments
//! and what runs them.

pub mod agent;
pub mod apikey;
pub mod bench;
pub mod cluster;
pub mod dev;
pub mod environment;
pub mod hands;
pub mod moves;
pub mod node;
pub mod policy;
pub mod rebalance;
pub mod session;
pub mod shard;
pub mod start;
pub mod vault;

use std::path::PathBuf;

use agentd_client::Client;
use anyhow::{Context, Result};
use clap::Args;

/// How to reach the cluster: node addresses (comma-separated; any node
/// works, later ones are tried when earlier ones fail) and the CA.
#[derive(Debug, Args, Clone)]
pub struct Target {
    #[arg(long, value_delimiter = ',', required = true)]
    pub addr: Vec<String>,
    /// Cluster CA certificate (DATA/tls/ca.pem). Needed unless every address is loopback.
    #[arg(long, env = "AGENTD_CA")]
    pub ca: Option<PathBuf>,
    /// The API key to call with (`DATA/admin-key` on the node that ran
    /// `--init`, or one from `agentd apikey create`).
    #[arg(long, env = "AGENTD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    pub fn client(&self) -> Result<Client> {
        let client = Client::for_addrs(self.addr.clone(), self.ca_pem()?)?;
        Ok(client.with_api_key(self.api_key.clone().unwrap_or_default()))
    }

    pub fn ca_pem(&self) -> Result<Option<String>> {
        self.ca
            .as_ref()
            .map(|path| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())))
            .transpose()
    }
}
