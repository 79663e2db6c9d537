//! The OCI container sandbox drivers: runc (`oci`) and gVisor's runsc (`gvisor`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::call_runner::{instance_name, CallRunner, ShellLauncher};
use super::container_runtime::{ContainerRuntime, RuntimeCli};
use super::egress::EgressNetwork;
use super::ledger::Ledger;
use super::oci_bundle::{bundle_config, check_rootfs, write_bundle, SANDBOX_UID};
use super::shell::{Shell, ShellStopper};
use super::workspace::Workspace;
use super::{Limits, Sandbox, SandboxError, ToolCall, ToolOutput};

/// How long a dropped sandbox's cleanup waits for the runtime's `run` to exit.
const CLEANUP_WAIT_MS: u64 = 2_000;

/// A session's sandbox: a persistent busybox shell in a container (runc, or gVisor's
/// runsc) over a shared read-only rootfs, plus host-side file tools confined to the same
/// workspace. See the module docs for what is isolated and which limits are enforced.
///
/// Calls run one at a time, in the order they arrive.
pub struct OciSandbox {
    runtime: RuntimeCli,
    /// `root/bundle`, holding the generated `config.json`.
    bundle: PathBuf,
    /// Prefix of the container ids; each shell's container adds a counter to it.
    container_prefix: String,
    shells_started: std::sync::atomic::AtomicU64,
    /// The sandbox's own network namespace and egress proxy, when its network is an allowlist.
    egress: Option<EgressNetwork>,
    runner: CallRunner,
}

impl OciSandbox {
    /// A runc sandbox: [`OciSandbox::provision_with`] with [`ContainerRuntime::Runc`].
    pub async fn provision(root: PathBuf, limits: Limits, rootfs: PathBuf) -> Result<OciSandbox, SandboxError> {
        OciSandbox::provision_with(ContainerRuntime::Runc, root, limits, rootfs).await
    }

    /// Prepares a sandbox run by `runtime` whose session directory on the host is `root`
    /// (created if missing): the workspace is `root/workspace` (handed to the container's
    /// uid 1000), the ledger `root/ledger`, the OCI bundle `root/bundle`. `rootfs` is the
    /// shared read-only root filesystem built by `scripts/oci-rootfs.sh`. The container
    /// itself starts lazily on the first `bash` call; the first provisioning of a process
    /// probes the runtime (see [`OciSandbox::probe_with`]), so a machine that cannot run it
    /// fails here with what is missing, not at the first `bash` call.
    pub async fn provision_with(
        runtime: ContainerRuntime,
        root: PathBuf,
        limits: Limits,
        rootfs: PathBuf,
    ) -> Result<OciSandbox, SandboxError> {
        let runtime = RuntimeCli::locate(runtime)?;
        check_rootfs(&rootfs)?;
        let (probe_runtime, probe_rootfs) = (runtime.clone(), rootfs.clone());
        tokio::task::spawn_blocking(move || probe_runtime.probe_once(&probe_rootfs))
            .await
            .map_err(|error| SandboxError::Unavailable(format!("the runtime probe failed: {error}")))??;
        let workspace_path = root.join("workspace");
        std::fs::create_dir_all(&workspace_path)
            .map_err(|error| SandboxError::Io(format!("creating {}: {error}", workspace_path.display())))?;
        // The container has no user namespace: its uid 1000 is host uid 1000, which must own
        // the workspace (and every file the file tools create) to write to it.
        let workspace = Workspace::new(&workspace_path, Some(SANDBOX_UID))
            .map_err(|error| SandboxError::Io(format!("resolving {}: {error}", workspace_path.display())))?;
        let egress = EgressNetwork::for_limits(&root, &limits).await?;
        let bundle = root.join("bundle");
        let egress_namespace = egress.as_ref().map(EgressNetwork::namespace);
        write_bundle(&bundle, &bundle_config(runtime.runtime(), &rootfs, workspace.root(), &limits, egress_namespace))
            .map_err(|error| SandboxError::Io(format!("writing the bundle in {}: {error}", bundle.display())))?;
        let ledger = Ledger::open(root.join("ledger"))?;
        tracing::debug!(
            root = %root.display(),
            rootfs = %rootfs.display(),
            driver = %runtime.runtime().driver(),
            "container sandbox provisioned"
        );
        Ok(OciSandbox {
            runtime,
            bundle,
            container_prefix: instance_name(&root),
            shells_started: std::sync::atomic::AtomicU64::new(0),
            egress,
            runner: CallRunner::new(limits, workspace, ledger),
        })
    }

    /// Whether runc (from `AGENTD_RUNC`, else PATH) can run a container over `rootfs` on this
    /// machine: [`OciSandbox::probe_with`] with [`ContainerRuntime::Runc`].
    pub fn probe(rootfs: &Path) -> Result<(), SandboxError> {
        OciSandbox::probe_with(ContainerRuntime::Runc, rootfs)
    }

    /// Whether `runtime` (its binary from `AGENTD_RUNC` / `AGENTD_RUNSC`, else PATH) can run
    /// a container over `rootfs` on this machine: starts one that runs `/bin/true`, within
    /// a timeout. The error names the package to install or what the machine lacks.
    pub fn probe_with(runtime: ContainerRuntime, rootfs: &Path) -> Result<(), SandboxError> {
        RuntimeCli::locate(runtime)?.probe(rootfs)
    }

    /// Runs the runtime's `run` in the foreground: its stdin and stdout are the container
    /// shell's. Every container gets a fresh id, so a dying predecessor never collides with
    /// it. `Shell::spawn` bounds the start: a shell that does not answer in time is killed
    /// and its container deleted.
    async fn spawn_container(&self) -> Result<Shell, SandboxError> {
        let number = self.shells_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let container_id = format!("{}-{number}", self.container_prefix);
        let mut command = tokio::process::Command::new(self.runtime.program());
        command.args(self.runtime.run_arguments(&self.bundle, &container_id, &self.runner.limits.network)).env_clear();
        let stopper = ShellStopper::Container { runtime: self.runtime.clone(), container_id };
        Shell::spawn(command, stopper).await
    }
}

impl ShellLauncher for OciSandbox {
    fn launch(&self) -> BoxFuture<'_, Result<Shell, SandboxError>> {
        self.spawn_container().boxed()
    }
}

impl Sandbox for OciSandbox {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        self.runner.execute(self, call).boxed()
    }

    /// Kills every process of the sandbox and deletes its container. The session
    /// directory (workspace and ledger) stays: it belongs to the caller.
    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        async move {
            self.runner.stop().await;
            if let Some(egress) = &self.egress {
                egress.close();
            }
            Ok(())
        }
        .boxed()
    }

    /// Not destroyed, and the runtime's `run` (if a container was started) still running.
    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        std::future::ready(self.runner.health()).boxed()
    }
}

impl Drop for OciSandbox {
    fn drop(&mut self) {
        // Kill the container and delete it on a short-lived thread: `runc kill` and
        // `runc delete` are processes to wait for, and Drop cannot await.
        let Some(mut shell) = self.runner.take_shell_now() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("agentd-oci-cleanup".to_owned())
            .spawn(move || shell.kill_blocking(Duration::from_millis(CLEANUP_WAIT_MS)));
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the sandbox cleanup thread");
        }
    }
}
