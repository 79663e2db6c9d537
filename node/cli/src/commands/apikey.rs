//! `agentd apikey`: the keys clients call with, one workspace each. Managing
//! them needs an admin key (`DATA/admin-key` after `--init`).

use agentd_protocol::ids::ApiKeyId;
use agentd_protocol::tenancy::{ApiKeyInfo, Role};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::Target;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Uses the objects of its workspace.
    Member,
    /// Also manages the keys of every workspace.
    Admin,
    /// A member that may also answer tool uses a workspace approval policy
    /// reserves for approvers (`agentd policy set --approver-only`).
    Approver,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Make a key for a workspace; prints it once (it is stored hashed).
    Create {
        #[command(flatten)]
        target: Target,
        /// The workspace the key's objects live in (created by its first key).
        #[arg(long)]
        workspace: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "key")]
        name: String,
        #[arg(long, value_enum, default_value_t = RoleArg::Member)]
        role: RoleArg,
    },
    /// List keys (of one workspace with --workspace); never their secrets.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Revoke a key: every node refuses it from then on.
    Revoke {
        #[command(flatten)]
        target: Target,
        key_id: ApiKeyId,
    },
}

pub async fn run(command: ApiKeyCommand) -> Result<()> {
    match command {
        ApiKeyCommand::Create { target, workspace, name, role } => {
            let role = match role {
                RoleArg::Member => Role::Member,
                RoleArg::Admin => Role::Admin,
                RoleArg::Approver => Role::Approver,
            };
            let (key, info) = target.client()?.create_api_key(workspace, name, role).await?;
            if target.json {
                let mut value = info_json(&info);
                value["key"] = json!(key);
                outln!("{value}");
            } else {
                outln!("{key}");
            }
        }
        ApiKeyCommand::List { target, workspace } => {
            let keys = target.client()?.list_api_keys(workspace).await?;
            if target.json {
                outln!("{}", json!(keys.iter().map(info_json).collect::<Vec<_>>()));
            } else {
                outln!("{:<38} {:<16} {:<8} {:<10} NAME", "ID", "WORKSPACE", "ROLE", "STATE");
                for key in &keys {
                    let state = if key.revoked_at_ms.is_some() { "revoked" } else { "active" };
                    outln!("{:<38} {:<16} {:<8} {:<10} {}", key.id, key.workspace, key.role.name(), state, key.name);
                }
            }
        }
        ApiKeyCommand::Revoke { target, key_id } => {
            let info = target.client()?.revoke_api_key(key_id).await?;
            if target.json {
                outln!("{}", info_json(&info));
            } else {
                outln!("revoked {}", info.id);
            }
        }
    }
    Ok(())
}

fn info_json(info: &ApiKeyInfo) -> serde_json::Value {
    json!({
        "id": info.id.to_string(),
        "name": info.name,
        "workspace": info.workspace,
        "role": info.role.name(),
        "created_at_ms": info.created_at_ms,
        "revoked_at_ms": info.revoked_at_ms,
    })
}
