//! `agentd cluster`: nodes, shards, leaders and replica lag.

use std::collections::BTreeMap;

use agentd_protocol::api::{ClusterStatus, GroupStatus};
use agentd_protocol::ids::GroupId;
use agentd_protocol::limits::CLOCK_SKEW_WARN_MS;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::Target;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, shards, leaders and replica lag.
    Status(Target),
    /// Move replicas so that every node holds within one of an even share
    /// (following each move to its end), then hand leaderships over so that
    /// every node leads within one of an even share.
    Rebalance {
        /// Only print what would move.
        #[arg(long)]
        dry_run: bool,
        /// How long to follow the replica moves before failing (they go on).
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Make a new cluster's credentials ahead of its first node: the CA
    /// (ca.pem, ca.key), the join token (join-token) and the admin key
    /// (admin-key), written into a new directory, each file mode 0600. Start
    /// the first node with `--init --credentials DIR` and the others with
    /// `--join SEED --credentials DIR` (or `--token "$(cat DIR/join-token)"`),
    /// so that every node knows the token before the cluster exists.
    Credentials {
        /// The directory to write (created; existing credentials are never overwritten).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status(target) => status(target).await,
        ClusterCommand::Rebalance { dry_run, timeout_secs, target } => {
            super::rebalance::run(dry_run, timeout_secs, target).await
        }
        ClusterCommand::Credentials { out } => credentials(&out),
    }
}

fn credentials(out: &std::path::Path) -> Result<()> {
    let credentials = agentd_node::credentials::ClusterCredentials::generate()?;
    credentials.write(out)?;
    outln!(
        "wrote {}",
        agentd_node::credentials::CREDENTIAL_FILES.map(|name| out.join(name).display().to_string()).join(" ")
    );
    outln!("CA fingerprint {}", credentials.token().ca_fingerprint);
    Ok(())
}

async fn status(target: Target) -> Result<()> {
    let status = target.client()?.cluster_status().await?;
    if target.json {
        outln!("{}", serde_json::to_string_pretty(&status_json(&status))?);
        return Ok(());
    }
    print_nodes(&status);
    outln!();
    outln!("{:<10} {:>7} {:>6} {:>9}  {:<14} REPLICA LAG", "GROUP", "LEADER", "TERM", "LAST LOG", "VOTERS");
    for (node, group) in leader_reports(&status) {
        let lag: Vec<String> = group
            .replica_lag
            .iter()
            .map(|(replica, lag)| format!("{replica}:{}", lag.map(|lag| lag.to_string()).unwrap_or_else(|| "?".into())))
            .collect();
        outln!(
            "{:<10} {:>7} {:>6} {:>9}  {:<14} {}",
            group.group.to_string(),
            node,
            group.term,
            group.last_log_index.map(|index| index.to_string()).unwrap_or_else(|| "-".into()),
            format!("{:?}", group.voters),
            lag.join(" ")
        );
    }
    Ok(())
}

/// The node table, and a warning for each node that needs an operator.
fn print_nodes(status: &ClusterStatus) {
    outln!("shards: {}   replication: {}", status.shards, status.replication_factor);
    outln!(
        "{:<6} {:<22} {:<12} {:>8} {:>6} {:>9} {:>10}",
        "NODE",
        "ADDR",
        "STATE",
        "GROUPS",
        "LEADS",
        "CLOCK",
        "DISK FREE"
    );
    for node in &status.nodes {
        let leads = node.groups.iter().filter(|group| group.leader == Some(node.node_id)).count();
        let state = match (node.reachable, node.storage_full) {
            (false, _) => "unreachable",
            (true, true) => "storage-full",
            (true, false) => "up",
        };
        let clock = node.clock_skew_ms.map_or("-".to_string(), |skew| format!("{:+.3}s", skew as f64 / 1000.0));
        let disk = node.disk_free_bytes.map_or("-".to_string(), human_bytes);
        outln!(
            "{:<6} {:<22} {:<12} {:>8} {:>6} {:>9} {:>10}",
            node.node_id,
            node.addr,
            state,
            node.groups.len(),
            leads,
            clock,
            disk
        );
    }
    for node in status.nodes.iter().filter(|node| node.storage_full) {
        outln!(
            "warning: node {}'s data disk is under its free-space floor ({} free, floor {}): it takes no new writes \
             and leads no group until space is freed",
            node.node_id,
            node.disk_free_bytes.map_or("?".to_string(), human_bytes),
            human_bytes(node.disk_floor_bytes)
        );
    }
    for (node, skew) in skewed_clocks(status) {
        outln!(
            "warning: node {node}'s clock is {:.1} s {} the answering node's (more than {} ms apart)",
            skew.unsigned_abs() as f64 / 1000.0,
            if skew > 0 { "ahead of" } else { "behind" },
            CLOCK_SKEW_WARN_MS
        );
    }
}

/// Nodes whose clock differs from the answering node's by more than
/// [`CLOCK_SKEW_WARN_MS`], with the difference in ms.
fn skewed_clocks(status: &ClusterStatus) -> Vec<(u64, i64)> {
    let past = |skew: &i64| skew.unsigned_abs() > CLOCK_SKEW_WARN_MS;
    status.nodes.iter().filter_map(|node| node.clock_skew_ms.filter(past).map(|skew| (node.node_id, skew))).collect()
}

/// Bytes in the largest binary unit that keeps a number of at least 1.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// For every group, the report of the node that leads it (or of any node if none does).
pub(crate) fn leader_reports(status: &ClusterStatus) -> Vec<(u64, &GroupStatus)> {
    let mut by_group: BTreeMap<GroupId, (u64, &GroupStatus)> = Default::default();
    for node in &status.nodes {
        for group in &node.groups {
            let leads = group.leader == Some(node.node_id);
            let entry = by_group.entry(group.group).or_insert((node.node_id, group));
            if leads {
                *entry = (node.node_id, group);
            }
        }
    }
    by_group.into_values().collect()
}

fn status_json(status: &ClusterStatus) -> serde_json::Value {
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .map(|node| {
            json!({
                "node_id": node.node_id,
                "addr": node.addr,
                "reachable": node.reachable,
                "clock_skew_ms": node.clock_skew_ms,
                "clock_skewed": node.clock_skew_ms.is_some_and(|skew| skew.unsigned_abs() > CLOCK_SKEW_WARN_MS),
                "disk_free_bytes": node.disk_free_bytes,
                "disk_floor_bytes": node.disk_floor_bytes,
                "storage_full": node.storage_full,
                "groups_hosted": node.groups.len(),
                "groups_led": node.groups.iter().filter(|group| group.leader == Some(node.node_id)).count(),
            })
        })
        .collect();
    let groups: Vec<_> = leader_reports(status)
        .into_iter()
        .map(|(reporter, group)| {
            json!({
                "group": group.group.to_string(),
                "leader": group.leader,
                "reported_by": reporter,
                "term": group.term,
                "voters": group.voters,
                "learners": group.learners,
                "last_log_index": group.last_log_index,
                "last_applied_index": group.last_applied_index,
                "snapshot_index": group.snapshot_index,
                "purged_index": group.purged_index,
                "replica_lag": group.replica_lag.iter().map(|(node, lag)| json!({"node_id": node, "lag": lag})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"shards": status.shards, "replication_factor": status.replication_factor, "nodes": nodes, "groups": groups})
}
