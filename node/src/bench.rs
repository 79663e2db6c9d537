//! `agentd bench append`: closed-loop append load against a running
//! cluster. Each client owns a connection and a session and keeps one append
//! in flight; latency is measured from send to acknowledged commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_protocol::event::EventPayload;
use anyhow::Result;
use serde::Serialize;

use crate::client::Client;

#[derive(Debug, Clone)]
pub struct AppendBench {
    pub addrs: Vec<String>,
    pub ca_pem: Option<String>,
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

pub async fn run_append(bench: AppendBench) -> Result<BenchReport> {
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
        let client = Client::for_addrs(bench.addrs.clone(), bench.ca_pem.clone())?;
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
    let percentile = |fraction: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * fraction).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
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

/// Time from sending a message to the first model request of the turn, for
/// sandboxes provisioned lazily (at the first tool call) and eagerly (when
/// the turn starts), in one run against one cluster.
#[derive(Debug, Clone)]
pub struct FirstModelRequestBench {
    pub addrs: Vec<String>,
    pub ca_pem: Option<String>,
    pub sessions: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirstModelRequestReport {
    pub provisioning: &'static str,
    pub sessions: u32,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

pub async fn run_first_model_request(bench: FirstModelRequestBench) -> Result<Vec<FirstModelRequestReport>> {
    use agentd_protocol::agent::{AgentSpec, BuiltInTool, EnvironmentSpec, Network, PermissionPolicy};

    let client = Client::for_addrs(bench.addrs.clone(), bench.ca_pem.clone())?;
    let agent = client
        .put_agent(
            None,
            AgentSpec {
                name: "bench".into(),
                model: "scripted:echo".into(),
                system: None,
                tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow }],
                custom_tools: vec![],
                max_model_calls_per_turn: 5,
            },
        )
        .await?;
    let mut reports = Vec::new();
    for (provisioning, eager) in [("lazy", false), ("eager", true)] {
        let environment = client
            .put_environment(
                None,
                EnvironmentSpec {
                    name: format!("bench-{provisioning}"),
                    driver: "namespace".into(),
                    network: Network::None,
                    tool_timeout_ms: agentd_protocol::limits::TOOL_TIMEOUT_MS_DEFAULT,
                    eager_provisioning: eager,
                    vaults: vec![],
                    resources: Default::default(),
                },
            )
            .await?;
        let mut latencies = Vec::new();
        for number in 0..bench.sessions {
            let session = client.create_session_with(Some(agent.id), Some(environment.id)).await?.session_id;
            let mut subscription = client.subscribe(session, 1);
            let sent = Instant::now();
            client.append(session, EventPayload::user_text(format!("message {number}"))).await?;
            'wait: loop {
                for event in subscription.next().await? {
                    if matches!(event.payload, EventPayload::SpanModelRequestStart { .. }) {
                        latencies.push(sent.elapsed());
                        break 'wait;
                    }
                }
            }
        }
        latencies.sort_unstable();
        let percentile = |fraction: f64| -> f64 {
            let index = ((latencies.len() as f64 * fraction).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
            latencies.get(index).map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
        };
        eprintln!("bench: {provisioning} provisioning measured over {} sessions", latencies.len());
        reports.push(FirstModelRequestReport {
            provisioning,
            sessions: bench.sessions,
            p50_ms: percentile(0.50),
            p95_ms: percentile(0.95),
            max_ms: percentile(1.0),
        });
    }
    Ok(reports)
}

/// Sandbox cold start (provision to the first `execute` result) and the
/// latency of later calls, per available driver.
#[derive(Debug, Clone)]
pub struct SandboxBench {
    pub sandboxes: u32,
    pub calls: u32,
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct SandboxReport {
    pub driver: &'static str,
    pub sandboxes: u32,
    pub cold_start_p50_ms: f64,
    pub cold_start_p95_ms: f64,
    pub bash_call_p50_ms: f64,
    pub bash_call_p95_ms: f64,
    pub read_call_p50_ms: f64,
    pub read_call_p95_ms: f64,
}

fn percentiles(mut samples: Vec<Duration>, fractions: [f64; 2]) -> [f64; 2] {
    samples.sort_unstable();
    fractions.map(|fraction| {
        let index = ((samples.len() as f64 * fraction).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
        samples.get(index).map_or(0.0, |sample| sample.as_secs_f64() * 1000.0)
    })
}

pub async fn run_sandbox(bench: SandboxBench) -> Result<Vec<SandboxReport>> {
    use agentd_actors::sandbox::{
        ContainerRuntime, Limits, NamespaceSandbox, Network, OciSandbox, Sandbox, ToolCall, OCI_ROOTFS_DEFAULT,
    };

    let call = |name: &str, input: &str, key: String| ToolCall {
        name: name.into(),
        input_json: input.into(),
        idempotency_key: key,
        secrets: Vec::new(),
    };
    let rootfs = std::path::PathBuf::from(OCI_ROOTFS_DEFAULT);
    let mut reports = Vec::new();
    let mut microvm = None;
    // `namespace+allowlist` prices an egress allowlist: its own network namespace and proxy.
    for driver in ["namespace", "namespace+allowlist", "oci", "gvisor", "microvm"] {
        let limits = match driver {
            "namespace+allowlist" => {
                Limits { network: Network::Allowlist(vec!["example.com".into()]), ..Limits::default() }
            }
            _ => Limits::default(),
        };
        let container = match driver {
            "oci" => Some(ContainerRuntime::Runc),
            "gvisor" => Some(ContainerRuntime::Gvisor),
            _ => None,
        };
        let available = match (driver, container) {
            (_, Some(runtime)) => OciSandbox::probe_with(runtime, &rootfs),
            // The image is built (once per binary) before the clock starts, as the OCI rootfs is.
            ("microvm", None) => crate::hands::microvm::MicrovmImage::prepare_default().await.map(|image| {
                eprintln!("bench: microvm guests use {}", image.accel().name());
                microvm = Some(image);
            }),
            _ => NamespaceSandbox::probe(),
        };
        if let Err(error) = available {
            eprintln!("bench: skipping the {driver} driver: {error}");
            continue;
        }
        let (mut cold, mut bash, mut read) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..bench.sandboxes {
            let root = bench.dir.join(format!("{driver}-{index}"));
            let started = Instant::now();
            let sandbox: Box<dyn Sandbox> = match (driver, container) {
                (_, Some(runtime)) => {
                    Box::new(OciSandbox::provision_with(runtime, root, limits.clone(), rootfs.clone()).await?)
                }
                ("microvm", None) => {
                    let image = microvm.as_ref().ok_or_else(|| anyhow::anyhow!("the microvm image is not prepared"))?;
                    Box::new(crate::hands::MicrovmSandbox::provision(root, limits.clone(), image).await?)
                }
                _ => Box::new(NamespaceSandbox::provision(root, limits.clone()).await?),
            };
            let first = sandbox.execute(call("bash", r#"{"command":"true"}"#, format!("{index}-first"))).await?;
            cold.push(started.elapsed());
            anyhow::ensure!(!first.is_error, "the first {driver} call failed: {}", first.content);
            sandbox
                .execute(call("write", r#"{"file_path":"f.txt","content":"x\n"}"#, format!("{index}-write")))
                .await?;
            for number in 0..bench.calls {
                let started = Instant::now();
                sandbox.execute(call("bash", r#"{"command":"echo hi"}"#, format!("{index}-bash-{number}"))).await?;
                bash.push(started.elapsed());
                let started = Instant::now();
                sandbox.execute(call("read", r#"{"file_path":"f.txt"}"#, format!("{index}-read-{number}"))).await?;
                read.push(started.elapsed());
            }
            sandbox.destroy().await?;
        }
        eprintln!("bench: {driver}: {} sandboxes done", bench.sandboxes);
        let [cold_start_p50_ms, cold_start_p95_ms] = percentiles(cold, [0.5, 0.95]);
        let [bash_call_p50_ms, bash_call_p95_ms] = percentiles(bash, [0.5, 0.95]);
        let [read_call_p50_ms, read_call_p95_ms] = percentiles(read, [0.5, 0.95]);
        reports.push(SandboxReport {
            driver,
            sandboxes: bench.sandboxes,
            cold_start_p50_ms,
            cold_start_p95_ms,
            bash_call_p50_ms,
            bash_call_p95_ms,
            read_call_p50_ms,
            read_call_p95_ms,
        });
    }
    Ok(reports)
}
