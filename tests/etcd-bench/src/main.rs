//! Closed-loop write benchmark against etcd, the counterpart of `agentd bench append`.
//!
//! `clients` tasks each open their own gRPC channel and append their share of
//! `events` PUTs to their own "session" (keys `session-{client}/{i}`), with one
//! write in flight per client. Each write's latency is measured from just
//! before the request is sent until etcd acknowledges it, which with etcd's
//! default settings means after the leader and a quorum fsynced the entry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use etcd_client::{Client, ConnectOptions};
use serde::Serialize;
use tokio::task::JoinHandle;

/// How long a client may take to open its channel and answer a status probe.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// A write that takes longer than this is counted as an error, so that a
/// stuck cluster ends the run instead of hanging it.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How often a running benchmark reports its progress on stderr.
const PROGRESS_INTERVAL_MS: u64 = 2_000;

#[derive(Parser)]
#[command(
    name = "etcd-bench",
    about = "Closed-loop PUT benchmark against an etcd cluster"
)]
struct Args {
    /// Comma-separated etcd client URLs, e.g. http://127.0.0.1:23791.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent clients, each with its own gRPC channel and one write in flight.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// Total writes, split evenly across the clients.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Size of each written value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Print one JSON line instead of the human-readable summary.
    #[arg(long)]
    json: bool,
}

/// What one client measured.
struct ClientOutcome {
    latencies: Vec<Duration>,
    errors: u64,
}

/// The result line; field order is the output format shared with `agentd bench append`.
#[derive(Serialize)]
struct Report {
    system: &'static str,
    clients: u64,
    events: u64,
    errors: u64,
    seconds: f64,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// Counters shared by all clients: completed writes for the progress line,
/// and whether the first error has already been printed.
#[derive(Default)]
struct Shared {
    completed_writes: AtomicU64,
    first_error_printed: AtomicBool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let value = vec![b'x'; args.value_bytes];

    // Connecting is not part of the measurement: every client opens its
    // channel and proves it works before the clock starts.
    let mut clients = Vec::new();
    for client_index in 0..args.clients {
        clients.push(connect(&args.endpoints, client_index).await?);
    }

    let shared = Arc::new(Shared::default());
    let progress = tokio::spawn(report_progress(shared.clone(), args.events));
    let started = Instant::now();
    let tasks: Vec<JoinHandle<ClientOutcome>> = clients
        .into_iter()
        .enumerate()
        .map(|(client_index, client)| {
            let writes = writes_for_client(args.events, args.clients, client_index as u64);
            tokio::spawn(run_client(
                client,
                client_index,
                writes,
                value.clone(),
                shared.clone(),
            ))
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.events as usize);
    let mut errors = 0;
    for task in tasks {
        let outcome = task.await.context("a client task panicked")?;
        latencies.extend(outcome.latencies);
        errors += outcome.errors;
    }
    let elapsed = started.elapsed();
    progress.abort();

    latencies.sort_unstable();
    let report = summarize(&args, &latencies, errors, elapsed);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report, args.value_bytes);
    }
    Ok(())
}

async fn connect(endpoints: &[String], client_index: u64) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .with_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
    let mut client = Client::connect(endpoints, Some(options))
        .await
        .with_context(|| format!("client {client_index}: connecting to {endpoints:?}"))?;
    // The channel connects lazily; a status call opens it and fails fast if
    // etcd is not there.
    client
        .status()
        .await
        .with_context(|| format!("client {client_index}: etcd at {endpoints:?} did not answer"))?;
    Ok(client)
}

/// Splits `events` as evenly as possible: the first `events % clients`
/// clients write one more than the others.
fn writes_for_client(events: u64, clients: u64, client_index: u64) -> u64 {
    events / clients + u64::from(client_index < events % clients)
}

async fn run_client(
    mut client: Client,
    client_index: usize,
    writes: u64,
    value: Vec<u8>,
    shared: Arc<Shared>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        latencies: Vec::with_capacity(writes as usize),
        errors: 0,
    };
    for write_index in 0..writes {
        // Build the request before taking the time so that only the round
        // trip is measured.
        let key = format!("session-{client_index}/{write_index}");
        let payload = value.clone();
        let sent = Instant::now();
        let result = client.put(key, payload, None).await;
        let latency = sent.elapsed();
        match result {
            Ok(_) => outcome.latencies.push(latency),
            Err(error) => {
                outcome.errors += 1;
                if !shared.first_error_printed.swap(true, Ordering::Relaxed) {
                    eprintln!("etcd-bench: first error (client {client_index}, write {write_index}): {error}");
                }
            }
        }
        shared.completed_writes.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

async fn report_progress(shared: Arc<Shared>, total_writes: u64) {
    let mut interval = tokio::time::interval(Duration::from_millis(PROGRESS_INTERVAL_MS));
    // The first tick fires at once; short runs should print nothing.
    interval.tick().await;
    let mut previous_writes = 0;
    loop {
        interval.tick().await;
        let completed = shared.completed_writes.load(Ordering::Relaxed);
        let rate = (completed - previous_writes) as f64 * 1_000.0 / PROGRESS_INTERVAL_MS as f64;
        eprintln!("etcd-bench: {completed}/{total_writes} writes, {rate:.0}/s");
        previous_writes = completed;
    }
}

fn summarize(args: &Args, sorted_latencies: &[Duration], errors: u64, elapsed: Duration) -> Report {
    let seconds = elapsed.as_secs_f64();
    // Throughput counts acknowledged writes only; failed writes are reported in `errors`.
    let acknowledged = sorted_latencies.len() as f64;
    let events_per_sec = if seconds > 0.0 {
        acknowledged / seconds
    } else {
        0.0
    };
    Report {
        system: "etcd",
        clients: args.clients,
        events: args.events,
        errors,
        seconds: round(seconds, 3),
        events_per_sec: round(events_per_sec, 1),
        p50_ms: milliseconds(percentile(sorted_latencies, 50, 100)),
        p99_ms: milliseconds(percentile(sorted_latencies, 99, 100)),
        p999_ms: milliseconds(percentile(sorted_latencies, 999, 1_000)),
        max_ms: milliseconds(sorted_latencies.last().copied().unwrap_or_default()),
    }
}

/// Exact nearest-rank percentile: the smallest recorded latency such that at
/// least `numerator / denominator` of all latencies are at or below it. The
/// quantile is a fraction of integers so that the rank has no rounding error.
fn percentile(sorted: &[Duration], numerator: u64, denominator: u64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let count = sorted.len() as u64;
    let rank = (count * numerator).div_ceil(denominator).max(1);
    sorted[(rank - 1) as usize]
}

fn milliseconds(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1_000.0, 3)
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn print_human(report: &Report, value_bytes: usize) {
    println!(
        "etcd: {} clients, {} writes of {} bytes, {} errors, {:.3} s",
        report.clients, report.events, value_bytes, report.errors, report.seconds
    );
    println!("throughput: {:.1} writes/s", report.events_per_sec);
    println!(
        "latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        report.p50_ms, report.p99_ms, report.p999_ms, report.max_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_split_evenly_and_sum_to_the_total() {
        let split: Vec<u64> = (0..3)
            .map(|client| writes_for_client(10, 3, client))
            .collect();
        assert_eq!(split, vec![4, 3, 3]);
        assert_eq!(
            (0..64)
                .map(|client| writes_for_client(20_000, 64, client))
                .sum::<u64>(),
            20_000
        );
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let sorted: Vec<Duration> = (1..=2_000).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50, 100), Duration::from_millis(1_000));
        assert_eq!(percentile(&sorted, 99, 100), Duration::from_millis(1_980));
        assert_eq!(
            percentile(&sorted, 999, 1_000),
            Duration::from_millis(1_998)
        );
        assert_eq!(
            percentile(&sorted[..1], 999, 1_000),
            Duration::from_millis(1)
        );
        assert_eq!(percentile(&[], 50, 100), Duration::ZERO);
    }
}
