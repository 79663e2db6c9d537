//! `agentd node`: operator commands on one node of the cluster.

use std::time::Duration;

use agentd_protocol::ids::NodeId;
use anyhow::Result;
use clap::Subcommand;

use super::{moves, Target};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Move every replica off a node, each to the node holding the fewest,
    /// and its leaderships with them. Refused, moving nothing, when some
    /// shard has no other node to go to (add a node first).
    Drain {
        node: NodeId,
        /// Follow the moves until every one is done, printing each step.
        #[arg(long)]
        wait: bool,
        /// With `--wait`: how long to follow before failing (the moves go on).
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Forget a node for good. Only for a node that holds no replica (drain
    /// it first): it leaves the metadata group, its id is refused on every
    /// connection from then on and can never join again. A wiped or
    /// replaced machine comes back with an empty data directory, a new
    /// --node-id and --join.
    Remove {
        node: NodeId,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Drain { node, wait, timeout_secs, target } => {
            let client = target.client()?;
            let planned = client.drain_node(node).await?;
            if !target.json {
                if planned.is_empty() {
                    outln!("node {node} holds no replica");
                }
                for one in &planned {
                    outln!("{}: node {} -> node {} (replicas then {:?})", one.shard, one.from, one.to, one.replicas);
                }
            }
            let phases = if wait && !planned.is_empty() {
                Some(moves::follow(&client, &planned, Duration::from_secs(timeout_secs), target.json).await?)
            } else {
                None
            };
            if target.json {
                outln!("{}", moves::moves_json(&planned, phases.as_deref()));
            } else if wait {
                outln!("node {node} is drained: it holds no replica");
            } else if !planned.is_empty() {
                outln!(
                    "{} moves recorded; follow them with `agentd shard list` or drain again with --wait",
                    planned.len()
                );
            }
            Ok(())
        }
        NodeCommand::Remove { node, target } => {
            let client = target.client()?;
            client.remove_node(node).await?;
            if target.json {
                outln!("{}", serde_json::json!({ "removed": node }));
            } else {
                outln!(
                    "node {node} is removed: the cluster refuses its id from now on. To bring the machine back, \
                     start it with an empty --data-dir, a new --node-id and --join HOST:PORT --token TOKEN"
                );
            }
            Ok(())
        }
    }
}
