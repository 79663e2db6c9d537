//! `agentd hands`: the agent inside a sandbox, serving the built-in tools
//! over QUIC to its node (see `agentd_node::hands`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use agentd_actors::sandbox::egress;

use agentd_node::hands::{HandsAgent, HandsAgentOptions};

#[derive(Debug, Args)]
pub struct HandsArgs {
    /// Address to serve on (UDP).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The directory the tools work in (created if missing).
    #[arg(long)]
    pub workspace: PathBuf,
    /// The cluster CA certificate; callers must present a client certificate it issued.
    #[arg(long)]
    pub ca: PathBuf,
    /// This agent's certificate and key, issued by the CA for this sandbox.
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    /// The idempotency ledger (default: WORKSPACE.ledger next to the workspace).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Default and maximum wall-clock time of one bash call.
    #[arg(long, default_value_t = agentd_actors::sandbox::Limits::default().wall_clock_ms)]
    pub wall_clock_ms: u64,
    /// Output kept per tool call.
    #[arg(long, default_value_t = agentd_actors::sandbox::Limits::default().output_bytes_max)]
    pub output_bytes_max: usize,
    /// Processes of the shell's user, with --run-as.
    #[arg(long, default_value_t = agentd_actors::sandbox::Limits::default().pids_max)]
    pub pids_max: u64,
    /// The shell: bash, or busybox ash.
    #[arg(long, default_value = "/bin/bash")]
    pub shell: PathBuf,
    /// Run the shell as this uid (the workspace is handed to it).
    #[arg(long)]
    pub run_as: Option<u32>,
    /// Start the shell in the network namespace bound at this path (needs root and nsenter).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Serve an egress proxy to the shell at 127.0.0.1:3128 inside --netns that reaches
    /// only the hosts listed in this file (an entry per line, as `agentd environment
    /// create --allow-host` takes them; `#` starts a comment).
    #[arg(long, requires = "netns")]
    pub allow_hosts_file: Option<PathBuf>,
}

/// `agentd hands`: serves until killed.
pub async fn run(args: HandsArgs) -> Result<()> {
    let read =
        |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
    let identity = agentd_transport::tls::HandsIdentity {
        ca_cert_pem: read(&args.ca)?,
        cert_pem: read(&args.cert)?,
        key_pem: read(&args.key)?,
    };
    let ledger = args.ledger.unwrap_or_else(|| {
        let mut name = args.workspace.file_name().unwrap_or_default().to_os_string();
        name.push(".ledger");
        args.workspace.with_file_name(name)
    });
    let mut limits = agentd_actors::sandbox::Limits {
        wall_clock_ms: args.wall_clock_ms,
        output_bytes_max: args.output_bytes_max,
        pids_max: args.pids_max,
        ..Default::default()
    };
    if let (Some(file), Some(namespace)) = (&args.allow_hosts_file, &args.netns) {
        let entries: Vec<String> = read(file)?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let allowlist = agentd_protocol::egress::Allowlist::parse(&entries)
            .map_err(|reason| anyhow::anyhow!("bad allowlist in {}: {reason}", file.display()))?;
        let listener = egress::listen_in_namespace(namespace.clone(), egress::PROXY_ADDRESS)
            .await
            .with_context(|| format!("cannot listen for the egress proxy in {}", namespace.display()))?;
        tokio::spawn(egress::serve(listener, std::sync::Arc::new(allowlist), "hands".to_owned()));
        limits.network = agentd_actors::sandbox::Network::Allowlist(entries);
    }
    let agent = HandsAgent::bind(HandsAgentOptions {
        listen: args.listen,
        workspace: args.workspace,
        ledger,
        identity,
        limits,
        shell: agentd_actors::sandbox::LocalShell {
            program: args.shell,
            run_as: args.run_as,
            network_namespace: args.netns,
        },
    })?;
    // Scripts and the microVM driver wait for this line.
    outln!("agentd hands listening on {}", agent.local_addr()?);
    agent.serve().await
}
