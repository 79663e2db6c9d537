//! `agentd bench`: measure a running cluster or this host's sandboxes.
//! The measurements themselves are in `crate::bench`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Target;
use crate::bench::{append, first_model_request, flood, http, mcp, moves, overload, sandbox};

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
    /// Silent QUIC connections against one node: what it admits, closes and refuses, and its memory.
    Flood {
        #[command(flatten)]
        target: Target,
        /// Connection attempts in all.
        #[arg(long, default_value_t = 10_000)]
        attempts: usize,
        /// Loopback source addresses to spread them over (127.0.0.2 and up).
        #[arg(long, default_value_t = 40)]
        sources: u8,
        /// The node's process id, for its memory.
        #[arg(long)]
        node_pid: u32,
    },
    /// Appends at rising concurrency against one node to find where throughput
    /// stops growing, then ten times past it: what is admitted and how fast,
    /// what is refused as overloaded, and the node's memory.
    Overload {
        #[command(flatten)]
        target: Target,
        /// Concurrent clients of the steps that look for the knee.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,128,256")]
        steps: Vec<u32>,
        /// The last step runs this many times the knee's clients.
        #[arg(long, default_value_t = 10)]
        factor: u32,
        /// Seconds per step.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// QUIC connections the clients share.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// The node's process id, for its memory.
        #[arg(long)]
        node_pid: Option<u32>,
    },
    /// Shard moves under appends, one after another: how long each takes and
    /// how long the moved shard's client waits (needs more nodes than replicas).
    Move {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10)]
        moves: u32,
    },
    /// MCP tool calls through the runtime against direct calls to the same
    /// server (`tests/mcp/server.py`): per-call latency and the overhead.
    Mcp {
        #[command(flatten)]
        target: Target,
        /// The MCP server's endpoint (it must serve `add`).
        #[arg(long)]
        mcp_url: String,
        /// The server's bearer token (stored in a vault for the session).
        #[arg(long, env = "AGENTD_BENCH_MCP_TOKEN", hide_env_values = true)]
        token: String,
        /// The nodes' --scripts-dir, where the model's script is written.
        #[arg(long)]
        scripts_dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        calls: u32,
    },
    /// The Managed Agents HTTP API against native QUIC: appends, session reads, SSE fan-out.
    Http {
        #[command(subcommand)]
        command: http::HttpCommand,
    },
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Sandbox { sandboxes, calls, dir, json } => run_sandbox(sandboxes, calls, dir, json).await,
        BenchCommand::FirstModelRequest { target, sessions } => run_first_model_request(target, sessions).await,
        BenchCommand::Append { target, clients, events, payload_bytes } => {
            run_append(target, clients, events, payload_bytes).await
        }
        BenchCommand::Http { command } => run_http(command).await,
        BenchCommand::Move { target, moves } => run_moves(target, moves).await,
        BenchCommand::Mcp { target, mcp_url, token, scripts_dir, calls } => {
            let json = target.json;
            let report = mcp::run(mcp::McpBench { target, url: mcp_url, token, scripts_dir, calls }).await?;
            if json {
                outln!("{}", serde_json::to_string(&report)?);
            } else {
                outln!(
                    "{} MCP calls: through the runtime p50 {:.2} ms p99 {:.2} ms; direct p50 {:.2} ms p99 {:.2} ms; overhead p50 {:.2} ms p99 {:.2} ms",
                    report.calls, report.runtime_p50_ms, report.runtime_p99_ms, report.direct_p50_ms,
                    report.direct_p99_ms, report.overhead_p50_ms, report.overhead_p99_ms
                );
            }
            Ok(())
        }
        BenchCommand::Overload { target, steps, factor, seconds, connections, node_pid } => {
            let json = target.json;
            let bench = overload::OverloadBench { target, steps, factor, seconds, connections, node_pid };
            run_overload(bench, json).await
        }
        BenchCommand::Flood { target, attempts, sources, node_pid } => {
            run_flood(target, attempts, sources, node_pid).await
        }
    }
}

async fn run_sandbox(sandboxes: u32, calls: u32, dir: Option<PathBuf>, json: bool) -> Result<()> {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("agentd-bench-sandbox-{}", std::process::id())));
    let reports = sandbox::run(sandbox::SandboxBench { sandboxes, calls, dir: dir.clone() }).await;
    let _ = std::fs::remove_dir_all(&dir);
    for report in reports? {
        if json {
            outln!("{}", serde_json::to_string(&report)?);
        } else {
            outln!(
                "{}: {} sandboxes; cold start p50 {:.1} ms p95 {:.1} ms; bash call p50 {:.2} ms p95 {:.2} ms; read call p50 {:.2} ms p95 {:.2} ms",
                report.driver, report.sandboxes, report.cold_start_p50_ms, report.cold_start_p95_ms,
                report.bash_call_p50_ms, report.bash_call_p95_ms, report.read_call_p50_ms, report.read_call_p95_ms
            );
        }
    }
    Ok(())
}

async fn run_first_model_request(target: Target, sessions: u32) -> Result<()> {
    let json = target.json;
    let bench = first_model_request::FirstModelRequestBench { target, sessions };
    for report in first_model_request::run(bench).await? {
        if json {
            outln!("{}", serde_json::to_string(&report)?);
        } else {
            outln!(
                "{:<5} provisioning, {} sessions: p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
                report.provisioning,
                report.sessions,
                report.p50_ms,
                report.p95_ms,
                report.max_ms
            );
        }
    }
    Ok(())
}

async fn run_append(target: Target, clients: u32, events: u64, payload_bytes: usize) -> Result<()> {
    let json = target.json;
    let bench = append::AppendBench { target, clients, events, payload_bytes };
    let report = append::run(bench).await?;
    if json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{} appends by {} clients in {:.2}s: {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} errors",
            report.events, report.clients, report.seconds, report.events_per_sec, report.p50_ms, report.p99_ms, report.p999_ms, report.max_ms, report.errors
        );
    }
    Ok(())
}

async fn run_moves(target: Target, count: u32) -> Result<()> {
    let json = target.json;
    let report = moves::run(moves::MoveBench { target, moves: count }).await?;
    if json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{} moves: took p50 {:.0} ms, max {:.0} ms; the moved shard's client waited p50 {:.0} ms, max {:.0} ms; {} appends, {} errors",
            report.moves, report.move_p50_ms, report.move_max_ms, report.unavailable_p50_ms, report.unavailable_max_ms, report.appends, report.errors
        );
    }
    Ok(())
}

async fn run_overload(bench: overload::OverloadBench, json: bool) -> Result<()> {
    let reports = overload::run(bench).await?;
    if json {
        for report in &reports {
            outln!("{}", serde_json::to_string(report)?);
        }
        return Ok(());
    }
    outln!(
        "{:>7} {:>6} {:>11} {:>8} {:>8} {:>11} {:>11} {:>7} {:>8}",
        "CLIENTS",
        "",
        "ADMITTED/S",
        "P50 MS",
        "P99 MS",
        "REFUSED/S",
        "REFUSAL P99",
        "ERRORS",
        "RSS MIB"
    );
    for report in &reports {
        outln!(
            "{:>7} {:>6} {:>11.0} {:>8.2} {:>8.2} {:>11.0} {:>11.2} {:>7} {:>8}",
            report.clients,
            if report.label == "step" { "" } else { &report.label },
            report.admitted_per_sec,
            report.admitted_p50_ms,
            report.admitted_p99_ms,
            report.refused_per_sec,
            report.refusal_p99_ms,
            report.other_errors,
            report.node_rss_mib.map_or("-".to_string(), |rss| format!("{rss:.0}"))
        );
    }
    Ok(())
}

async fn run_http(command: http::HttpCommand) -> Result<()> {
    let json = command.json();
    let (report, summary) = match command {
        http::HttpCommand::Append(args) => {
            let report = http::append(args).await?;
            (serde_json::to_string(&report)?, report.summary())
        }
        http::HttpCommand::Get(args) => {
            let report = http::get(args).await?;
            (serde_json::to_string(&report)?, report.summary())
        }
        http::HttpCommand::Stream(args) => {
            let report = http::stream(args).await?;
            (serde_json::to_string(&report)?, report.summary())
        }
    };
    outln!("{}", if json { report } else { summary });
    Ok(())
}

async fn run_flood(target: Target, attempts: usize, sources: u8, node_pid: u32) -> Result<()> {
    let addr = target.addr.first().context("--addr names no node")?;
    let addr = tokio::net::lookup_host(addr.as_str()).await?.next().context("--addr resolves to nothing")?;
    let control = target.client()?;
    let report = flood::run(flood::FloodBench { addr, attempts, sources, node_pid, control }).await?;
    if target.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{} attempts from {} addresses: {} held open, {} closed by the node, {} refused; node RSS {:.0} MiB before, {:.0} MiB flooded, {:.0} MiB after; control client served: {}",
            report.attempts, report.sources, report.held_open, report.closed_by_node, report.refused,
            report.rss_before_mib, report.rss_flooded_mib, report.rss_after_mib, report.control_served
        );
    }
    Ok(())
}
