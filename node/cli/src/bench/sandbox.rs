//! `agentd bench sandbox`: sandbox cold start (provision to the first
//! `execute` result) and the latency of later calls, per driver available on
//! this host. Needs no cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentd_actors::sandbox::{
    ContainerRuntime, Limits, NamespaceSandbox, Network, OciSandbox, Sandbox, ToolCall, OCI_ROOTFS_DEFAULT,
};
use agentd_node::hands::{MicrovmImage, MicrovmSandbox};
use agentd_protocol::agent::SandboxDriver;
use anyhow::Result;
use serde::Serialize;

use super::percentile_ms;

#[derive(Debug, Clone)]
pub struct SandboxBench {
    pub sandboxes: u32,
    pub calls: u32,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct SandboxReport {
    /// The driver's name; `namespace+allowlist` is the namespace driver with an egress allowlist.
    pub driver: &'static str,
    pub sandboxes: u32,
    pub cold_start_p50_ms: f64,
    pub cold_start_p95_ms: f64,
    pub bash_call_p50_ms: f64,
    pub bash_call_p95_ms: f64,
    pub read_call_p50_ms: f64,
    pub read_call_p95_ms: f64,
}

/// One row of the report: a driver, and whether its sandboxes get an egress
/// allowlist (which prices their own network namespace and proxy).
struct Row {
    label: &'static str,
    driver: SandboxDriver,
    limits: Limits,
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for driver in SandboxDriver::ALL {
        rows.push(Row { label: driver.name(), driver, limits: Limits::default() });
        if driver == SandboxDriver::Namespace {
            let network = Network::Allowlist(vec!["example.com".into()]);
            rows.push(Row { label: "namespace+allowlist", driver, limits: Limits { network, ..Limits::default() } });
        }
    }
    rows
}

/// What a driver needs prepared before the clock starts (the OCI rootfs is
/// prepared by `scripts/oci-rootfs.sh`; the microVM image here, once per binary).
enum Prepared {
    Namespace,
    Container(ContainerRuntime),
    Microvm(MicrovmImage),
}

async fn prepare(driver: SandboxDriver, rootfs: &Path) -> Result<Prepared, String> {
    let probed = match driver {
        SandboxDriver::Namespace => NamespaceSandbox::probe().map(|()| Prepared::Namespace),
        SandboxDriver::Oci => {
            OciSandbox::probe_with(ContainerRuntime::Runc, rootfs).map(|()| Prepared::Container(ContainerRuntime::Runc))
        }
        SandboxDriver::Gvisor => OciSandbox::probe_with(ContainerRuntime::Gvisor, rootfs)
            .map(|()| Prepared::Container(ContainerRuntime::Gvisor)),
        SandboxDriver::Microvm => MicrovmImage::prepare_default().await.map(|image| {
            eprintln!("bench: microvm guests use {}", image.accel().name());
            Prepared::Microvm(image)
        }),
    };
    probed.map_err(|error| error.to_string())
}

async fn provision(prepared: &Prepared, root: PathBuf, limits: Limits, rootfs: &Path) -> Result<Box<dyn Sandbox>> {
    Ok(match prepared {
        Prepared::Namespace => Box::new(NamespaceSandbox::provision(root, limits).await?),
        Prepared::Container(runtime) => {
            Box::new(OciSandbox::provision_with(*runtime, root, limits, rootfs.to_path_buf()).await?)
        }
        Prepared::Microvm(image) => Box::new(MicrovmSandbox::provision(root, limits, image).await?),
    })
}

fn call(name: &str, input: &str, key: String) -> ToolCall {
    ToolCall { name: name.into(), input_json: input.into(), idempotency_key: key, secrets: Vec::new() }
}

/// Latencies of one row: cold starts, then `bash` and `read` calls.
#[derive(Default)]
struct Samples {
    cold: Vec<Duration>,
    bash: Vec<Duration>,
    read: Vec<Duration>,
}

/// Starts one sandbox, times its first call and `calls` more of each kind, and destroys it.
async fn measure_one(
    bench: &SandboxBench,
    row: &Row,
    prepared: &Prepared,
    index: u32,
    samples: &mut Samples,
) -> Result<()> {
    let rootfs = PathBuf::from(OCI_ROOTFS_DEFAULT);
    let root = bench.dir.join(format!("{}-{index}", row.label));
    let started = Instant::now();
    let sandbox = provision(prepared, root, row.limits.clone(), &rootfs).await?;
    let first = sandbox.execute(call("bash", r#"{"command":"true"}"#, format!("{index}-first"))).await?;
    samples.cold.push(started.elapsed());
    anyhow::ensure!(!first.is_error, "the first {} call failed: {}", row.label, first.content);
    sandbox.execute(call("write", r#"{"file_path":"f.txt","content":"x\n"}"#, format!("{index}-write"))).await?;
    for number in 0..bench.calls {
        let started = Instant::now();
        sandbox.execute(call("bash", r#"{"command":"echo hi"}"#, format!("{index}-bash-{number}"))).await?;
        samples.bash.push(started.elapsed());
        let started = Instant::now();
        sandbox.execute(call("read", r#"{"file_path":"f.txt"}"#, format!("{index}-read-{number}"))).await?;
        samples.read.push(started.elapsed());
    }
    sandbox.destroy().await?;
    Ok(())
}

fn report(row: &Row, sandboxes: u32, mut samples: Samples) -> SandboxReport {
    for latencies in [&mut samples.cold, &mut samples.bash, &mut samples.read] {
        latencies.sort_unstable();
    }
    SandboxReport {
        driver: row.label,
        sandboxes,
        cold_start_p50_ms: percentile_ms(&samples.cold, 0.5),
        cold_start_p95_ms: percentile_ms(&samples.cold, 0.95),
        bash_call_p50_ms: percentile_ms(&samples.bash, 0.5),
        bash_call_p95_ms: percentile_ms(&samples.bash, 0.95),
        read_call_p50_ms: percentile_ms(&samples.read, 0.5),
        read_call_p95_ms: percentile_ms(&samples.read, 0.95),
    }
}

pub async fn run(bench: SandboxBench) -> Result<Vec<SandboxReport>> {
    let rootfs = PathBuf::from(OCI_ROOTFS_DEFAULT);
    let mut reports = Vec::new();
    for row in rows() {
        let prepared = match prepare(row.driver, &rootfs).await {
            Ok(prepared) => prepared,
            Err(error) => {
                eprintln!("bench: skipping the {} driver: {error}", row.label);
                continue;
            }
        };
        let mut samples = Samples::default();
        for index in 0..bench.sandboxes {
            measure_one(&bench, &row, &prepared, index, &mut samples).await?;
        }
        eprintln!("bench: {}: {} sandboxes done", row.label, bench.sandboxes);
        reports.push(report(&row, bench.sandboxes, samples));
    }
    Ok(reports)
}
