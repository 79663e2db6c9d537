//! `agentd bench append`: closed-loop append load against a running
//! cluster. Each client owns a connection and a session and keeps one append
//! in flight; latency is measured from send to acknowledged commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_protocol::event::EventPayload;
use anyhow::Result;
use serde::Serialize;

use super::percentile_ms;
use crate::commands::Target;

#[derive(Debug, Clone)]
pub struct AppendBench {
    /// The cluster, and the key to call it with.
    pub target: Target,
    pub clients: u32,
    pub events: u64,
    pub payload_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub system: &'static str,
    pub clients: u32,
    pub events: u64,
    pub errors: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub async fn run(bench: AppendBench) -> Result<BenchReport> {
    let clients = bench.clients.max(1);
    // The first `events % clients` clients do one append more, so the total is exact.
    let share = |client: u32| {
        bench.events / u64::from(clients) + u64::from(u64::from(client) < bench.events % u64::from(clients))
    };
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let text = "x".repeat(bench.payload_bytes);

    // Sessions are created before the clock starts.
    let mut workers = Vec::new();
    for _ in 0..clients {
        let client = bench.target.client()?;
        let session = client.create_session().await?;
        workers.push((client, session.session_id));
    }

    let progress = {
        let done = done.clone();
        let total = bench.events;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!("bench: {}/{total} appends", done.load(Ordering::Relaxed));
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, (client, session_id)) in workers.into_iter().enumerate() {
        let per_client = share(index as u32);
        let (done, errors, text) = (done.clone(), errors.clone(), text.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client as usize);
            for _ in 0..per_client {
                let sent = Instant::now();
                match client.append(session_id, EventPayload::user_text(text.clone())).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(error) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("bench: first error: {error}");
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    latencies.sort_unstable();
    let percentile = |fraction: f64| percentile_ms(&latencies, fraction);
    Ok(BenchReport {
        system: "agentd",
        clients,
        events: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        events_per_sec: latencies.len() as f64 / seconds,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        p999_ms: percentile(0.999),
        max_ms: percentile(1.0),
    })
}
