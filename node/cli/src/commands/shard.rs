//! `agentd shard`: operator commands on one group's replicas and leader.

use std::time::Duration;

use agentd_protocol::ids::{GroupId, NodeId, ShardId};
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::json;

use super::cluster::{human_bytes, leader_reports};
use super::{moves, Target};

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Every group: its leader, term, voters, learners, and the sessions,
    /// events and bytes it holds (counted by each group's leader).
    List(Target),
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
    /// Move one replica of a shard to another node: the shard's leader adds
    /// it as a learner, catches it up, swaps the voters, and the old node
    /// deletes its copy. Prints each step; the shard stays available.
    Move {
        /// `3` or `shard-3`.
        #[arg(value_parser = parse_shard)]
        shard: ShardId,
        /// The node that is to hold the replica.
        #[arg(long)]
        to: NodeId,
        /// The replica to move (default: the one on the node holding the most).
        #[arg(long)]
        from: Option<NodeId>,
        /// Return once the move is recorded, without following it.
        #[arg(long)]
        no_wait: bool,
        /// How long to follow the move before failing (it goes on regardless).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(command: ShardCommand) -> Result<()> {
    match command {
        ShardCommand::List(target) => list(target).await,
        ShardCommand::Move { shard, to, from, no_wait, timeout_secs, target } => {
            let client = target.client()?;
            let one = client.move_shard(shard, to, from).await?;
            if !target.json {
                outln!(
                    "{shard}: moving the replica on node {} to node {} (replicas then {:?})",
                    one.from,
                    one.to,
                    one.replicas
                );
            }
            let moved = [one];
            let phases = if no_wait {
                None
            } else {
                Some(moves::follow(&client, &moved, Duration::from_secs(timeout_secs), target.json).await?)
            };
            if target.json {
                outln!("{}", moves::moves_json(&moved, phases.as_deref()));
            }
            Ok(())
        }
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

async fn list(target: Target) -> Result<()> {
    let client = target.client()?;
    let status = client.cluster_status().await?;
    let mut rows = Vec::new();
    let mut unreadable = Vec::new();
    for (reporter, group) in leader_reports(&status) {
        // One at a time: each count scans its group on the leader.
        let stats = match client.group_stats(group.group).await {
            Ok(stats) => Some(stats),
            Err(error) => {
                unreadable.push(format!("{}: {error}", group.group));
                None
            }
        };
        rows.push((reporter, group.clone(), stats));
    }
    if target.json {
        let groups: Vec<_> = rows
            .iter()
            .map(|(_, group, stats)| {
                json!({
                    "group": group.group.to_string(),
                    "leader": group.leader,
                    "term": group.term,
                    "voters": group.voters,
                    "learners": group.learners,
                    "sessions": stats.as_ref().map(|stats| stats.sessions),
                    "events": stats.as_ref().map(|stats| stats.events),
                    "bytes": stats.as_ref().map(|stats| stats.bytes),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json!({ "groups": groups, "unreadable": unreadable }))?);
    } else {
        outln!(
            "{:<10} {:>6} {:>6}  {:<12} {:<10} {:>9} {:>10} {:>10}",
            "GROUP",
            "LEADER",
            "TERM",
            "VOTERS",
            "LEARNERS",
            "SESSIONS",
            "EVENTS",
            "BYTES"
        );
        let or_unknown = |value: Option<String>| value.unwrap_or_else(|| "?".into());
        for (_, group, stats) in &rows {
            outln!(
                "{:<10} {:>6} {:>6}  {:<12} {:<10} {:>9} {:>10} {:>10}",
                group.group.to_string(),
                or_unknown(group.leader.map(|leader| leader.to_string())),
                group.term,
                format!("{:?}", group.voters),
                format!("{:?}", group.learners),
                or_unknown(stats.as_ref().map(|stats| stats.sessions.to_string())),
                or_unknown(stats.as_ref().map(|stats| stats.events.to_string())),
                or_unknown(stats.as_ref().map(|stats| human_bytes(stats.bytes))),
            );
        }
        for line in &unreadable {
            eprintln!("agentd: could not count {line}");
        }
    }
    if !unreadable.is_empty() {
        bail!("{} of {} groups could not be counted", unreadable.len(), rows.len());
    }
    Ok(())
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

/// A shard as operators name it: `shard-N` or `N`.
fn parse_shard(text: &str) -> Result<ShardId> {
    match parse_group(text)? {
        GroupId::Shard(shard) => Ok(shard),
        GroupId::Metadata => bail!("the metadata group is on every node and does not move; name a shard"),
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
        assert_eq!(parse_shard("shard-2").unwrap(), ShardId(2));
        assert!(parse_shard("metadata").is_err());
    }
}
