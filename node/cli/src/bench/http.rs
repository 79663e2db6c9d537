//! `agentd bench http`: the Managed Agents HTTP API measured against the
//! native QUIC API of the same cluster, in the same run, side by side.
//!
//! - `append`: closed-loop `POST /v1/sessions/{id}/events` over HTTP/1.1
//!   keep-alive (C connections, each with its own session, one send in
//!   flight each), and the native QUIC append with the same C, N and
//!   payload; latency is from send to the committed answer.
//! - `get`: closed-loop `GET /v1/sessions/{id}` for D seconds, and the QUIC
//!   `GetSession` the same way.
//!
//!   Both run in rounds alternating which system goes first (QUIC, HTTP,
//!   HTTP, QUIC), each client with an API key of its own (each node limits a
//!   key's requests; one key would measure the limit). A 429 is waited out
//!   and retried, as the native client does with its own, and counted.
//! - `stream`: K SSE subscribers (`GET /v1/sessions/{id}/events/stream`) on
//!   S sessions while a writer in this process appends at a steady rate over
//!   QUIC. Delivery latency runs from the append's acknowledgement as the
//!   writer saw it (not from `processed_at`) to the subscriber reading the
//!   frame; every frame is checked to arrive once. The nodes' RSS is read
//!   from `/proc/PID/status` before the subscribers connect, once they are
//!   connected, at its peak while events flow, and at the end.
//!
//! Sessions are created over QUIC with no agent: plain event logs, so an
//! append is one event and nothing answers it. The HTTP API appends to and
//! reads them as any session of the key's workspace. Every connection is
//! made before the clock starts. Per-core figures divide by this machine's
//! cores, which the nodes and this load generator share on one machine.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{ApiKeyId, SessionId};
use agentd_protocol::tenancy::{Role, DEFAULT_WORKSPACE};
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use super::percentile_ms;
use crate::commands::Target;

/// HTTP's share of QUIC's append throughput the API must keep (it may cost at most 15%).
const APPEND_RATIO_TARGET: f64 = 0.85;
/// Session reads per second per core the API must serve...
const GET_PER_CORE_TARGET: f64 = 3.0 * 350.0;
/// ...at this median latency.
const GET_P50_TARGET_MS: f64 = 2.0;
/// Subscribers connecting at once (the listen backlog is finite).
const CONNECT_CONCURRENCY: usize = 64;
/// Attempts of a request the node keeps answering 429.
const THROTTLED_RETRIES_MAX: u32 = 1000;
/// File descriptors this process needs beyond one per subscriber.
const SPARE_FDS: u64 = 256;

#[derive(Debug, Subcommand)]
pub enum HttpCommand {
    /// Closed-loop event appends: HTTP (POST /v1/sessions/{id}/events) and native QUIC.
    Append(AppendArgs),
    /// Closed-loop session reads for a fixed time: HTTP (GET /v1/sessions/{id}) and native QUIC.
    Get(GetArgs),
    /// SSE fan-out: subscribers on sessions while a writer appends at a steady rate.
    Stream(StreamArgs),
}

impl HttpCommand {
    pub fn json(&self) -> bool {
        match self {
            HttpCommand::Append(args) => args.target.json,
            HttpCommand::Get(args) => args.target.json,
            HttpCommand::Stream(args) => args.target.json,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct AppendArgs {
    #[command(flatten)]
    pub target: Target,
    /// The node's HTTP API, HOST:PORT (its `--http`); best the node of `--addr`.
    #[arg(long = "http")]
    pub http: String,
    /// Concurrent connections (HTTP) or clients (QUIC), each with its own session.
    #[arg(long, default_value_t = 1)]
    pub clients: u32,
    /// Appends per system.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Call with `--api-key` from every client, rather than with a key per
    /// client made with it (and revoked after): each node limits a key's
    /// requests (500/s sustained), so one key measures that limit.
    #[arg(long)]
    pub shared_key: bool,
    /// Rounds per system, each with its share of the events (or time),
    /// alternating which system goes first: QUIC, HTTP, HTTP, QUIC, ...
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// The nodes' process ids (comma-separated), for the CPU they use per
    /// request; by default every `agentd start` process on this machine.
    #[arg(long, value_delimiter = ',')]
    pub node_pids: Vec<u32>,
    /// Measure HTTP only.
    #[arg(long)]
    pub skip_quic: bool,
}

#[derive(Debug, Args, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// The node's HTTP API, HOST:PORT (its `--http`); best the node of `--addr`.
    #[arg(long = "http")]
    pub http: String,
    #[arg(long, default_value_t = 1)]
    pub clients: u32,
    /// Seconds per system.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Call with `--api-key` from every client, rather than with a key per
    /// client made with it (and revoked after): each node limits a key's
    /// requests (500/s sustained), so one key measures that limit.
    #[arg(long)]
    pub shared_key: bool,
    /// Rounds per system, each with its share of the events (or time),
    /// alternating which system goes first: QUIC, HTTP, HTTP, QUIC, ...
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// The nodes' process ids (comma-separated), for the CPU they use per
    /// request; by default every `agentd start` process on this machine.
    #[arg(long, value_delimiter = ',')]
    pub node_pids: Vec<u32>,
    /// Measure HTTP only.
    #[arg(long)]
    pub skip_quic: bool,
}

#[derive(Debug, Args, Clone)]
pub struct StreamArgs {
    #[command(flatten)]
    pub target: Target,
    /// The nodes' HTTP APIs, HOST:PORT, comma-separated: subscribers are spread over them.
    #[arg(long = "http", value_delimiter = ',', required = true)]
    pub http: Vec<String>,
    #[arg(long, default_value_t = 100)]
    pub sessions: u32,
    /// Subscribers in total (subscriber i follows session i mod S).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u32,
    /// Appends per second in total, round robin over the sessions.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds the writer appends.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// How long to wait for frames still due once the writer is done.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
    /// The nodes' process ids (comma-separated), for their RSS; by default
    /// every `agentd start` process on this machine.
    #[arg(long, value_delimiter = ',')]
    pub node_pids: Vec<u32>,
}

// ---------------------------------------------------------------- reports

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Latency {
            p50_ms: percentile_ms(&samples, 0.50),
            p99_ms: percentile_ms(&samples, 0.99),
            p999_ms: percentile_ms(&samples, 0.999),
            max_ms: percentile_ms(&samples, 1.0),
        }
    }
}

/// One system's closed-loop run.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// `http` or `quic`.
    pub system: &'static str,
    pub clients: u32,
    /// Requests answered successfully.
    pub ok: u64,
    pub errors: u64,
    /// 429 answers (the key's rate limit) waited out and retried; HTTP only:
    /// the native client retries its own without telling.
    pub throttled: u64,
    pub seconds: f64,
    pub per_sec: f64,
    /// `per_sec` divided by this machine's cores.
    pub per_sec_per_core: f64,
    /// CPU time (user + system) the nodes of `--node-pids` used per
    /// successful request, all three together (0 without node pids).
    pub node_cpu_ms_per_request: f64,
    /// CPU time this load generator used per successful request.
    pub client_cpu_ms_per_request: f64,
    #[serde(flatten)]
    pub latency: Latency,
}

impl Throughput {
    fn line(&self, unit: &str) -> String {
        format!(
            "{:<4} {:>3} client(s): {} {unit} in {:.2}s: {:.0}/s ({:.0}/s per core), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors, {} throttled; CPU per request: nodes {:.3} ms, client {:.3} ms",
            self.system, self.clients, self.ok, self.seconds, self.per_sec, self.per_sec_per_core,
            self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms, self.errors, self.throttled,
            self.node_cpu_ms_per_request, self.client_cpu_ms_per_request
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AppendReport {
    pub bench: &'static str,
    /// Whether every client called with a key of its own.
    pub keys: &'static str,
    pub clients: u32,
    pub events: u64,
    pub payload_bytes: usize,
    pub cores: usize,
    pub quic: Option<Throughput>,
    pub http: Throughput,
    /// HTTP's events/s over QUIC's.
    pub http_over_quic: Option<f64>,
    /// Whether HTTP keeps at least 85% of QUIC's throughput.
    pub target_met: Option<bool>,
}

impl AppendReport {
    pub fn summary(&self) -> String {
        let mut lines: Vec<String> = self.quic.iter().map(|quic| quic.line("appends")).collect();
        lines.push(self.http.line("appends"));
        if let Some(ratio) = self.http_over_quic {
            let verdict = if ratio >= APPEND_RATIO_TARGET { "met" } else { "MISSED" };
            lines.push(format!(
                "http/quic throughput {ratio:.2} (target >= {APPEND_RATIO_TARGET:.2}: {verdict}); {}, {} cores",
                self.keys, self.cores
            ));
        }
        lines.join("\n")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    pub bench: &'static str,
    /// Whether every client called with a key of its own.
    pub keys: &'static str,
    pub clients: u32,
    pub seconds: f64,
    pub cores: usize,
    pub quic: Option<Throughput>,
    pub http: Throughput,
    /// Whether HTTP serves 3 x 350 reads/s per core at a p50 of at most 2 ms.
    pub target_met: bool,
}

impl GetReport {
    pub fn summary(&self) -> String {
        let mut lines: Vec<String> = self.quic.iter().map(|quic| quic.line("reads")).collect();
        lines.push(self.http.line("reads"));
        let verdict = if self.target_met { "met" } else { "MISSED" };
        lines.push(format!(
            "http target >= {GET_PER_CORE_TARGET:.0}/s per core at p50 <= {GET_P50_TARGET_MS} ms: {verdict}; {}, {} cores",
            self.keys, self.cores
        ));
        lines.join("\n")
    }
}

/// One node's resident memory, in MiB (`None`: unreadable).
#[derive(Debug, Clone, Serialize)]
pub struct NodeMemory {
    pub pid: u32,
    pub rss_before_mib: Option<f64>,
    pub rss_connected_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub bench: &'static str,
    pub sessions: u32,
    pub subscribers: u32,
    pub subscribers_connected: u64,
    pub connect_errors: u64,
    pub first_connect_error: Option<String>,
    pub connect_seconds: f64,
    pub rate_per_sec: f64,
    pub write_seconds: f64,
    pub appends: u64,
    pub append_errors: u64,
    pub cores: usize,
    /// Frames due: each acknowledged append, once per connected subscriber of its session.
    pub frames_expected: u64,
    /// Due frames that arrived (each counted once).
    pub frames_delivered: u64,
    pub frames_missing: u64,
    pub frames_duplicate: u64,
    /// `user.message` frames of no acknowledged append of the writer.
    pub frames_unexpected: u64,
    /// Frames whose `data` was not the event of their `id`.
    pub frames_malformed: u64,
    /// Frames of other event types (pings excluded).
    pub frames_other: u64,
    /// Frames read before the writer saw the append's acknowledgement
    /// (their ack-to-delivery latency counts as 0).
    pub delivered_before_ack: u64,
    pub streams_ended_early: u64,
    pub first_stream_end: Option<String>,
    /// Where delivery latency starts.
    pub latency_from: &'static str,
    pub send_to_ack: Latency,
    pub ack_to_delivery: Latency,
    pub send_to_delivery: Latency,
    pub nodes: Vec<NodeMemory>,
}

impl StreamReport {
    pub fn summary(&self) -> String {
        let mut lines = vec![
            format!(
                "{} of {} subscribers on {} sessions connected in {:.2}s ({} errors{}); {} appends at {}/s, {} errors",
                self.subscribers_connected, self.subscribers, self.sessions, self.connect_seconds,
                self.connect_errors, self.first_connect_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default(),
                self.appends, self.rate_per_sec, self.append_errors
            ),
            format!(
                "frames: {} delivered of {} expected, {} missing, {} duplicate, {} unexpected, {} malformed, {} other; {} streams ended early{}",
                self.frames_delivered, self.frames_expected, self.frames_missing, self.frames_duplicate,
                self.frames_unexpected, self.frames_malformed, self.frames_other, self.streams_ended_early,
                self.first_stream_end.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            ),
        ];
        for (name, latency) in [
            ("send->ack", &self.send_to_ack),
            ("ack->delivery", &self.ack_to_delivery),
            ("send->delivery", &self.send_to_delivery),
        ] {
            lines.push(format!(
                "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                latency.p50_ms, latency.p99_ms, latency.max_ms
            ));
        }
        let mib = |value: Option<f64>| value.map_or("?".into(), |value| format!("{value:.0}"));
        for node in &self.nodes {
            lines.push(format!(
                "node pid {}: RSS {} MiB before, {} connected, {} peak, {} end",
                node.pid,
                mib(node.rss_before_mib),
                mib(node.rss_connected_mib),
                mib(node.rss_peak_mib),
                mib(node.rss_end_mib)
            ));
        }
        lines.join("\n")
    }
}

// ---------------------------------------------------------------- HTTP connections

/// One HTTP/1.1 keep-alive connection to a node's API (reopened if the node closes it).
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    addr: String,
    api_key: String,
    authorization: HeaderValue,
    /// 429 answers waited out and retried.
    throttled: u64,
}

impl Conn {
    async fn open(addr: &str, api_key: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream)).await.with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        tokio::spawn(connection);
        let authorization =
            HeaderValue::from_str(&format!("Bearer {api_key}")).context("the API key is not a valid header value")?;
        Ok(Self { sender, addr: addr.to_string(), api_key: api_key.to_string(), authorization, throttled: 0 })
    }

    fn request(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.as_str())
            .header(AUTHORIZATION, self.authorization.clone());
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        Ok(builder.body(Full::new(body.unwrap_or_default()))?)
    }

    /// Sends a request; its answer's headers.
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<hyper::Response<Incoming>> {
        if self.sender.is_closed() {
            eprintln!("bench http: the node closed a connection; reconnecting");
            *self = Conn::open(&self.addr, &self.api_key).await?;
        }
        self.sender.ready().await.context("the connection closed")?;
        Ok(self.sender.send_request(request).await?)
    }

    /// Sends a request; the answer's JSON if its status is 2xx. A 429 is
    /// waited out (its `retry-after-ms`) and the request sent again, as the
    /// SDKs (and the native client) do.
    async fn json(&mut self, method: Method, path: &str, body: Option<Bytes>) -> Result<Value> {
        for _ in 0..THROTTLED_RETRIES_MAX {
            let request = self.request(method.clone(), path, body.clone())?;
            let response = self.send(request).await?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let pause = response.headers().get("retry-after-ms").and_then(|value| value.to_str().ok());
                let pause = pause.and_then(|pause| pause.parse().ok()).unwrap_or(1);
                response.into_body().collect().await?;
                self.throttled += 1;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            let body = response.into_body().collect().await?.to_bytes();
            ensure!(status.is_success(), "{method} {path}: {status}: {}", String::from_utf8_lossy(&body));
            return serde_json::from_slice(&body).with_context(|| format!("{method} {path}: the answer is not JSON"));
        }
        bail!("{method} {path}: still 429 after {THROTTLED_RETRIES_MAX} attempts")
    }
}

// ---------------------------------------------------------------- closed loops

/// One closed-loop worker: its connection, and the request it repeats.
trait Worker: Send + 'static {
    fn once(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// How many answers said "too many requests" (and were waited out) since the last call.
    fn take_throttled(&mut self) -> u64 {
        0
    }
}

struct HttpAppend {
    conn: Conn,
    path: String,
    body: Bytes,
}

impl Worker for HttpAppend {
    async fn once(&mut self) -> Result<()> {
        let answer = self.conn.json(Method::POST, &self.path, Some(self.body.clone())).await?;
        answer["data"][0]["seq"].as_u64().with_context(|| format!("no data[0].seq in the answer {answer}"))?;
        Ok(())
    }

    fn take_throttled(&mut self) -> u64 {
        std::mem::take(&mut self.conn.throttled)
    }
}

struct QuicAppend {
    client: Client,
    session: SessionId,
    text: String,
}

impl Worker for QuicAppend {
    async fn once(&mut self) -> Result<()> {
        self.client.append(self.session, EventPayload::user_text(self.text.clone())).await?;
        Ok(())
    }
}

struct HttpGet {
    conn: Conn,
    path: String,
}

impl Worker for HttpGet {
    async fn once(&mut self) -> Result<()> {
        let answer = self.conn.json(Method::GET, &self.path, None).await?;
        ensure!(answer["type"] == "session", "not a session: {answer}");
        Ok(())
    }

    fn take_throttled(&mut self) -> u64 {
        std::mem::take(&mut self.conn.throttled)
    }
}

struct QuicGet {
    client: Client,
    session: SessionId,
}

impl Worker for QuicGet {
    async fn once(&mut self) -> Result<()> {
        self.client.get_session(self.session).await?;
        Ok(())
    }
}

/// When a closed loop stops: after so many requests in total, or after a time.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Requests(u64),
    For(Duration),
}

impl Budget {
    /// Round `round`'s share of `rounds` (the last one takes what does not divide).
    fn share(self, round: u32, rounds: u32) -> Budget {
        match self {
            Budget::Requests(total) => {
                let share = total / u64::from(rounds);
                Budget::Requests(if round + 1 == rounds { total - share * u64::from(rounds - 1) } else { share })
            }
            Budget::For(time) => Budget::For(time / rounds),
        }
    }
}

/// What closed-loop rounds of one system measured.
#[derive(Debug, Default)]
struct Run {
    latencies: Vec<Duration>,
    errors: u64,
    throttled: u64,
    seconds: f64,
    cpu: CpuMark,
}

impl Run {
    fn throughput(self, system: &'static str, clients: u32) -> Throughput {
        let ok = self.latencies.len() as u64;
        let per_sec = ok as f64 / self.seconds.max(f64::MIN_POSITIVE);
        let per_request_ms = |seconds: f64| seconds * 1000.0 / ok.max(1) as f64;
        Throughput {
            client_cpu_ms_per_request: per_request_ms(self.cpu.client),
            node_cpu_ms_per_request: per_request_ms(self.cpu.nodes),
            system,
            clients,
            ok,
            errors: self.errors,
            throttled: self.throttled,
            seconds: self.seconds,
            per_sec,
            per_sec_per_core: per_sec / cores() as f64,
            latency: Latency::of(self.latencies),
        }
    }
}

/// Prints how many requests are done every two seconds, until aborted.
fn progress(system: &'static str, done: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            eprintln!("bench http: {system}: {} requests", done.load(Ordering::Relaxed));
        }
    })
}

/// CPU seconds used so far by this process and by the nodes together.
#[derive(Debug, Default, Clone, Copy)]
struct CpuMark {
    client: f64,
    nodes: f64,
}

impl CpuMark {
    fn take(pids: &[u32]) -> Self {
        let nodes = pids.iter().filter_map(|pid| cpu_seconds(&pid.to_string())).sum();
        CpuMark { client: cpu_seconds("self").unwrap_or(0.0), nodes }
    }

    /// Adds what was used between `before` and `now`.
    fn add(&mut self, now: &CpuMark, before: &CpuMark) {
        self.client += now.client - before.client;
        self.nodes += now.nodes - before.nodes;
    }
}

/// Runs every worker with one request in flight each until the budget is
/// spent; adds what it measured (and the CPU this process and the nodes
/// `pids` used meanwhile) to `run`, and gives the workers back.
async fn closed_loop<W: Worker>(
    system: &'static str,
    workers: Vec<W>,
    budget: Budget,
    run: &mut Run,
    pids: &[u32],
) -> Result<Vec<W>> {
    let clients = workers.len().max(1) as u64;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let progress = progress(system, done.clone());
    let cpu_before = CpuMark::take(pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, mut worker) in workers.into_iter().enumerate() {
        // The first `total % clients` workers do one request more, so the total is exact.
        let (requests, until) = match budget {
            Budget::Requests(total) => (total / clients + u64::from((index as u64) < total % clients), None),
            Budget::For(time) => (u64::MAX, Some(started + time)),
        };
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for _ in 0..requests {
                if until.is_some_and(|until| Instant::now() >= until) {
                    break;
                }
                let sent = Instant::now();
                match worker.once().await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(error) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("bench http: {system}: first error: {error:#}");
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (worker, latencies)
        }));
    }
    let mut workers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (mut worker, latencies) = task.await?;
        run.latencies.extend(latencies);
        run.throttled += worker.take_throttled();
        workers.push(worker);
    }
    run.seconds += started.elapsed().as_secs_f64();
    run.cpu.add(&CpuMark::take(pids), &cpu_before);
    run.errors += errors.load(Ordering::Relaxed);
    progress.abort();
    Ok(workers)
}

/// Runs the QUIC workers (if any) and the HTTP ones in `rounds` rounds, each
/// with its share of the budget, alternating which system goes first (QUIC,
/// HTTP, then HTTP, QUIC, ...), so that neither always meets the fuller log
/// or the other's compactions.
async fn side_by_side<Q: Worker, H: Worker>(
    mut quic: Option<Vec<Q>>,
    mut http: Vec<H>,
    budget: Budget,
    rounds: u32,
    pids: &[u32],
) -> Result<(Option<Run>, Run)> {
    let rounds = rounds.max(1);
    let (mut quic_run, mut http_run) = (quic.as_ref().map(|_| Run::default()), Run::default());
    for round in 0..rounds {
        let share = budget.share(round, rounds);
        for http_turn in if round % 2 == 0 { [false, true] } else { [true, false] } {
            match (http_turn, quic.take(), quic_run.as_mut()) {
                (false, Some(workers), Some(run)) => {
                    quic = Some(closed_loop("quic", workers, share, run, pids).await?);
                }
                (false, workers, _) => quic = workers,
                (true, workers, _) => {
                    quic = workers;
                    http = closed_loop("http", http, share, &mut http_run, pids).await?;
                }
            }
        }
    }
    Ok((quic_run, http_run))
}

/// This machine's cores (the nodes' when they run here).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

async fn create_sessions(client: &Client, count: u32) -> Result<Vec<SessionId>> {
    let mut sessions = Vec::with_capacity(count as usize);
    for _ in 0..count {
        sessions.push(client.create_session().await.context("creating a session over QUIC")?.session_id);
    }
    Ok(sessions)
}

/// The keys the closed-loop workers call with: each its own, made with
/// `--api-key` and revoked afterwards (a key's requests are rate limited on
/// each node, so one key for all would measure the limiter), or `--api-key`
/// itself for all with `--shared-key`.
pub(crate) struct Keys {
    admin: Client,
    admin_key: String,
    shared: bool,
    made: Vec<ApiKeyId>,
}

impl Keys {
    pub(crate) fn new(target: &Target, shared: bool) -> Result<Self> {
        let admin_key = target.api_key.clone().unwrap_or_default();
        Ok(Keys { admin: target.client()?, admin_key, shared, made: Vec::new() })
    }

    fn describe(&self) -> &'static str {
        if self.shared {
            "one shared key"
        } else {
            "a key per client"
        }
    }

    pub(crate) async fn next(&mut self) -> Result<String> {
        if self.shared {
            return Ok(self.admin_key.clone());
        }
        let name = format!("bench-http-{}", self.made.len());
        let (key, info) = self
            .admin
            .create_api_key(DEFAULT_WORKSPACE.to_string(), name, Role::Member)
            .await
            .context("making a key per client (needs an admin --api-key; or pass --shared-key)")?;
        self.made.push(info.id);
        Ok(key)
    }

    pub(crate) async fn revoke(self) {
        for id in self.made {
            if let Err(error) = self.admin.revoke_api_key(id).await {
                eprintln!("bench http: cannot revoke the key {id}: {error}");
            }
        }
    }
}

/// Workers' key, QUIC client (its connection opened by creating its session) and session.
async fn clients(target: &Target, keys: &mut Keys, count: u32) -> Result<Vec<(String, Client, SessionId)>> {
    let mut clients = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let key = keys.next().await?;
        let client = Client::for_addrs(target.addr.clone(), target.ca_pem()?)?.with_api_key(key.clone());
        let session = client.create_session().await.context("creating a session over QUIC")?.session_id;
        clients.push((key, client, session));
    }
    Ok(clients)
}

/// HTTP connections with their key, and the path of a request on the key's session.
async fn http_conns(
    target: &Target,
    keys: &mut Keys,
    addr: &str,
    count: u32,
    path: impl Fn(SessionId) -> String,
) -> Result<Vec<(Conn, String)>> {
    let mut conns = Vec::with_capacity(count as usize);
    for (key, _, session) in clients(target, keys, count).await? {
        conns.push((Conn::open(addr, &key).await?, path(session)));
    }
    Ok(conns)
}

pub async fn append(args: AppendArgs) -> Result<AppendReport> {
    let clients = args.clients.max(1);
    let text = "x".repeat(args.payload_bytes);
    let mut keys = Keys::new(&args.target, args.shared_key)?;
    let quic = if args.skip_quic {
        None
    } else {
        let workers = self::clients(&args.target, &mut keys, clients).await?;
        Some(
            workers
                .into_iter()
                .map(|(_, client, session)| QuicAppend { client, session, text: text.clone() })
                .collect(),
        )
    };
    let body = json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]});
    let body = Bytes::from(body.to_string());
    let path = |session| format!("/v1/sessions/{session}/events");
    let workers = http_conns(&args.target, &mut keys, &args.http, clients, path)
        .await?
        .into_iter()
        .map(|(conn, path)| HttpAppend { conn, path, body: body.clone() })
        .collect();
    let (quic, http) =
        side_by_side(quic, workers, Budget::Requests(args.events), args.rounds, &node_pids(&args.node_pids)).await?;
    let (quic, http) = (quic.map(|run| run.throughput("quic", clients)), http.throughput("http", clients));
    let keys_used = keys.describe();
    keys.revoke().await;
    let http_over_quic = quic.as_ref().map(|quic| http.per_sec / quic.per_sec.max(f64::MIN_POSITIVE));
    Ok(AppendReport {
        bench: "append",
        keys: keys_used,
        clients,
        events: args.events,
        payload_bytes: args.payload_bytes,
        cores: cores(),
        quic,
        http,
        http_over_quic,
        target_met: http_over_quic.map(|ratio| ratio >= APPEND_RATIO_TARGET),
    })
}

pub async fn get(args: GetArgs) -> Result<GetReport> {
    let clients = args.clients.max(1);
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    let budget = Budget::For(Duration::from_secs_f64(args.seconds));
    let mut keys = Keys::new(&args.target, args.shared_key)?;
    let quic = if args.skip_quic {
        None
    } else {
        let workers = self::clients(&args.target, &mut keys, clients).await?;
        Some(workers.into_iter().map(|(_, client, session)| QuicGet { client, session }).collect())
    };
    let path = |session| format!("/v1/sessions/{session}");
    let workers = http_conns(&args.target, &mut keys, &args.http, clients, path)
        .await?
        .into_iter()
        .map(|(conn, path)| HttpGet { conn, path })
        .collect();
    let (quic, http) = side_by_side(quic, workers, budget, args.rounds, &node_pids(&args.node_pids)).await?;
    let (quic, http) = (quic.map(|run| run.throughput("quic", clients)), http.throughput("http", clients));
    let keys_used = keys.describe();
    keys.revoke().await;
    let target_met =
        http.errors == 0 && http.per_sec_per_core >= GET_PER_CORE_TARGET && http.latency.p50_ms <= GET_P50_TARGET_MS;
    Ok(GetReport {
        bench: "get",
        keys: keys_used,
        clients,
        seconds: args.seconds,
        cores: cores(),
        quic,
        http,
        target_met,
    })
}

// ---------------------------------------------------------------- SSE

/// One server-sent event (a comment-only block has no `event`).
#[derive(Debug, Default, PartialEq)]
struct SseFrame {
    event: String,
    id: Option<u64>,
    data: String,
}

/// Splits a stream's bytes into frames (blocks ending in a blank line).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let mut frame = SseFrame::default();
            for line in String::from_utf8_lossy(&block[..end]).lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => frame.event = value.to_string(),
                    "id" => frame.id = value.trim().parse().ok(),
                    "data" => {
                        if !frame.data.is_empty() {
                            frame.data.push('\n');
                        }
                        frame.data.push_str(value);
                    }
                    _ => {}
                }
            }
            frames.push(frame);
        }
        frames
    }
}

/// What one subscriber read.
#[derive(Debug, Default)]
struct Subscription {
    /// Sequence numbers of the `user.message` frames, and when each was read.
    received: Vec<(u64, Instant)>,
    seen: HashSet<u64>,
    duplicates: u64,
    malformed: u64,
    other: u64,
    /// Why the stream ended before the bench closed it.
    ended: Option<String>,
}

impl Subscription {
    fn record(&mut self, frame: SseFrame, at: Instant, delivered: &AtomicU64) {
        match frame.event.as_str() {
            "" | "ping" => {}
            "user.message" => {
                let data: Option<Value> = serde_json::from_str(&frame.data).ok();
                let seq = data
                    .filter(|data| data["processed_at"].is_string())
                    .and_then(|data| data["seq"].as_u64())
                    .filter(|seq| frame.id == Some(*seq));
                match seq {
                    None => self.malformed += 1,
                    Some(seq) if !self.seen.insert(seq) => self.duplicates += 1,
                    Some(seq) => {
                        self.received.push((seq, at));
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => self.other += 1,
        }
    }
}

/// What a subscriber task needs.
struct SubscriberSetup {
    addr: String,
    api_key: String,
    session: SessionId,
    gate: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
}

/// Opens a session's stream; returns once the node has answered with its headers
/// (so the stream follows every event committed from then on).
async fn open_stream(addr: &str, api_key: &str, session: SessionId) -> Result<(Conn, Incoming)> {
    let mut conn = Conn::open(addr, api_key).await?;
    let path = format!("/v1/sessions/{session}/events/stream");
    let mut request = conn.request(Method::GET, &path, None)?;
    request.headers_mut().insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let response = conn.send(request).await?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
        bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    ensure!(content_type.starts_with("text/event-stream"), "GET {path}: content-type {content_type:?}");
    Ok((conn, response.into_body()))
}

async fn subscribe(setup: SubscriberSetup, ready: oneshot::Sender<Result<()>>) -> Subscription {
    let opened = {
        let _permit = setup.gate.acquire().await;
        open_stream(&setup.addr, &setup.api_key, setup.session).await
    };
    let (_conn, mut body) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = ready.send(Err(error));
            return Subscription::default();
        }
    };
    let _ = ready.send(Ok(()));
    let (mut stop, delivered) = (setup.stop, setup.delivered);
    let mut parser = SseParser::default();
    let mut subscription = Subscription::default();
    loop {
        let chunk = tokio::select! {
            _ = stop.changed() => return subscription,
            chunk = body.frame() => chunk,
        };
        let at = Instant::now();
        match chunk {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    for frame in parser.push(&data) {
                        subscription.record(frame, at, &delivered);
                    }
                }
            }
            Some(Err(error)) => {
                subscription.ended = Some(format!("the stream failed: {error}"));
                return subscription;
            }
            None => {
                subscription.ended = Some("the node ended the stream".into());
                return subscription;
            }
        }
    }
}

/// The subscribers that connected: their session (an index) and task.
#[derive(Default)]
struct Connected {
    tasks: Vec<(usize, JoinHandle<Subscription>)>,
    errors: u64,
    first_error: Option<String>,
}

async fn connect_subscribers(
    args: &StreamArgs,
    sessions: &[SessionId],
    stop: &watch::Receiver<bool>,
    delivered: &Arc<AtomicU64>,
) -> Connected {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let api_key = args.target.api_key.clone().unwrap_or_default();
    let mut pending = Vec::with_capacity(args.subscribers as usize);
    for index in 0..args.subscribers as usize {
        let session = index % sessions.len();
        let setup = SubscriberSetup {
            addr: args.http[index % args.http.len()].clone(),
            api_key: api_key.clone(),
            session: sessions[session],
            gate: gate.clone(),
            stop: stop.clone(),
            delivered: delivered.clone(),
        };
        let (ready, connected) = oneshot::channel();
        pending.push((session, tokio::spawn(subscribe(setup, ready)), connected));
    }
    let mut connected = Connected::default();
    for (session, task, ready) in pending {
        let error = match ready.await {
            Ok(Ok(())) => {
                connected.tasks.push((session, task));
                continue;
            }
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => "the subscriber task ended before connecting".to_string(),
        };
        connected.errors += 1;
        connected.first_error.get_or_insert(error);
    }
    connected
}

/// An acknowledged append of the writer.
struct Ack {
    session: usize,
    seq: u64,
    sent: Instant,
    acked: Instant,
}

/// Appends `rate` events per second for `seconds`, round robin over the
/// sessions, each in its own task (open loop: a slow answer does not delay
/// the next send). Returns the acknowledged appends and the errors.
async fn write_at_rate(client: &Arc<Client>, sessions: &[SessionId], args: &StreamArgs) -> Result<(Vec<Ack>, u64)> {
    let total = (args.rate * args.seconds).round() as u64;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let every_two_seconds = (args.rate * 2.0).round().max(1.0) as u64;
    let text = "x".repeat(args.payload_bytes);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for index in 0..total {
        ticks.tick().await;
        if index > 0 && index % every_two_seconds == 0 {
            eprintln!("bench http: stream: {index}/{total} appends sent");
        }
        let session = index as usize % sessions.len();
        let (client, session_id, text, errors) = (client.clone(), sessions[session], text.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            match client.append(session_id, EventPayload::user_text(text)).await {
                Ok(seq) => Some(Ack { session, seq, sent, acked: Instant::now() }),
                Err(error) => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("bench http: stream: first append error: {error}");
                    }
                    None
                }
            }
        }));
    }
    let mut acks = Vec::with_capacity(tasks.len());
    for task in tasks {
        acks.extend(task.await?);
    }
    Ok((acks, errors.load(Ordering::Relaxed)))
}

/// Frames due and delivered, and their latencies.
#[derive(Debug, Default)]
struct Delivery {
    expected: u64,
    delivered: u64,
    duplicates: u64,
    unexpected: u64,
    malformed: u64,
    other: u64,
    before_ack: u64,
    ended_early: u64,
    first_end: Option<String>,
    ack_to_delivery: Vec<Duration>,
    send_to_delivery: Vec<Duration>,
}

fn tally(acks: &[Ack], subscriptions: &[(usize, Subscription)]) -> Delivery {
    let by_event: HashMap<(usize, u64), &Ack> = acks.iter().map(|ack| ((ack.session, ack.seq), ack)).collect();
    let mut per_session: HashMap<usize, u64> = HashMap::new();
    for ack in acks {
        *per_session.entry(ack.session).or_default() += 1;
    }
    let mut delivery = Delivery::default();
    for (session, subscription) in subscriptions {
        delivery.expected += per_session.get(session).copied().unwrap_or(0);
        for (seq, at) in &subscription.received {
            let Some(ack) = by_event.get(&(*session, *seq)) else {
                delivery.unexpected += 1;
                continue;
            };
            delivery.delivered += 1;
            delivery.before_ack += u64::from(*at < ack.acked);
            delivery.ack_to_delivery.push(at.saturating_duration_since(ack.acked));
            delivery.send_to_delivery.push(at.saturating_duration_since(ack.sent));
        }
        delivery.duplicates += subscription.duplicates;
        delivery.malformed += subscription.malformed;
        delivery.other += subscription.other;
        if let Some(end) = &subscription.ended {
            delivery.ended_early += 1;
            delivery.first_end.get_or_insert_with(|| end.clone());
        }
    }
    delivery
}

// ---------------------------------------------------------------- processes

/// A process's VmRSS in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "VmRSS:")
}

/// The first number after `name` in a `/proc/PID/status`-like text.
fn status_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// CPU seconds (user + system, every thread) a process (`self` or a pid)
/// has used: fields 14 and 15 of `/proc/PID/stat`, in USER_HZ (100/s on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_seconds(&stat)
}

fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    // The command name, in parentheses, may hold spaces: count from after it.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 / USER_HZ)
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|kib| kib as f64 / 1024.0)
}

/// The soft limit of open files of a process (`self` or a pid).
fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The nodes' pids: those given, or every `agentd start` process found.
fn node_pids(given: &[u32]) -> Vec<u32> {
    if given.is_empty() {
        discover_node_pids()
    } else {
        given.to_vec()
    }
}

/// Every `agentd start` process on this machine but this one.
fn discover_node_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id();
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != me && is_agentd_start(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

fn is_agentd_start(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut args = cmdline.split(|byte| *byte == 0);
    let program = args.next().map(|program| program.rsplit(|byte| *byte == b'/').next().unwrap_or(program));
    program == Some(b"agentd".as_slice()) && args.next() == Some(b"start".as_slice())
}

/// Fails unless this process may open a file per subscriber; warns about nodes that may not.
fn check_open_files(subscribers: u32, nodes: &[u32]) -> Result<()> {
    let needed = u64::from(subscribers) + SPARE_FDS;
    if let Some(limit) = open_files_limit("self") {
        ensure!(
            limit >= needed,
            "{subscribers} subscribers need about {needed} open files but the soft limit is {limit}: \
             raise it first (`ulimit -n {needed}`)"
        );
    }
    let per_node = u64::from(subscribers) / nodes.len().max(1) as u64 + SPARE_FDS;
    for pid in nodes {
        if let Some(limit) = open_files_limit(&pid.to_string()).filter(|limit| *limit < per_node) {
            eprintln!("bench http: warning: node pid {pid} may open only {limit} files (needs about {per_node})");
        }
    }
    Ok(())
}

/// Samples the processes' RSS every 250 ms until `stop`; the peak of each, in KiB.
async fn sample_peaks(pids: Vec<u32>, mut stop: watch::Receiver<bool>) -> Vec<Option<u64>> {
    let mut peaks: Vec<Option<u64>> = vec![None; pids.len()];
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.changed() => return peaks,
            _ = ticks.tick() => {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    if let Some(rss) = rss_kib(*pid) {
                        *peak = Some(peak.map_or(rss, |peak| peak.max(rss)));
                    }
                }
            }
        }
    }
}

/// Waits until `expected` frames are delivered, or `patience` has passed without progress.
async fn drain(delivered: &AtomicU64, expected: u64, patience: Duration) {
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    while last.0 < expected && last.1.elapsed() < patience {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    eprintln!("bench http: stream: {} of {expected} frames delivered", delivered.load(Ordering::Relaxed));
}

// ---------------------------------------------------------------- stream

pub async fn stream(args: StreamArgs) -> Result<StreamReport> {
    ensure!(args.rate > 0.0 && args.seconds > 0.0, "--rate and --seconds must be positive");
    ensure!(args.sessions > 0 && !args.http.is_empty(), "--sessions and --http must not be empty");
    let pids = node_pids(&args.node_pids);
    eprintln!("bench http: stream: node pids {pids:?}");
    check_open_files(args.subscribers, &pids)?;
    let client = Arc::new(args.target.client()?);
    let sessions = create_sessions(&client, args.sessions).await?;
    let before: Vec<Option<u64>> = pids.iter().map(|pid| rss_kib(*pid)).collect();
    let (stop, stopped) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let connecting = Instant::now();
    let connected = connect_subscribers(&args, &sessions, &stopped, &delivered).await;
    let connect_seconds = connecting.elapsed().as_secs_f64();
    eprintln!(
        "bench http: stream: {} subscribers connected in {connect_seconds:.2}s, {} failed",
        connected.tasks.len(),
        connected.errors
    );
    let connected_rss: Vec<Option<u64>> = pids.iter().map(|pid| rss_kib(*pid)).collect();
    let sampler = tokio::spawn(sample_peaks(pids.clone(), stopped.clone()));
    let writing = Instant::now();
    let (acks, append_errors) = write_at_rate(&client, &sessions, &args).await?;
    let write_seconds = writing.elapsed().as_secs_f64();
    let mut per_session: HashMap<usize, u64> = HashMap::new();
    for ack in &acks {
        *per_session.entry(ack.session).or_default() += 1;
    }
    let expected = connected.tasks.iter().map(|(session, _)| per_session.get(session).copied().unwrap_or(0)).sum();
    drain(&delivered, expected, Duration::from_secs_f64(args.drain_seconds)).await;
    let end: Vec<Option<u64>> = pids.iter().map(|pid| rss_kib(*pid)).collect();
    let _ = stop.send(true);
    let mut subscriptions = Vec::with_capacity(connected.tasks.len());
    for (session, task) in connected.tasks {
        subscriptions.push((session, task.await?));
    }
    let peaks = sampler.await?;
    let nodes = pids
        .iter()
        .enumerate()
        .map(|(index, pid)| NodeMemory {
            pid: *pid,
            rss_before_mib: mib(before[index]),
            rss_connected_mib: mib(connected_rss[index]),
            rss_peak_mib: mib(peaks[index]),
            rss_end_mib: mib(end[index]),
        })
        .collect();
    let timing = StreamTiming { connect_seconds, write_seconds, append_errors };
    Ok(stream_report(&args, &acks, &subscriptions, (connected.errors, connected.first_error), timing, nodes))
}

struct StreamTiming {
    connect_seconds: f64,
    write_seconds: f64,
    append_errors: u64,
}

fn stream_report(
    args: &StreamArgs,
    acks: &[Ack],
    subscriptions: &[(usize, Subscription)],
    (connect_errors, first_connect_error): (u64, Option<String>),
    timing: StreamTiming,
    nodes: Vec<NodeMemory>,
) -> StreamReport {
    let delivery = tally(acks, subscriptions);
    let send_to_ack = acks.iter().map(|ack| ack.acked.saturating_duration_since(ack.sent)).collect();
    StreamReport {
        bench: "stream",
        sessions: args.sessions,
        subscribers: args.subscribers,
        subscribers_connected: subscriptions.len() as u64,
        connect_errors,
        first_connect_error,
        connect_seconds: timing.connect_seconds,
        rate_per_sec: args.rate,
        write_seconds: timing.write_seconds,
        appends: acks.len() as u64,
        append_errors: timing.append_errors,
        cores: cores(),
        frames_expected: delivery.expected,
        frames_delivered: delivery.delivered,
        frames_missing: delivery.expected.saturating_sub(delivery.delivered),
        frames_duplicate: delivery.duplicates,
        frames_unexpected: delivery.unexpected,
        frames_malformed: delivery.malformed,
        frames_other: delivery.other,
        delivered_before_ack: delivery.before_ack,
        streams_ended_early: delivery.ended_early,
        first_stream_end: delivery.first_end,
        latency_from: "the append's acknowledgement, as the writer (QUIC, this process) read it",
        send_to_ack: Latency::of(send_to_ack),
        ack_to_delivery: Latency::of(delivery.ack_to_delivery),
        send_to_delivery: Latency::of(delivery.send_to_delivery),
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_split_across_chunks() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": agentd event stream\n\nevent: user.mes").len() == 1);
        let frames = parser.push(b"sage\nid: 7\ndata: {\"seq\":7}\n\nevent: ping\ndata: {}\n\n");
        assert_eq!(
            frames,
            vec![
                SseFrame { event: "user.message".into(), id: Some(7), data: "{\"seq\":7}".into() },
                SseFrame { event: "ping".into(), id: None, data: "{}".into() },
            ]
        );
        assert!(parser.buffer.is_empty());
    }

    #[test]
    fn frames_are_counted_once_and_checked() {
        let delivered = AtomicU64::new(0);
        let mut subscription = Subscription::default();
        let at = Instant::now();
        let frame = |id: u64, seq: u64| SseFrame {
            event: "user.message".into(),
            id: Some(id),
            data: format!(r#"{{"seq":{seq},"processed_at":"2026-01-01T00:00:00Z"}}"#),
        };
        subscription.record(frame(1, 1), at, &delivered);
        subscription.record(frame(1, 1), at, &delivered);
        subscription.record(frame(2, 3), at, &delivered);
        subscription.record(SseFrame { event: "agent.message".into(), ..SseFrame::default() }, at, &delivered);
        assert_eq!(delivered.load(Ordering::Relaxed), 1);
        assert_eq!((subscription.duplicates, subscription.malformed, subscription.other), (1, 1, 1));
    }

    #[test]
    fn tally_matches_frames_to_acks() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let acks = vec![
            Ack { session: 0, seq: 1, sent: ms(0), acked: ms(2) },
            Ack { session: 0, seq: 2, sent: ms(10), acked: ms(12) },
            Ack { session: 1, seq: 1, sent: ms(20), acked: ms(22) },
        ];
        let subscription = |received: Vec<(u64, Instant)>| Subscription { received, ..Subscription::default() };
        let subscriptions =
            vec![(0, subscription(vec![(1, ms(5)), (2, ms(11)), (9, ms(30))])), (1, subscription(Vec::new()))];
        let delivery = tally(&acks, &subscriptions);
        assert_eq!((delivery.expected, delivery.delivered, delivery.unexpected), (3, 2, 1));
        assert_eq!(delivery.before_ack, 1);
        assert_eq!(delivery.ack_to_delivery, vec![Duration::from_millis(3), Duration::ZERO]);
    }

    #[test]
    fn budgets_split_into_rounds_exactly() {
        let shares: Vec<u64> = (0..3)
            .map(|round| match Budget::Requests(10).share(round, 3) {
                Budget::Requests(share) => share,
                Budget::For(_) => 0,
            })
            .collect();
        assert_eq!(shares, vec![3, 3, 4]);
        assert!(matches!(Budget::For(Duration::from_secs(10)).share(1, 2), Budget::For(time) if time.as_secs() == 5));
    }

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tagentd\nVmPeak:\t  200 kB\nVmRSS:\t  123456 kB\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(123456));
        assert_eq!(status_field(status, "VmSwap:"), None);
        assert!(open_files_limit("self").is_some_and(|limit| limit > 0));
        assert!(rss_kib(std::process::id()).is_some_and(|rss| rss > 0));
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20";
        assert_eq!(stat_cpu_seconds(stat), Some(3.0));
        assert!(cpu_seconds("self").is_some());
    }
}
