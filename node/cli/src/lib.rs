//! The `agentd` command line. Scripts depend on it: flags are stable and
//! every command that prints data takes `--json`. One file per command
//! group in `commands/`; measurements in `bench/`; JSON shapes of events in
//! `output.rs`.

#![deny(clippy::print_stdout)]

/// Prints one line of a command's output. When the reader has gone away
/// (`agentd session events --json | head -1`), the command ends quietly
/// with success instead of panicking on the broken pipe.
macro_rules! outln {
    () => { $crate::write_stdout_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::write_stdout_line(format_args!($($arg)*)) };
}

pub mod bench;
pub mod commands;
pub mod monitor;
pub mod output;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use commands::{
    agent, apikey, bench as bench_command, cluster, dev, environment, hands, node, policy, session, shard, start, vault,
};

#[derive(Debug, Parser)]
#[command(name = "agentd", version, about = "A self-hostable cluster runtime for managed AI agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node in the foreground.
    Start(start::StartArgs),
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
        /// The nodes' HTTP APIs listen on 127.0.0.1:HTTP_BASE_PORT, HTTP_BASE_PORT+1, ...
        #[arg(long, default_value_t = 7801)]
        http_base_port: u16,
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Keep the cluster running after the sample session (Ctrl-C stops it).
        #[arg(long)]
        keep_running: bool,
    },
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Operate on one group: list groups, move a replica, hand over a leadership.
    #[command(subcommand)]
    Shard(shard::ShardCommand),
    /// Operate on one node: drain it of its replicas, or remove it for good.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Create sessions, send events, read them.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// Define agents (versioned).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Define environments: where an agent's tools run.
    #[command(subcommand)]
    Environment(environment::EnvironmentCommand),
    /// Store credentials that tool calls get and results never show.
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// API keys: who may call the cluster, and in which workspace.
    #[command(subcommand)]
    Apikey(apikey::ApiKeyCommand),
    /// A workspace's approval policy: tools every agent of it asks before using.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Measure a running cluster.
    #[command(subcommand)]
    Bench(bench_command::BenchCommand),
    /// Run the real cluster code under a seeded plan of crashes, partitions
    /// and disk faults in one process, and check every invariant.
    #[command(subcommand)]
    Sim(agentd_sim::cli::SimCommand),
    /// The agent inside a sandbox: serves the built-in tools over QUIC to its node.
    Hands(hands::HandsArgs),
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
        return agentd_sim::cli::main(command);
    }
    // `dev` prints a session's events; node chatter would drown them.
    // openraft warns on every failed RPC (hundreds a second while a peer is
    // down); agentd's own peer lines say the same once (raft::peer_health).
    let default_filter = if matches!(cli.command, Command::Dev { .. }) {
        "warn,openraft=error"
    } else {
        "info,openraft=error,quinn=warn"
    };
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

/// Runs one command (all but `sim`, which makes its own runtimes).
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Start(args) => start::run(args).await,
        Command::Dev { data_dir, nodes, base_port, http_base_port, shards, keep_running } => {
            dev::run(dev::DevOptions { data_dir, nodes, base_port, http_base_port, shards, keep_running }).await
        }
        Command::Cluster(command) => cluster::run(command).await,
        Command::Shard(command) => shard::run(command).await,
        Command::Node(command) => node::run(command).await,
        Command::Hands(args) => hands::run(args).await,
        Command::Session(command) => session::run(command).await,
        Command::Agent(command) => agent::run(command).await,
        Command::Environment(command) => environment::run(command).await,
        Command::Vault(command) => vault::run(command).await,
        Command::Apikey(command) => apikey::run(command).await,
        Command::Policy(command) => policy::run(command).await,
        Command::Bench(command) => bench_command::run(command).await,
        Command::Sim(_) => anyhow::bail!("`agentd sim` runs outside a tokio runtime; call agentd_sim::cli::main"),
    }
}

/// What [`outln!`] calls: a line to stdout, and a quiet exit once nobody reads it.
pub fn write_stdout_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("agentd: cannot write to stdout: {error}");
            std::process::exit(1)
        }
    }
}
