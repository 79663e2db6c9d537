//! `agentd start`: one node in the foreground until SIGINT or SIGTERM, or
//! until one of its Raft groups stops on a fatal storage error (fail-stop:
//! the process exits non-zero for its supervisor to restart it).

use std::net::SocketAddr;
use std::path::PathBuf;

use agentd_actors::model::ProviderConfig;
use agentd_node::credentials::ClusterCredentials;
use agentd_node::http::{HttpOptions, HttpServer, HttpTls};
use agentd_node::identity::DataDir;
use agentd_node::{Bootstrap, Node, NodeOptions, RaftTuning};
use anyhow::{bail, Context, Result};

use crate::monitor::Monitor;
use clap::Args;

#[derive(Debug, Args)]
pub struct StartArgs {
    #[arg(long)]
    pub node_id: u64,
    /// Address the node's QUIC endpoint binds (UDP).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address other nodes and clients dial, if not --listen.
    #[arg(long)]
    pub advertise: Option<String>,
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Create a new cluster with this node as its first member.
    #[arg(long, conflicts_with = "join")]
    pub init: bool,
    /// Join the cluster of the node at HOST:PORT (needs --token or --credentials).
    #[arg(long)]
    pub join: Option<String>,
    /// Join token, from DATA/join-token on any member.
    #[arg(long, env = "AGENTD_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A directory of credentials made ahead by `agentd cluster
    /// credentials` (a mounted Kubernetes Secret, say): with --init the new
    /// cluster takes its CA, join token and admin key; with --join, its join
    /// token. Not read once the data directory is initialised.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Shards of a new cluster (fixed for its lifetime).
    #[arg(long, default_value_t = agentd_protocol::limits::SHARDS_DEFAULT)]
    pub shards: u32,
    /// Replicas per shard of a new cluster.
    #[arg(long, default_value_t = agentd_protocol::limits::REPLICATION_FACTOR_DEFAULT)]
    pub replication: u32,
    /// Serve the Managed Agents HTTP API (what the Anthropic SDKs call) at
    /// HOST:PORT; its base URL is http://HOST:PORT (https with --http-tls-cert).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Certificate chain (PEM) of the HTTP API; with --http-tls-key, it speaks HTTPS.
    #[arg(long, requires_all = ["http", "http_tls_key"])]
    pub http_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --http-tls-cert.
    #[arg(long, requires_all = ["http", "http_tls_cert"])]
    pub http_tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at HOST:PORT (`/metrics`), with
    /// the probes `/livez` (the process serves) and `/readyz` (the node is a
    /// member, not failed, and every group it hosts knows a leader).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Where session sandboxes live (default DATA/sandboxes). Nodes on one
    /// host may share it.
    #[arg(long)]
    pub sandbox_dir: Option<PathBuf>,
    /// Destroy a session's sandbox after this many seconds without a tool
    /// call (the workspace stays; the next call starts a fresh sandbox).
    #[arg(long, default_value_t = agentd_node::options::SANDBOX_IDLE_DEFAULT.as_secs())]
    pub sandbox_idle_secs: u64,
    /// A client connection with no open stream for this many seconds is closed.
    #[arg(long, default_value_t = agentd_protocol::limits::CLIENT_IDLE_SECS_DEFAULT)]
    pub client_idle_secs: u64,
    /// Directory that `scripted:FILE` models read from; a script must resolve
    /// inside it. Without it only `scripted:echo` works.
    #[arg(long)]
    pub scripts_dir: Option<PathBuf>,
    /// Free space the data disk keeps: under it the node takes no new
    /// writes, hands off its leaderships and answers writes with
    /// `storage_full`, until space is freed. Bytes, or with a unit: 512MiB, 2GiB, 500MB.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    pub min_free_disk: u64,
    /// Client requests the node runs at once (QUIC and HTTP together; event
    /// streams once started are not counted). One more is refused at once
    /// as `overloaded`, with a retry hint.
    #[arg(long, default_value_t = agentd_protocol::limits::REQUESTS_IN_FLIGHT_MAX)]
    pub max_requests_in_flight: usize,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Debug, Args)]
pub struct TuningArgs {
    #[arg(long, default_value_t = RaftTuning::default().heartbeat_interval_ms)]
    pub heartbeat_ms: u64,
    #[arg(long, default_value_t = RaftTuning::default().election_timeout_min_ms)]
    pub election_timeout_min_ms: u64,
    #[arg(long, default_value_t = RaftTuning::default().election_timeout_max_ms)]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    #[arg(long, default_value_t = RaftTuning::default().snapshot_logs)]
    pub snapshot_logs: u64,
    /// Entries kept behind a snapshot before they are purged.
    #[arg(long, default_value_t = RaftTuning::default().logs_to_keep)]
    pub logs_to_keep: u64,
    /// Spread group leaderships evenly across nodes by handing off the
    /// leaderships a node holds beyond its share (`false` leaves every
    /// leadership where elections put it; `agentd cluster rebalance` still
    /// evens them out on demand).
    #[arg(long, default_value_t = RaftTuning::default().balance_leaders, action = clap::ArgAction::Set)]
    pub balance_leaders: bool,
}

pub async fn run(args: StartArgs) -> Result<()> {
    let http = http_options(&args)?;
    let monitor = match args.metrics {
        Some(addr) => Some(Monitor::start(addr).await?),
        None => None,
    };
    let bootstrap = bootstrap(&args)?;
    let options = NodeOptions {
        node_id: args.node_id,
        listen: args.listen,
        advertise: args.advertise,
        data_dir: args.data_dir,
        bootstrap,
        raft: RaftTuning {
            heartbeat_interval_ms: args.tuning.heartbeat_ms,
            election_timeout_min_ms: args.tuning.election_timeout_min_ms,
            election_timeout_max_ms: args.tuning.election_timeout_max_ms,
            snapshot_logs: args.tuning.snapshot_logs,
            logs_to_keep: args.tuning.logs_to_keep,
            balance_leaders: args.tuning.balance_leaders,
        },
        sandbox_dir: args.sandbox_dir,
        sandbox_idle: std::time::Duration::from_secs(args.sandbox_idle_secs),
        client_idle: std::time::Duration::from_secs(args.client_idle_secs),
        models: ProviderConfig { scripts_dir: args.scripts_dir, ..ProviderConfig::from_env() },
        min_free_disk: args.min_free_disk,
        requests_in_flight_max: args.max_requests_in_flight,
    };
    let node = Node::start(options).await?;
    eprintln!("agentd: node {} serving on {}", node.node_id(), node.advertise_addr());
    if let Some(monitor) = &monitor {
        monitor.node_started(node.clone());
    }
    let api = match http {
        Some(http) => {
            let scheme = if http.tls.is_some() { "https" } else { "http" };
            let api = HttpServer::start(node.service().clone(), http).await?;
            eprintln!("agentd: HTTP API at {scheme}://{}", api.local_addr());
            Some(api)
        }
        None => None,
    };
    let stop_api = || {
        if let Some(monitor) = &monitor {
            monitor.stopping();
        }
        if let Some(api) = &api {
            api.shutdown();
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {
            eprintln!("agentd: shutting down");
            stop_api();
            node.shutdown().await;
            Ok(())
        }
        failure = node.failed() => {
            // Fail-stop: a group whose storage failed cannot go on; the
            // process exits so its supervisor restarts it from what is durable.
            stop_api();
            node.shutdown().await;
            anyhow::bail!("stopping: {failure}")
        }
    }
}

/// How the node comes up, from --init, --join, --token and --credentials.
/// The credentials are read only for a data directory that is not
/// initialised yet: a restart needs nothing but the data directory.
fn bootstrap(args: &StartArgs) -> Result<Bootstrap> {
    let initialised = DataDir::new(&args.data_dir).is_initialised();
    let credentials = match &args.credentials {
        Some(dir) if !initialised => Some(
            ClusterCredentials::read(dir)
                .with_context(|| format!("cannot use the credentials in {}", dir.display()))?,
        ),
        _ => None,
    };
    Ok(match (args.init, &args.join) {
        (true, _) => Bootstrap::Init { shards: args.shards, replication_factor: args.replication, credentials },
        (false, Some(seed)) => {
            let token = match (&args.token, credentials) {
                (Some(_), Some(_)) => bail!("give the join token once: --token or --credentials, not both"),
                (Some(token), None) => token.clone(),
                (None, Some(credentials)) => credentials.token().to_string(),
                (None, None) if initialised => String::new(),
                (None, None) => {
                    bail!("--join needs --token TOKEN (DATA/join-token on any member) or --credentials DIR")
                }
            };
            Bootstrap::Join { seed: seed.clone(), token }
        }
        (false, None) => Bootstrap::Restart,
    })
}

/// The HTTP API's options, its certificate and key read from their files.
fn http_options(args: &StartArgs) -> Result<Option<HttpOptions>> {
    let Some(listen) = args.http else { return Ok(None) };
    let read =
        |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
    let tls = match (&args.http_tls_cert, &args.http_tls_key) {
        (Some(cert), Some(key)) => Some(HttpTls { cert_pem: read(cert)?, key_pem: read(key)? }),
        _ => None,
    };
    Ok(Some(HttpOptions { listen, tls }))
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// A size in bytes: a number with an optional unit (`KiB`, `MiB`, `GiB`,
/// `TiB` count in 1024s; `KB`, `MB`, `GB`, `TB` in 1000s; `B` or none is
/// bytes).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a size: expected a number such as 256MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!("unknown unit {other:?} in {text:?}: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"))
        }
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert!(parse_bytes("MiB").unwrap_err().contains("not a size"));
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("99999999999TiB").unwrap_err().contains("too large"));
    }
}
