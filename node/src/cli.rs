//! The `agentd` command line. Scripts depend on it: flags are stable and
//! every command that prints data takes `--json`.

use std::net::SocketAddr;
use std::path::PathBuf;

use agentd_protocol::agent::{
    AgentSpec, BuiltInTool, CustomTool, EnvironmentSpec, Network, PermissionPolicy, Resources,
};
use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::{Confirmation, ContentBlock, EventPayload, JsonText};
use agentd_protocol::ids::{AgentId, EnvironmentId, EventId, GroupId, SessionId, VaultId};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::bench::{
    run_append, run_first_model_request, run_sandbox, AppendBench, FirstModelRequestBench, SandboxBench,
};
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
    /// A local 3-node cluster in this process running a sample agent session.
    Dev {
        /// Where the nodes keep their data; cleared at start.
        #[arg(long, default_value = ".agentd/dev")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Nodes listen on 127.0.0.1:BASE_PORT, BASE_PORT+1, ...
        #[arg(long, default_value_t = 7701)]
        base_port: u16,
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Keep the cluster running after the sample session (Ctrl-C stops it).
        #[arg(long)]
        keep_running: bool,
    },
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create sessions, send events, read them.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Define agents (versioned).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Define environments: where an agent's tools run.
    #[command(subcommand)]
    Environment(EnvironmentCommand),
    /// Store credentials that tool calls get and results never show.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Measure a running cluster.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the real cluster code under a seeded plan of crashes, partitions
    /// and disk faults in one process, and check every invariant.
    #[command(subcommand)]
    Sim(crate::sim::cli::SimCommand),
    /// The agent inside a sandbox: serves the built-in tools over QUIC to its node.
    Hands(crate::hands::HandsArgs),
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
    /// Where session sandboxes live (default DATA/sandboxes). Nodes on one
    /// host may share it.
    #[arg(long)]
    pub sandbox_dir: Option<PathBuf>,
    /// Destroy a session's sandbox after this many seconds without a tool
    /// call (the workspace stays; the next call starts a fresh sandbox).
    #[arg(long, default_value_t = crate::options::SANDBOX_IDLE_DEFAULT.as_secs())]
    pub sandbox_idle_secs: u64,
    /// Directory that `scripted:FILE` model names are relative to.
    #[arg(long)]
    pub scripts_dir: Option<PathBuf>,
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
pub enum AgentCommand {
    /// Create an agent (or, with --id, add a version to one); prints its id.
    Create {
        #[command(flatten)]
        target: Target,
        /// Add a version to this agent instead of creating a new one.
        #[arg(long)]
        id: Option<AgentId>,
        #[arg(long)]
        name: String,
        /// scripted:echo, scripted:FILE, anthropic:MODEL (or claude-...), openai:MODEL.
        #[arg(long)]
        model: String,
        #[arg(long)]
        system: Option<String>,
        /// Built-in tools the agent may use: bash, read, write, edit, glob, grep.
        #[arg(long, value_delimiter = ',')]
        tools: Vec<String>,
        /// Tools that wait for the client's confirmation (always_ask).
        #[arg(long, value_delimiter = ',')]
        ask: Vec<String>,
        /// A tool the client executes: NAME or NAME=DESCRIPTION (input: any JSON object).
        #[arg(long = "custom-tool")]
        custom_tools: Vec<String>,
        #[arg(long, default_value_t = agentd_protocol::limits::MODEL_CALLS_PER_TURN_DEFAULT)]
        max_model_calls: u32,
    },
    /// Print an agent and its versions.
    Get {
        #[command(flatten)]
        target: Target,
        agent: AgentId,
    },
}

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

#[derive(Debug, Subcommand)]
pub enum EnvironmentCommand {
    /// Create an environment (or, with --id, add a version to one); prints its id.
    Create {
        #[command(flatten)]
        target: Target,
        /// Add a version to this environment instead of creating a new one.
        #[arg(long)]
        id: Option<EnvironmentId>,
        #[arg(long)]
        name: String,
        /// Sandbox driver: namespace (bubblewrap), oci (runc), gvisor (runsc) or microvm (QEMU).
        #[arg(long, default_value = "namespace")]
        driver: String,
        /// Let tools use the host's network, unfiltered.
        #[arg(long, conflicts_with = "allowed_hosts")]
        network: bool,
        /// Let tools reach this host, and no other, through the sandbox's egress proxy
        /// (repeatable): `host`, `host:port`, `*.domain`, an IP address, or
        /// `https://host` (port 443 only). Without --network or --allow-host, tools have
        /// no network.
        #[arg(long = "allow-host", value_name = "HOST")]
        allowed_hosts: Vec<String>,
        #[arg(long, default_value_t = agentd_protocol::limits::TOOL_TIMEOUT_MS_DEFAULT)]
        tool_timeout_ms: u64,
        /// Provision the sandbox when a turn starts instead of at the first tool call.
        #[arg(long)]
        eager_provisioning: bool,
        /// A vault whose secrets every tool call gets (repeatable).
        #[arg(long = "vault")]
        vaults: Vec<VaultId>,
        /// Memory of each sandbox, all its processes together (default 1024).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Processes and threads of each sandbox (default 256).
        #[arg(long)]
        processes_max: Option<u64>,
        /// CPU time of each sandbox in thousandths of a core (default 1000: one core).
        #[arg(long)]
        cpu_millicores: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session; prints its id.
    Create {
        #[command(flatten)]
        target: Target,
        /// Run this agent (its current version) in the session.
        #[arg(long)]
        agent: Option<AgentId>,
        #[arg(long)]
        environment: Option<EnvironmentId>,
    },
    /// Answer a tool use that waits for confirmation.
    Confirm {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        event: EventId,
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        allow: bool,
        #[arg(long)]
        deny: bool,
        /// Why the call is denied (shown to the model).
        #[arg(long, requires = "deny")]
        message: Option<String>,
    },
    /// Answer a custom tool use with its result.
    ToolResult {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        event: EventId,
        #[arg(long)]
        text: String,
        #[arg(long)]
        error: bool,
    },
    /// Show a session: status, pinned agent, pending actions, last stop reason.
    Get {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
    /// Resume a dead-lettered session (idle after its model retries ran out).
    Retry {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
    /// End a session for good: its turn stops, its sandbox and workspace are destroyed,
    /// and it takes no more events. Prints the sequence number of session.status_terminated.
    Terminate {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
    /// Stop the agent's current turn.
    Interrupt {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
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
    /// Sandbox cold start and per-call latency, per available driver (no cluster needed).
    Sandbox {
        #[arg(long, default_value_t = 20)]
        sandboxes: u32,
        /// Calls of each kind per sandbox after the first.
        #[arg(long, default_value_t = 20)]
        calls: u32,
        /// Where the sandboxes are made (a temporary directory by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Time from a message to the first model request, lazy vs eager sandboxes.
    FirstModelRequest {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 50)]
        sessions: u32,
    },
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
    let cli = Cli::parse();
    if let Command::Sim(command) = cli.command {
        // The simulator makes its own runtimes (one per simulated host) and
        // logs only errors unless AGENTD_LOG asks for more.
        let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
        return crate::sim::cli::main(command);
    }
    // `dev` prints a session's events; node chatter would drown them.
    let default_filter =
        if matches!(cli.command, Command::Dev { .. }) { "warn" } else { "info,openraft=warn,quinn=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
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
        Command::Dev { data_dir, nodes, base_port, shards, keep_running } => {
            crate::dev::run(crate::dev::DevOptions { data_dir, nodes, base_port, shards, keep_running }).await
        }
        Command::Cluster(ClusterCommand::Status(target)) => cluster_status(target).await,
        Command::Hands(args) => crate::hands::run(args).await,
        Command::Session(command) => session(command).await,
        Command::Agent(command) => agent(command).await,
        Command::Environment(command) => environment(command).await,
        Command::Vault(VaultCommand::Put { target, id, name, secret }) => {
            let mut value = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)?;
            let value = value.strip_suffix('\n').unwrap_or(&value).to_string();
            let vault = target.client()?.put_secret(id, name, secret, value).await?;
            if target.json {
                println!("{}", json!({"vault_id": vault.id.to_string(), "secrets": vault.secret_names}));
            } else {
                println!("{}", vault.id);
            }
            Ok(())
        }
        Command::Sim(_) => anyhow::bail!("`agentd sim` runs outside a tokio runtime; call agentd_node::sim::cli::main"),
        Command::Bench(BenchCommand::Sandbox { sandboxes, calls, dir, json }) => {
            let dir = dir
                .unwrap_or_else(|| std::env::temp_dir().join(format!("agentd-bench-sandbox-{}", std::process::id())));
            let reports = run_sandbox(SandboxBench { sandboxes, calls, dir: dir.clone() }).await;
            let _ = std::fs::remove_dir_all(&dir);
            for report in reports? {
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "{}: {} sandboxes; cold start p50 {:.1} ms p95 {:.1} ms; bash call p50 {:.2} ms p95 {:.2} ms; read call p50 {:.2} ms p95 {:.2} ms",
                        report.driver, report.sandboxes, report.cold_start_p50_ms, report.cold_start_p95_ms,
                        report.bash_call_p50_ms, report.bash_call_p95_ms, report.read_call_p50_ms, report.read_call_p95_ms
                    );
                }
            }
            Ok(())
        }
        Command::Bench(BenchCommand::FirstModelRequest { target, sessions }) => {
            let bench = FirstModelRequestBench { addrs: target.addr.clone(), ca_pem: target.ca_pem()?, sessions };
            for report in run_first_model_request(bench).await? {
                if target.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "{:<5} provisioning, {} sessions: p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
                        report.provisioning, report.sessions, report.p50_ms, report.p95_ms, report.max_ms
                    );
                }
            }
            Ok(())
        }
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
        sandbox_dir: args.sandbox_dir,
        sandbox_idle: std::time::Duration::from_secs(args.sandbox_idle_secs),
        models: agentd_actors::model::ProviderConfig {
            scripts_dir: args.scripts_dir,
            ..agentd_actors::model::ProviderConfig::from_env()
        },
    };
    let node = Node::start(options).await?;
    eprintln!("agentd: node {} serving on {}", node.node_id(), node.advertise_addr());
    tokio::select! {
        _ = shutdown_signal() => {
            eprintln!("agentd: shutting down");
            node.shutdown().await;
            Ok(())
        }
        failure = node.failed() => {
            // Fail-stop: a group whose storage failed cannot go on; the
            // process exits so its supervisor restarts it from what is durable.
            node.shutdown().await;
            anyhow::bail!("stopping: {failure}")
        }
    }
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
        SessionCommand::Create { target, agent, environment } => {
            let info = target.client()?.create_session_with(agent, environment).await?;
            if target.json {
                println!(
                    "{}",
                    json!({"session_id": info.session_id.to_string(), "shard": info.shard.0, "created_at_ms": info.created_at_ms})
                );
            } else {
                println!("{}", info.session_id);
            }
        }
        SessionCommand::Confirm { target, session, event, allow, message, .. } => {
            let result = if allow { Confirmation::Allow } else { Confirmation::Deny };
            let payload = EventPayload::UserToolConfirmation { tool_use_id: event, result, deny_message: message };
            print_seq(&target, session, target.client()?.append(session, payload).await?);
        }
        SessionCommand::ToolResult { target, session, event, text, error } => {
            let payload = EventPayload::UserCustomToolResult {
                custom_tool_use_id: event,
                content: vec![ContentBlock::text(text)],
                is_error: error,
            };
            print_seq(&target, session, target.client()?.append(session, payload).await?);
        }
        SessionCommand::Get { target, session } => {
            let info = target.client()?.get_session(session).await?;
            let stop_reason = info.stop_reason.as_ref().map(|reason| match reason {
                agentd_protocol::event::StopReason::EndTurn => "end_turn",
                agentd_protocol::event::StopReason::RequiresAction { .. } => "requires_action",
                agentd_protocol::event::StopReason::RetriesExhausted => "retries_exhausted",
            });
            let value = json!({
                "session_id": info.session_id.to_string(),
                "shard": info.shard.0,
                "status": format!("{:?}", info.status).to_lowercase(),
                "stop_reason": stop_reason,
                "dead_lettered": stop_reason == Some("retries_exhausted"),
                "agent": info.agent.map(|agent| json!({"id": agent.id.to_string(), "version": agent.version})),
                "environment": info.environment.map(|environment| environment.to_string()),
                "last_seq": info.last_seq,
                "epoch": info.epoch,
                "pending_actions": info.pending_actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            println!("{}", if target.json { value.to_string() } else { serde_json::to_string_pretty(&value)? });
        }
        SessionCommand::Retry { target, session } => {
            print_seq(&target, session, target.client()?.retry_session(session).await?);
        }
        SessionCommand::Terminate { target, session } => {
            print_seq(&target, session, target.client()?.terminate_session(session).await?);
        }
        SessionCommand::Interrupt { target, session } => {
            print_seq(&target, session, target.client()?.append(session, EventPayload::UserInterrupt).await?);
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

fn print_seq(target: &Target, session: SessionId, seq: u64) {
    if target.json {
        println!("{}", json!({"session_id": session.to_string(), "seq": seq}));
    } else {
        println!("{seq}");
    }
}

async fn agent(command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Create { target, id, name, model, system, tools, ask, custom_tools, max_model_calls } => {
            let mut built_in: Vec<BuiltInTool> =
                tools.into_iter().map(|name| BuiltInTool { name, policy: PermissionPolicy::AlwaysAllow }).collect();
            for name in ask {
                match built_in.iter_mut().find(|tool| tool.name == name) {
                    Some(tool) => tool.policy = PermissionPolicy::AlwaysAsk,
                    None => built_in.push(BuiltInTool { name, policy: PermissionPolicy::AlwaysAsk }),
                }
            }
            let custom_tools = custom_tools
                .into_iter()
                .map(|tool| {
                    let (name, description) = tool.split_once('=').unwrap_or((tool.as_str(), ""));
                    Ok(CustomTool {
                        name: name.to_string(),
                        description: description.to_string(),
                        input_schema: JsonText::parse(r#"{"type":"object"}"#)?,
                    })
                })
                .collect::<Result<Vec<_>, agentd_protocol::ApiError>>()?;
            let spec = AgentSpec {
                name,
                model,
                system,
                tools: built_in,
                custom_tools,
                max_model_calls_per_turn: max_model_calls,
            };
            let agent = target.client()?.put_agent(id, spec).await?;
            if target.json {
                println!("{}", json!({"agent_id": agent.id.to_string(), "version": agent.latest_version()}));
            } else {
                println!("{}", agent.id);
            }
        }
        AgentCommand::Get { target, agent } => {
            let agent = target.client()?.get_agent(agent).await?;
            let versions: Vec<_> = agent
                .versions
                .iter()
                .enumerate()
                .map(|(index, spec)| {
                    json!({
                        "version": index + 1,
                        "name": spec.name,
                        "model": spec.model,
                        "system": spec.system,
                        "tools": spec.tools.iter().map(|tool| json!({"name": tool.name, "policy": match tool.policy {
                            PermissionPolicy::AlwaysAllow => "always_allow",
                            PermissionPolicy::AlwaysAsk => "always_ask",
                        }})).collect::<Vec<_>>(),
                        "custom_tools": spec.custom_tools.iter().map(|tool| tool.name.clone()).collect::<Vec<_>>(),
                        "max_model_calls_per_turn": spec.max_model_calls_per_turn,
                    })
                })
                .collect();
            let value =
                json!({"agent_id": agent.id.to_string(), "created_at_ms": agent.created_at_ms, "versions": versions});
            println!("{}", if target.json { value.to_string() } else { serde_json::to_string_pretty(&value)? });
        }
    }
    Ok(())
}

async fn environment(command: EnvironmentCommand) -> Result<()> {
    let EnvironmentCommand::Create {
        target,
        id,
        name,
        driver,
        network,
        allowed_hosts,
        tool_timeout_ms,
        eager_provisioning,
        vaults,
        memory_mib,
        processes_max,
        cpu_millicores,
    } = command;
    let network = match (network, allowed_hosts.is_empty()) {
        (true, _) => Network::Unrestricted,
        (false, true) => Network::None,
        (false, false) => Network::Allowlist(allowed_hosts),
    };
    let resources = Resources { memory_mib, processes_max, cpu_millicores };
    let spec = EnvironmentSpec { name, driver, network, tool_timeout_ms, eager_provisioning, vaults, resources };
    let environment = target.client()?.put_environment(id, spec).await?;
    if target.json {
        println!("{}", json!({"environment_id": environment.id.to_string(), "version": environment.versions.len()}));
    } else {
        println!("{}", environment.id);
    }
    Ok(())
}
