//! The `agentd` command line. Scripts depend on it: flags are stable and
//! every command that prints data takes `--json`.

use std::net::SocketAddr;
use std::path::PathBuf;

use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{GroupId, SessionId};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::bench::{run_append, AppendBench};
use crate::client::Client;
use crate::json;
use crate::node::Node;
use crate::options::{Bootstrap, NodeOptions, RaftTuning};

#[derive(Debug, Parser)]
#[command(name = "agentd", version, about = "A self-hostable cluster runtime for managed AI agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node in the foreground.
    Start(StartArgs),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create sessions, send events, read them.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Measure a running cluster.
    #[command(subcommand)]
    Bench(BenchCommand),
}

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
    /// Join the cluster of the node at HOST:PORT (needs --token).
    #[arg(long, requires = "token")]
    pub join: Option<String>,
    /// Join token, from DATA/join-token on any member.
    #[arg(long, env = "AGENTD_JOIN_TOKEN")]
    pub token: Option<String>,
    /// Shards of a new cluster (fixed for its lifetime).
    #[arg(long, default_value_t = agentd_protocol::limits::SHARDS_DEFAULT)]
    pub shards: u32,
    /// Replicas per shard of a new cluster.
    #[arg(long, default_value_t = agentd_protocol::limits::REPLICATION_FACTOR_DEFAULT)]
    pub replication: u32,
    /// Serve Prometheus metrics over HTTP at HOST:PORT.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
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
}

/// How to reach the cluster: node addresses (comma-separated; any node
/// works, later ones are tried when earlier ones fail) and the CA.
#[derive(Debug, Args, Clone)]
pub struct Target {
    #[arg(long, value_delimiter = ',', required = true)]
    pub addr: Vec<String>,
    /// Cluster CA certificate (DATA/tls/ca.pem). Needed unless every address is loopback.
    #[arg(long, env = "AGENTD_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    fn client(&self) -> Result<Client> {
        Ok(Client::for_addrs(self.addr.clone(), self.ca_pem()?)?)
    }

    fn ca_pem(&self) -> Result<Option<String>> {
        self.ca
            .as_ref()
            .map(|path| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())))
            .transpose()
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, shards, leaders and replica lag.
    Status(Target),
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session; prints its id.
    Create(Target),
    /// Append a user.message; prints its sequence number once committed.
    Send {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        #[arg(long)]
        text: String,
    },
    /// Print a session's events.
    Events {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        /// First sequence number to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep printing new events as they commit.
        #[arg(long)]
        follow: bool,
        /// Read the replica on the addressed node instead of the leader's.
        #[arg(long, conflicts_with = "follow")]
        local: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Closed-loop appends: commit latency percentiles and throughput.
    Append {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        clients: u32,
        #[arg(long, default_value_t = 1000)]
        events: u64,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
    },
}

/// The `agentd` program: logging to stderr, a multi-threaded runtime, the command.
pub fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,quinn=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agentd: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agentd: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Start(args) => start(args).await,
        Command::Cluster(ClusterCommand::Status(target)) => cluster_status(target).await,
        Command::Session(command) => session(command).await,
        Command::Bench(BenchCommand::Append { target, clients, events, payload_bytes }) => {
            let report = run_append(AppendBench {
                addrs: target.addr.clone(),
                ca_pem: target.ca_pem()?,
                clients,
                events,
                payload_bytes,
            })
            .await?;
            if target.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} appends by {} clients in {:.2}s: {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} errors",
                    report.events, report.clients, report.seconds, report.events_per_sec, report.p50_ms, report.p99_ms, report.p999_ms, report.max_ms, report.errors
                );
            }
            Ok(())
        }
    }
}

async fn start(args: StartArgs) -> Result<()> {
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let bootstrap = match (args.init, args.join) {
        (true, _) => Bootstrap::Init { shards: args.shards, replication_factor: args.replication },
        (false, Some(seed)) => Bootstrap::Join { seed, token: args.token.unwrap_or_default() },
        (false, None) => Bootstrap::Restart,
    };
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
        },
    };
    let node = Node::start(options).await?;
    eprintln!("agentd: node {} serving on {}", node.node_id(), node.advertise_addr());
    shutdown_signal().await;
    eprintln!("agentd: shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
    }
}

async fn cluster_status(target: Target) -> Result<()> {
    let status = target.client()?.cluster_status().await?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
        return Ok(());
    }
    println!("shards: {}   replication: {}", status.shards, status.replication_factor);
    println!("{:<6} {:<22} {:<10} {:>8} {:>6}", "NODE", "ADDR", "STATE", "GROUPS", "LEADS");
    for node in &status.nodes {
        let leads = node.groups.iter().filter(|group| group.leader == Some(node.node_id)).count();
        let state = if node.reachable { "up" } else { "unreachable" };
        println!("{:<6} {:<22} {:<10} {:>8} {:>6}", node.node_id, node.addr, state, node.groups.len(), leads);
    }
    println!();
    println!("{:<10} {:>7} {:>6} {:>9}  {:<14} REPLICA LAG", "GROUP", "LEADER", "TERM", "LAST LOG", "VOTERS");
    for (node, group) in leader_reports(&status) {
        let lag: Vec<String> = group
            .replica_lag
            .iter()
            .map(|(replica, lag)| format!("{replica}:{}", lag.map(|lag| lag.to_string()).unwrap_or_else(|| "?".into())))
            .collect();
        println!(
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

/// For every group, the report of the node that leads it (or of any node if none does).
fn leader_reports(status: &ClusterStatus) -> Vec<(u64, &agentd_protocol::api::GroupStatus)> {
    let mut by_group: std::collections::BTreeMap<GroupId, (u64, &agentd_protocol::api::GroupStatus)> =
        Default::default();
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

async fn session(command: SessionCommand) -> Result<()> {
    match command {
        SessionCommand::Create(target) => {
            let info = target.client()?.create_session().await?;
            if target.json {
                println!(
                    "{}",
                    json!({"session_id": info.session_id.to_string(), "shard": info.shard.0, "created_at_ms": info.created_at_ms})
                );
            } else {
                println!("{}", info.session_id);
            }
        }
        SessionCommand::Send { target, session, text } => {
            let seq = target.client()?.append(session, EventPayload::user_text(text)).await?;
            if target.json {
                println!("{}", json!({"session_id": session.to_string(), "seq": seq}));
            } else {
                println!("{seq}");
            }
        }
        SessionCommand::Events { target, session, from, follow, local } => {
            let client = target.client()?;
            let print = |events: &[agentd_protocol::event::Event]| {
                for event in events {
                    if target.json {
                        println!("{}", json::event(event));
                    } else {
                        println!("{}", json::summary(event));
                    }
                }
            };
            if !follow {
                let consistency = if local { Consistency::Local } else { Consistency::Leader };
                let mut next = from;
                loop {
                    let (events, next_seq) = client
                        .read_events(session, next, agentd_protocol::limits::EVENTS_PER_PAGE_MAX, consistency)
                        .await?;
                    if events.is_empty() {
                        break;
                    }
                    print(&events);
                    next = next_seq;
                }
                return Ok(());
            }
            // Follow, resuming from the last printed event if a node goes away.
            let mut subscription = client.subscribe(session, from);
            loop {
                print(&subscription.next().await?);
            }
        }
    }
    Ok(())
}
