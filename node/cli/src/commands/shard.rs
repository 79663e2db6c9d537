//! `agentd shard`: operator commands on one group's replicas and leader.

use agentd_protocol::ids::{GroupId, NodeId, ShardId};
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::json;

use super::Target;

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Hand a group's leadership to another of its voters; returns once
    /// that node leads (or fails after 10 s, naming the leader).
    TransferLeader {
        /// `3`, `shard-3`, or `metadata`.
        #[arg(value_parser = parse_group)]
        shard: GroupId,
        /// The voter that is to lead.
        #[arg(long)]
        to: NodeId,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(command: ShardCommand) -> Result<()> {
    match command {
        ShardCommand::TransferLeader { shard, to, target } => {
            let (leader, term) = target.client()?.transfer_leader(shard, to).await?;
            if target.json {
                outln!("{}", json!({ "group": shard.to_string(), "leader": leader, "term": term }));
            } else {
                outln!("{shard}: node {leader} leads (term {term})");
            }
            Ok(())
        }
    }
}

/// A group as operators name it: `metadata`, `shard-N` or `N`.
fn parse_group(text: &str) -> Result<GroupId> {
    if text == "metadata" {
        return Ok(GroupId::Metadata);
    }
    let number = text.strip_prefix("shard-").unwrap_or(text);
    match number.parse::<u32>() {
        Ok(shard) => Ok(GroupId::Shard(ShardId(shard))),
        Err(_) => bail!("'{text}' is not a group: use a shard number (3 or shard-3) or metadata"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_named_as_status_shows_them() {
        assert_eq!(parse_group("metadata").unwrap(), GroupId::Metadata);
        assert_eq!(parse_group("shard-7").unwrap(), GroupId::Shard(ShardId(7)));
        assert_eq!(parse_group("7").unwrap(), GroupId::Shard(ShardId(7)));
        assert!(parse_group("shard-x").is_err());
        assert!(parse_group("-1").is_err());
    }
}
