//! `agentd bench flood`: many QUIC client connections that complete a
//! handshake and then say nothing, from several loopback source addresses,
//! against one node; reports what the node admitted, closed and refused,
//! its memory before, during and after, and whether a client that was
//! connected before the flood is still served.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use agentd_client::Client;
use agentd_protocol::event::EventPayload;
use agentd_protocol::CLIENT_ALPN;
use agentd_transport::tls::{client_config, ServerTrust, SERVER_NAME};
use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::http::rss_kib;

/// How long one connection attempt may take before it counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts in flight at once.
const CONCURRENCY: usize = 200;

pub struct FloodBench {
    pub addr: SocketAddr,
    pub attempts: usize,
    /// Loopback source addresses to spread the attempts over (127.0.0.2, ...).
    pub sources: u8,
    pub node_pid: u32,
    /// A client connected before the flood (with its key), checked after it.
    pub control: Client,
}

#[derive(Debug, Serialize)]
pub struct FloodReport {
    pub attempts: usize,
    pub sources: u8,
    /// Handshakes that completed and stayed open while the flood held.
    pub held_open: usize,
    /// Handshakes that completed and that the node then closed (a cap).
    pub closed_by_node: usize,
    /// Attempts refused or timed out before a handshake completed.
    pub refused: usize,
    pub rss_before_mib: f64,
    pub rss_flooded_mib: f64,
    pub rss_after_mib: f64,
    /// Whether the control client's append succeeded during the flood.
    pub control_served: bool,
}

pub async fn run(bench: FloodBench) -> Result<FloodReport> {
    if bench.sources == 0 || bench.attempts == 0 {
        bail!("--sources and --attempts must be at least 1");
    }
    let session = bench.control.create_session().await.context("the control client's session")?.session_id;
    let rss_before_mib = rss_mib(bench.node_pid)?;
    let mut endpoints = Vec::new();
    for source in 0..bench.sources {
        let ip = IpAddr::from([127, 0, 0, 2 + source]);
        let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ip, 0)).with_context(|| format!("bind {ip}"))?;
        endpoint.set_default_client_config(client_config(ServerTrust::InsecureLoopback, CLIENT_ALPN)?);
        endpoints.push(endpoint);
    }
    let mut connections = Vec::new();
    let mut refused = 0;
    let mut attempt = 0;
    while attempt < bench.attempts {
        let batch = CONCURRENCY.min(bench.attempts - attempt);
        let mut connects = tokio::task::JoinSet::new();
        for index in attempt..attempt + batch {
            let (endpoint, addr) = (endpoints[index % endpoints.len()].clone(), bench.addr);
            connects.spawn(async move {
                let connecting = endpoint.connect(addr, SERVER_NAME).ok()?;
                tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.ok()?.ok()
            });
        }
        while let Some(connection) = connects.join_next().await {
            match connection.ok().flatten() {
                Some(connection) => connections.push(connection),
                None => refused += 1,
            }
        }
        attempt += batch;
        eprintln!("bench flood: {attempt} of {} attempts, {refused} refused", bench.attempts);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed_by_node = connections.iter().filter(|connection| connection.close_reason().is_some()).count();
    let held_open = connections.len() - closed_by_node;
    let rss_flooded_mib = rss_mib(bench.node_pid)?;
    let control_served = bench.control.append(session, EventPayload::user_text("during the flood")).await.is_ok();
    for connection in &connections {
        connection.close(0u32.into(), b"done");
    }
    drop(connections);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_mib = rss_mib(bench.node_pid)?;
    Ok(FloodReport {
        attempts: bench.attempts,
        sources: bench.sources,
        held_open,
        closed_by_node,
        refused,
        rss_before_mib,
        rss_flooded_mib,
        rss_after_mib,
        control_served,
    })
}

fn rss_mib(pid: u32) -> Result<f64> {
    let kib = rss_kib(pid).with_context(|| format!("no VmRSS for pid {pid}"))?;
    Ok(kib as f64 / 1024.0)
}
