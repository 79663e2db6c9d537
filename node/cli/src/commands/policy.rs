//! `agentd policy`: a workspace's approval policy. Tools it names (by name
//! or `*` pattern, as the model sees them: `bash`, `mcp__docs__*`, a custom
//! tool) wait for a confirmation in every session of the workspace,
//! whatever the agent's own policy says; `--approver-only` rules take one
//! only from a key with the approver role. Setting a policy needs an admin key.

use agentd_protocol::approval::{ApprovalPolicy, ApprovalRule};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::Target;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace the policy (its version goes up by one); prints the new policy.
    Set {
        #[command(flatten)]
        target: Target,
        /// The workspace (default: the key's own).
        #[arg(long)]
        workspace: Option<String>,
        /// A tool any key of the workspace may confirm (repeatable).
        #[arg(long = "ask")]
        ask: Vec<String>,
        /// A tool only a key with the approver role may confirm (repeatable).
        #[arg(long = "approver-only")]
        approver_only: Vec<String>,
        /// Refuse the change unless the policy is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Show the policy.
    Get {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        workspace: Option<String>,
    },
}

pub async fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Set { target, workspace, ask, approver_only, expected_version } => {
            let rules = ask
                .into_iter()
                .map(|tools| ApprovalRule { tools, approver_only: false })
                .chain(approver_only.into_iter().map(|tools| ApprovalRule { tools, approver_only: true }))
                .collect();
            let policy = target.client()?.put_approval_policy(workspace, rules, expected_version).await?;
            show(&target, &policy);
        }
        PolicyCommand::Get { target, workspace } => {
            let policy = target.client()?.approval_policy(workspace).await?;
            show(&target, &policy);
        }
    }
    Ok(())
}

fn show(target: &Target, policy: &ApprovalPolicy) {
    if target.json {
        let rules: Vec<_> =
            policy.rules.iter().map(|rule| json!({"tools": rule.tools, "approver_only": rule.approver_only})).collect();
        outln!("{}", json!({"workspace": policy.workspace, "version": policy.version, "rules": rules}));
        return;
    }
    outln!("workspace {} version {}", policy.workspace, policy.version);
    for rule in &policy.rules {
        outln!("  {:<40} {}", rule.tools, if rule.approver_only { "approver only" } else { "ask" });
    }
}
