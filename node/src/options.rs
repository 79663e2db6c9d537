//! How a node is configured: by `agentd start` flags or by an embedding
//! program building [`NodeOptions`] itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agentd_protocol::ids::NodeId;
use agentd_protocol::limits::{
    DISK_FREE_FLOOR_DEFAULT, REPLICATION_FACTOR_DEFAULT, REQUESTS_IN_FLIGHT_MAX, SHARDS_DEFAULT, SHARDS_MAX,
};
use anyhow::{bail, Result};

use crate::credentials::ClusterCredentials;

/// How a node comes up.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// Restart a node whose data directory already holds its identity.
    Restart,
    /// Create a new cluster with this node as its first member: with
    /// `credentials`, under that CA, join token and admin key (made ahead,
    /// so that other nodes know the token before this one runs); without,
    /// under new ones.
    Init { shards: u32, replication_factor: u32, credentials: Option<ClusterCredentials> },
    /// Join the cluster that `seed` belongs to, admitted by `token`.
    Join { seed: String, token: String },
}

impl Bootstrap {
    pub fn init_default() -> Self {
        Bootstrap::Init { shards: SHARDS_DEFAULT, replication_factor: REPLICATION_FACTOR_DEFAULT, credentials: None }
    }
}

/// How long an unused sandbox lives by default.
pub const SANDBOX_IDLE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(600);

/// Raft timing and log retention, shared by every group on the node.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot (so lagging replicas can
    /// catch up without a snapshot).
    pub logs_to_keep: u64,
    /// Hand leaderships from nodes that lead more groups than their share
    /// to their other voters (`agentd_raft::balance`), so that the leader
    /// work is spread across nodes. On by default.
    pub balance_leaders: bool,
}

impl Default for RaftTuning {
    // Many groups share each node, so heartbeats are sparser than openraft's
    // defaults: 64 shards x 2 followers at 4 Hz is ~500 RPCs/s per leader node.
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_logs: 5000,
            logs_to_keep: 1000,
            balance_leaders: true,
        }
    }
}

impl RaftTuning {
    pub fn openraft_config(&self) -> Result<Arc<openraft::Config>> {
        let config = openraft::Config {
            cluster_name: "agentd".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            // Snapshots travel in one frame; give a slow follower time to install one.
            install_snapshot_timeout: 10_000,
            // The state machine and the committed index are written without
            // fsync (the log is the durable record), so a restarted leader
            // must win a fresh election rather than resume from possibly
            // stale state.
            enable_leader_restore: Some(false),
            // Appended entries are readable before they are synced, so the
            // leader replicates them while its own fsync runs instead of after.
            broadcast_submitted_on_append: Some(true),
            ..Default::default()
        };
        Ok(Arc::new(config.validate()?))
    }
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: NodeId,
    /// Where the node's QUIC endpoint binds.
    pub listen: SocketAddr,
    /// The address other nodes and clients dial; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    pub raft: RaftTuning,
    /// Where session sandboxes live; default `DATA/sandboxes`. Nodes on one
    /// host may share it, so a session that moves between them keeps its
    /// workspace and its record of tool calls already made.
    pub sandbox_dir: Option<PathBuf>,
    /// A session's sandbox that no tool call used for this long is destroyed
    /// (its workspace stays on the host; the next call gets a fresh sandbox).
    pub sandbox_idle: std::time::Duration,
    /// How agents reach their models (API keys, base URLs, scripts).
    pub models: agentd_actors::model::ProviderConfig,
    /// A client connection with no open stream for this long is closed.
    pub client_idle: std::time::Duration,
    /// Under this many free bytes on the data disk the node takes no new
    /// writes (`--min-free-disk`, default [`DISK_FREE_FLOOR_DEFAULT`]).
    pub min_free_disk: u64,
    /// Client requests run at once, from every front door together; one
    /// more is refused with `Overloaded` (`--max-requests-in-flight`,
    /// default [`REQUESTS_IN_FLIGHT_MAX`]).
    pub requests_in_flight_max: usize,
}

impl NodeOptions {
    /// Options for node `node_id` listening on `listen` with its data in
    /// `data_dir`, and every other field as `agentd start` defaults it
    /// (models from `ProviderConfig::default()`: set `models` for API keys).
    pub fn new(node_id: NodeId, listen: SocketAddr, data_dir: PathBuf, bootstrap: Bootstrap) -> Self {
        Self {
            node_id,
            listen,
            advertise: None,
            data_dir,
            bootstrap,
            raft: RaftTuning::default(),
            sandbox_dir: None,
            sandbox_idle: SANDBOX_IDLE_DEFAULT,
            models: agentd_actors::model::ProviderConfig::default(),
            client_idle: std::time::Duration::from_secs(agentd_protocol::limits::CLIENT_IDLE_SECS_DEFAULT),
            min_free_disk: DISK_FREE_FLOOR_DEFAULT,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX,
        }
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    pub fn validate(&self) -> Result<()> {
        if self.node_id == 0 {
            bail!("--node-id must be at least 1");
        }
        if let Bootstrap::Init { shards, replication_factor, .. } = self.bootstrap {
            if shards == 0 || shards > SHARDS_MAX {
                bail!("--shards must be between 1 and {SHARDS_MAX}");
            }
            if replication_factor == 0 {
                bail!("--replication must be at least 1");
            }
        }
        if self.requests_in_flight_max == 0 {
            bail!("--max-requests-in-flight must be at least 1");
        }
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            bail!(
                "--listen {} is a wildcard address: pass --advertise HOST:PORT so other nodes can dial this one",
                self.listen
            );
        }
        Ok(())
    }
}
