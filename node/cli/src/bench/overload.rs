//! `agentd bench overload`: closed-loop appends at rising concurrency
//! against one node, to find the point where more clients stop adding
//! throughput (the knee), then ten times past it. Each step reports what
//! the node admitted (throughput, latency), what it refused with
//! `Overloaded` (and how fast the refusal came), other errors, and the
//! node's memory.
//!
//! Every client keeps one append in flight, sends it once (no retries, so
//! refusals are counted, not hidden), and after a refusal waits the pause
//! the node suggested, as a well-behaved client does. Clients share a few
//! connections (the node caps connections per address), each with an API
//! key of its own (one key's rate limit would cap the load first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_client::{Client, ClientError};
use agentd_protocol::api::{ClientRequest, ClientResponse};
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::ApiError;
use anyhow::{Context, Result};
use serde::Serialize;

use super::http::{rss_kib, Keys};
use super::percentile_ms;
use crate::commands::Target;

#[derive(Debug, Clone)]
pub struct OverloadBench {
    /// One node (the first address is loaded).
    pub target: Target,
    /// Concurrency steps that look for the knee, ascending.
    pub steps: Vec<u32>,
    /// The last step runs this many times the knee's concurrency.
    pub factor: u32,
    pub seconds: u64,
    pub connections: u32,
    pub node_pid: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StepReport {
    pub clients: u32,
    /// `knee`, `10x` (the factor) or `step`.
    pub label: String,
    pub admitted_per_sec: f64,
    pub admitted_p50_ms: f64,
    pub admitted_p99_ms: f64,
    pub refused_per_sec: f64,
    /// Time from send to the `Overloaded` answer.
    pub refusal_p99_ms: f64,
    pub other_errors: u64,
    pub node_rss_mib: Option<f64>,
}

/// What one client saw in a step.
#[derive(Default)]
struct Tally {
    admitted: Vec<Duration>,
    refused: Vec<Duration>,
    other_errors: u64,
    first_error: Option<String>,
}

pub async fn run(bench: OverloadBench) -> Result<Vec<StepReport>> {
    let addr = bench.target.addr.first().context("--addr names no node")?.clone();
    let one_node = Target { addr: vec![addr], ..bench.target.clone() };
    // A key per connection: one key's rate limit would cap the load first.
    let mut keys = Keys::new(&one_node, false)?;
    let mut connections = Vec::new();
    for _ in 0..bench.connections.max(1) {
        let key = keys.next().await?;
        connections.push(Arc::new(one_node.client()?.with_api_key(key)));
    }
    let reports = steps(&bench, &connections).await;
    keys.revoke().await;
    reports
}

async fn steps(bench: &OverloadBench, connections: &[Arc<Client>]) -> Result<Vec<StepReport>> {
    // One pool of sessions for every step, as many as the largest search
    // step has clients: past that clients share them, so that the overload
    // step's memory is the overload's, not that of more sessions.
    let pool = bench.steps.iter().copied().max().unwrap_or(1);
    let mut sessions = Vec::new();
    for index in 0..pool {
        let client = &connections[index as usize % connections.len()];
        sessions.push(client.create_session().await?.session_id);
    }
    let mut reports = Vec::new();
    for &clients in &bench.steps {
        reports.push(step(bench, connections, &sessions, clients, "step").await?);
    }
    let best = reports.iter().map(|report| report.admitted_per_sec).fold(0.0, f64::max);
    let knee = reports
        .iter_mut()
        .find(|report| report.admitted_per_sec >= best * 0.9)
        .context("no step ran (pass --steps)")?;
    knee.label = "knee".into();
    let knee_clients = knee.clients;
    let label = format!("{}x", bench.factor);
    reports.push(step(bench, connections, &sessions, knee_clients * bench.factor, &label).await?);
    Ok(reports)
}

async fn step(
    bench: &OverloadBench,
    connections: &[Arc<Client>],
    sessions: &[SessionId],
    clients: u32,
    label: &str,
) -> Result<StepReport> {
    eprintln!("bench: {clients} clients for {} s ({label})", bench.seconds);
    let deadline = Instant::now() + Duration::from_secs(bench.seconds);
    let mut tasks = Vec::new();
    for index in 0..clients as usize {
        let client = Arc::clone(&connections[index % connections.len()]);
        // Clients sharing a session need distinct event ids: the index
        // goes into the id's high bits.
        tasks.push(tokio::spawn(drive(client, sessions[index % sessions.len()], index as u64, deadline)));
    }
    let mut peak_rss_kib = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(kib) = bench.node_pid.and_then(rss_kib) {
            peak_rss_kib = Some(peak_rss_kib.unwrap_or(0).max(kib));
        }
    }
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await?;
        all.admitted.extend(tally.admitted);
        all.refused.extend(tally.refused);
        all.other_errors += tally.other_errors;
        all.first_error = all.first_error.or(tally.first_error);
    }
    if let Some(error) = &all.first_error {
        eprintln!("bench: first error other than a refusal: {error}");
    }
    all.admitted.sort_unstable();
    all.refused.sort_unstable();
    let seconds = bench.seconds as f64;
    Ok(StepReport {
        clients,
        label: label.to_string(),
        admitted_per_sec: all.admitted.len() as f64 / seconds,
        admitted_p50_ms: percentile_ms(&all.admitted, 0.50),
        admitted_p99_ms: percentile_ms(&all.admitted, 0.99),
        refused_per_sec: all.refused.len() as f64 / seconds,
        refusal_p99_ms: percentile_ms(&all.refused, 0.99),
        other_errors: all.other_errors,
        node_rss_mib: peak_rss_kib.map(|kib| kib as f64 / 1024.0),
    })
}

/// One client: appends until the deadline, once each, pausing as told after
/// a refusal.
async fn drive(client: Arc<Client>, session_id: SessionId, client_index: u64, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut index = 0u64;
    // Unique across steps too (every step starts its counts at 0).
    let base = u128::from(monotonic_nanos());
    while Instant::now() < deadline {
        index += 1;
        let request = ClientRequest::Append {
            session_id,
            // Unique within the session, which is all an event id must be.
            event_id: EventId::from_random((base << 64) | (u128::from(client_index) << 32) | u128::from(index)),
            payload: EventPayload::user_text(format!("overload {index}")),
        };
        let sent = Instant::now();
        match client.call_once(request).await {
            Ok(ClientResponse::Appended(_)) => tally.admitted.push(sent.elapsed()),
            Err(ClientError::Api(ApiError::Overloaded { retry_after_ms })) => {
                tally.refused.push(sent.elapsed());
                tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
            }
            other => {
                tally.other_errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(format!("{other:?}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

/// A value that differs between steps: the nanoseconds of a monotonic clock
/// since the first call.
fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
