//! `agentd vault`: credentials that tool calls get and results never show.

use agentd_protocol::ids::VaultId;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::Target;

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Set a secret (creating the vault without --id); prints the vault id.
    /// The value is read from standard input, so it stays out of shell
    /// history and the process list.
    Put {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: Option<VaultId>,
        /// The vault's name (used when it is created).
        #[arg(long, default_value = "default")]
        name: String,
        /// The secret's name: the environment variable tools see.
        #[arg(long)]
        secret: String,
    },
}

pub async fn run(command: VaultCommand) -> Result<()> {
    let VaultCommand::Put { target, id, name, secret } = command;
    let mut value = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)?;
    let value = value.strip_suffix('\n').unwrap_or(&value).to_string();
    let vault = target.client()?.put_secret(id, name, secret, value).await?;
    if target.json {
        outln!("{}", json!({"vault_id": vault.id.to_string(), "secrets": vault.secret_names}));
    } else {
        outln!("{}", vault.id);
    }
    Ok(())
}
