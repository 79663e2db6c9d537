//! The OCI container sandbox drivers ([`OciSandbox`]): runc (`oci`) and gVisor's
//! runsc (`gvisor`).
//!
//! # runc
//!
//! The same tools, ledger, secrets and shell protocol as the namespace sandbox
//! (`namespace.rs`), with `bash` served by a busybox `sh` (ash, which
//! understands the `eval $'...'` lines) in a runc container run in the
//! foreground (`runc run`, stdio piped). The bundle under
//! `root/bundle` is generated per sandbox (`oci_bundle.rs`):
//! - the root is a shared read-only rootfs built by `scripts/oci-rootfs.sh`
//!   (busybox-static and its applets, `/bin/bash` running ash, an `/etc/passwd`
//!   with uid 1000); no host path is visible except the session's workspace,
//!   bound read-write at `/workspace`;
//! - fresh `/proc`, a tmpfs `/dev` with runc's default devices, `/tmp` a tmpfs of
//!   at most `Limits::memory_bytes_max` bytes;
//! - the shell runs as uid/gid 1000 without a user namespace (the workspace is
//!   handed to host uid 1000, as are the files the file tools create), with no
//!   capabilities and `noNewPrivileges`;
//! - new PID, IPC, UTS, mount, cgroup and network namespaces (the network one
//!   is the host's with `Network::Unrestricted`, the sandbox's egress
//!   namespace with an allowlist);
//! - cgroup limits set by runc: memory (`Limits::memory_bytes_max`), pids
//!   (`Limits::pids_max`) and CPU (a quota of `Limits::cpu_millicores`, one core
//!   by default, computed as for the namespace sandbox, and half the default
//!   shares), so a background busy loop is bounded.
//!
//! Every shell gets a new container (a fresh id); a timeout, `restart`,
//! `destroy` or drop runs `runc kill <id> KILL` (which ends the PID namespace)
//! and `runc delete --force <id>`. Needs root and the `runc` and
//! `busybox-static` packages.
//!
//! # gVisor ([`ContainerRuntime::Gvisor`])
//!
//! The same bundle and rootfs, run by gVisor's `runsc --platform=ptrace` (state
//! under [`GVISOR_STATE_ROOT`](crate::sandbox::GVISOR_STATE_ROOT)) instead of
//! runc. The difference is the kernel: the container's system calls never
//! reach the host kernel; gVisor's
//! user-space kernel (the sentry, itself under a seccomp filter) serves them,
//! and file access goes through its gofer, which sees only the bundle's mounts.
//! A kernel bug reachable from a system call is therefore not reachable from
//! the sandbox. What the sandbox sees is the OCI sandbox's view (read-only
//! busybox root, the workspace at `/workspace`, uid 1000, no capabilities, its
//! own PID, IPC, UTS and mount namespaces), served by gVisor's kernel.
//! - Network: with `Network::None`, `--network=none` and a new network
//!   namespace: only gVisor's own loopback. Otherwise `--network=host`:
//!   sockets pass through the sentry to the host stack of the namespace the
//!   sandbox runs in, the host's (unrestricted) or the sandbox's egress
//!   namespace (an allowlist). (runsc's own `sandbox` network would need a
//!   prepared network namespace with a veth pair, which agentd does not set up.)
//! - Processes: RLIMIT_NPROC = `Limits::pids_max`, enforced by gVisor's
//!   kernel per user inside the sandbox (every process there is uid 1000, which
//!   cannot raise it): a fork past it fails with EAGAIN, as under runc's pids
//!   cgroup. The host's pids cgroup is only a backstop, at 16 host tasks per
//!   allowed process plus 256, because the ptrace platform spends about 9 host
//!   tasks (sentry threads, stub processes) per sandbox process.
//! - Memory: the host's memory cgroup around the whole sandbox, at
//!   `Limits::memory_bytes_max` plus 64 MiB for gVisor's own kernel (`MemTotal`
//!   inside shows that sum). gVisor (the 2022 Debian build) has no OOM killer
//!   of its own, so going past it makes the host kill gVisor's kernel: **the
//!   whole sandbox dies, not just the offending process** (the call fails with
//!   "the shell exited", the shell's state is lost, the next call gets a fresh
//!   sandbox). `/tmp` is a tmpfs of at most `Limits::memory_bytes_max`, which
//!   gVisor honours.
//! - CPU: the same quota (`Limits::cpu_millicores`) and half shares as runc, on
//!   the host cgroup.
//! - Wall clock and output: the same as every driver. A shell must answer
//!   within the shell start timeout (10 s; runsc starts in about 0.25 s here),
//!   else it is killed: `runsc kill`, then the `runsc run` process (the
//!   sandbox is attached to it and dies with it), then `runsc delete --force`,
//!   then the empty cgroup directories and the lock file that a start killed
//!   before runsc recorded it leaves behind are removed.
//! - Cost: a cold start of about 0.25 s, every system call and page fault is
//!   a round trip through ptrace, and each process costs the host some 100s of
//!   KiB of gVisor memory.
//!
//! Needs root, the `runsc` package (`apt-get install runsc`) and ptrace. The
//! first provisioning in a process (and [`OciSandbox::probe_with`]) starts a
//! `/bin/true` container within a timeout, so a machine that cannot run
//! gVisor fails provisioning with `SandboxError::Unavailable` saying what is
//! missing (the same holds for runc).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::container_runtime::{ContainerRuntime, RuntimeCli};
use super::oci_bundle::{bundle_config, check_rootfs, write_bundle, SANDBOX_UID};
use crate::sandbox::call::{instance_name, CallRunner, Shell, ShellLauncher, ShellStopper, Workspace};
use crate::sandbox::egress::EgressNetwork;
use crate::sandbox::{Ledger, Limits, Sandbox, SandboxError, ToolCall, ToolOutput};

/// Where `scripts/oci-rootfs.sh` builds the OCI sandbox's root filesystem.
pub const OCI_ROOTFS_DEFAULT: &str = "/var/cache/agentd/oci-rootfs";
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
