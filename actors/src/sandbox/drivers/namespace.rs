//! The bubblewrap sandbox driver ([`NamespaceSandbox`]).
//!
//! `bash` runs in one persistent `/bin/bash` per session inside bubblewrap:
//! - new user (mapped to uid 1000 inside, the host's uid outside), PID, mount,
//!   IPC, UTS, cgroup and network namespaces (`--unshare-all --unshare-user`;
//!   the network namespace is the host's with `Network::Unrestricted`, and the
//!   sandbox's egress namespace with an allowlist, see
//!   [`egress`](crate::sandbox::egress)), all capabilities dropped,
//!   `--new-session` (no TIOCSTI into the host terminal), `--die-with-parent`,
//!   and a cleared environment (`HOME` and cwd `/workspace`, a fixed `PATH`);
//! - the filesystem is an empty read-only root with `/usr` (and the
//!   merged-/usr symlinks) bound read-only, a short list of `/etc` files
//!   (`ld.so.cache`, `passwd`, `alternatives`, `ssl` ...; not `shadow`),
//!   a private `/tmp` tmpfs, a fresh `/proc` and minimal `/dev`, and the
//!   session's workspace read-write at `/workspace`. No other host path, and
//!   so no other session's workspace, is visible.
//!
//! Each command is sent as one `eval $'...'` line with stdin from
//! `/dev/null`, followed by `echo "<random sentinel> $?"`; output is read up
//! to the sentinel. A timeout kills the sandbox's PID namespace init, which
//! takes every process of the sandbox (background ones included) with it,
//! then bwrap; the next call starts a fresh shell. Output that background
//! processes print after their command finished shows up in a later call's
//! output. Calls run one at a time per sandbox; `destroy` stops a running
//! `bash` call at once (its output says so, and is recorded) and waits for a
//! running file tool, which its wall-clock budget bounds.
//!
//! # Limits: what is and is not enforced
//! - Wall clock: per `bash` call (`timeout_ms`, at most `Limits::wall_clock_ms`);
//!   `read` and `grep` give up after `Limits::wall_clock_ms` too.
//! - Output: at most `Limits::output_bytes_max` bytes kept per call; the rest
//!   is read and dropped, and the output says how much was dropped.
//! - Memory and processes: if this process can create cgroups (v1 memory and
//!   pids controllers under its own cgroups, as on the hybrid layout of the
//!   build machines, or v2 with those controllers delegated), the sandbox's
//!   processes join a per-sandbox cgroup with `memory.limit_in_bytes` (plus
//!   `memsw` when swap accounting exists) / `memory.max`, and `pids.max`:
//!   limits for all of the sandbox's processes together, OOM kills inside.
//!   Otherwise the fallback is `prlimit --as --nproc` on the sandbox's first
//!   process: RLIMIT_AS bounds each process's address space (not their sum),
//!   and RLIMIT_NPROC bounds the processes of the sandbox's host user. The
//!   kernel never applies RLIMIT_NPROC to root, so when agentd runs as root
//!   the fallback starts the sandbox as host user 65534 (`setpriv`), hands
//!   the workspace to that user (and every file the file tools create), and
//!   needs the session root's parent directories to be traversable by it.
//!   All fallback sandboxes of a host share that user's process budget. A
//!   warning is logged when the fallback is used;
//!   [`NamespaceSandbox::uses_cgroup`] reports which is in force. On the
//!   build machines (cgroup v1 hybrid, root) the cgroup path is used.
//! - `/tmp` is a tmpfs of at most `Limits::memory_bytes_max` bytes (its pages
//!   also count against the memory cgroup).
//! - CPU time: with the cgroup path and a cpu controller (v1 `cpu` under this
//!   process's own cpu cgroup, or v2 with `cpu` delegated), the sandbox's
//!   processes together get a CFS quota of `Limits::cpu_millicores`
//!   (`cpu.cfs_quota_us` = millicores × 100 per `cpu.cfs_period_us` of
//!   100000, or `cpu.max` "quota 100000"; at least 1 ms per period): a busy
//!   loop in the background takes at most that share of the host. Without a
//!   cpu controller, and under the rlimit fallback, CPU time is not limited (a
//!   busy loop keeps a core busy until a call times out, the shell is
//!   restarted or the sandbox is destroyed); a warning is logged once per
//!   process and [`NamespaceSandbox::limits_cpu`] reports it. On the build
//!   machines the v1 cpu controller is used.
//! - Not enforced: CPU weight under contention (no `cpu.shares` / `cpu.weight`),
//!   CPU time where there is no cpu controller (above), disk usage of the
//!   workspace, and the number of open files beyond the host default.
//!
//! The file tools run on the host, in Rust, confined to the workspace (see
//! `call/workspace.rs` for the rules and the remaining TOCTOU race against
//! processes inside the sandbox).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::bwrap::Bwrap;
use crate::sandbox::call::{instance_name, CallRunner, Shell, ShellLauncher, ShellStopper, Workspace};
use crate::sandbox::egress::EgressNetwork;
use crate::sandbox::resource_control::ResourceControl;
use crate::sandbox::{Ledger, Limits, Sandbox, SandboxError, ToolCall, ToolOutput};

/// How long a new shell waits for the previous one's processes to leave the cgroup.
const SHELL_REAP_WAIT_MS: u64 = 2_000;
/// How long a dropped sandbox's cleanup waits for bwrap to die and for its cgroups to empty.
const CLEANUP_WAIT_MS: u64 = 2_000;

/// A session's sandbox: a persistent bash inside bubblewrap namespaces plus
/// host-side file tools confined to the same workspace. See the module docs for
/// what is isolated and which limits are enforced.
///
/// Calls run one at a time, in the order they arrive.
pub struct NamespaceSandbox {
    bwrap: Bwrap,
    workspace: Workspace,
    resources: ResourceControl,
    /// The sandbox's own network namespace and egress proxy, when its network is an allowlist.
    egress: Option<EgressNetwork>,
    runner: CallRunner,
}

impl NamespaceSandbox {
    /// Prepares a sandbox whose session directory on the host is `root` (created if
    /// missing): the workspace is `root/workspace`, the ledger `root/ledger`. The shell
    /// itself starts lazily on the first `bash` call.
    pub async fn provision(root: PathBuf, limits: Limits) -> Result<NamespaceSandbox, SandboxError> {
        let bwrap = tokio::task::spawn_blocking(Bwrap::locate)
            .await
            .map_err(|error| SandboxError::Unavailable(format!("probe task failed: {error}")))??;
        let name = instance_name(&root);
        let resources = ResourceControl::create(&name, &limits);
        NamespaceSandbox::assemble(bwrap, root, limits, resources).await
    }

    /// Like `provision`, with an explicit bwrap binary and, if `force_rlimits`, the
    /// rlimit fallback even where a cgroup could be created.
    pub async fn provision_with(
        root: PathBuf,
        limits: Limits,
        bwrap_program: PathBuf,
        force_rlimits: bool,
    ) -> Result<NamespaceSandbox, SandboxError> {
        let bwrap = tokio::task::spawn_blocking(move || Bwrap::probe_at(&bwrap_program))
            .await
            .map_err(|error| SandboxError::Unavailable(format!("probe task failed: {error}")))??;
        let resources = if force_rlimits {
            ResourceControl::rlimits(&limits)
        } else {
            ResourceControl::create(&instance_name(&root), &limits)
        };
        NamespaceSandbox::assemble(bwrap, root, limits, resources).await
    }

    async fn assemble(
        bwrap: Bwrap,
        root: PathBuf,
        limits: Limits,
        resources: ResourceControl,
    ) -> Result<NamespaceSandbox, SandboxError> {
        let workspace_path = root.join("workspace");
        std::fs::create_dir_all(&workspace_path)
            .map_err(|error| SandboxError::Io(format!("creating {}: {error}", workspace_path.display())))?;
        let workspace = Workspace::new(&workspace_path, resources.host_user())
            .map_err(|error| SandboxError::Io(format!("resolving {}: {error}", workspace_path.display())))?;
        let ledger = Ledger::open(root.join("ledger"))?;
        let egress = EgressNetwork::for_limits(&root, &limits).await?;
        tracing::debug!(root = %root.display(), resources = %resources.describe(), "namespace sandbox provisioned");
        Ok(NamespaceSandbox {
            bwrap,
            runner: CallRunner::new(limits, workspace.clone(), ledger),
            workspace,
            resources,
            egress,
        })
    }

    /// Whether bwrap (from `AGENTD_BWRAP`, else PATH) can start a sandbox on this machine.
    pub fn probe() -> Result<(), SandboxError> {
        Bwrap::locate().map(|_| ())
    }

    /// Whether the bwrap binary at `program` can start a sandbox on this machine.
    pub fn probe_at(program: &Path) -> Result<(), SandboxError> {
        Bwrap::probe_at(program).map(|_| ())
    }

    /// Whether memory and pids limits are enforced by a cgroup (true) or by the rlimit fallback (false).
    pub fn uses_cgroup(&self) -> bool {
        matches!(self.resources, ResourceControl::Cgroup { .. })
    }

    /// Whether CPU time is limited to `Limits::cpu_millicores` (a cpu cgroup); false when the
    /// host offers no cpu controller or the rlimit fallback is in force.
    pub fn limits_cpu(&self) -> bool {
        self.resources.limits_cpu()
    }

    async fn destroy_sandbox(&self) -> Result<(), SandboxError> {
        self.runner.stop().await;
        if let Some(egress) = &self.egress {
            egress.close();
        }
        self.resources.remove().await;
        Ok(())
    }
}

impl ShellLauncher for NamespaceSandbox {
    /// The previous shell's processes may still hold the process budget:
    /// wait (briefly) for the cgroup to empty before starting another.
    fn launch(&self) -> BoxFuture<'_, Result<Shell, SandboxError>> {
        async move {
            self.resources.wait_until_empty(Duration::from_millis(SHELL_REAP_WAIT_MS)).await;
            let namespace = self.egress.as_ref().map(EgressNetwork::namespace);
            start_shell(&self.bwrap, &self.resources, self.workspace.root(), &self.runner.limits, namespace).await
        }
        .boxed()
    }
}

/// Starts bash in a new sandbox over `workspace` and checks it answers. With
/// `network_namespace`, bwrap starts in that (egress) network namespace.
async fn start_shell(
    bwrap: &Bwrap,
    resources: &ResourceControl,
    workspace: &Path,
    limits: &Limits,
    network_namespace: Option<&Path>,
) -> Result<Shell, SandboxError> {
    let mut arguments = bwrap.arguments(workspace, limits);
    arguments.extend(["/bin/bash", "--noprofile", "--norc"].map(str::to_owned));
    let (program, arguments) = resources.wrap(bwrap.program(), arguments);
    // nsenter is outermost: entering a namespace needs root, which the rlimit fallback gives up.
    let (program, arguments) = match network_namespace {
        None => (program, arguments),
        Some(namespace) => {
            let mut entered = vec![format!("--net={}", namespace.display()), "--".to_owned()];
            entered.push(program.to_string_lossy().into_owned());
            entered.extend(arguments);
            (PathBuf::from("nsenter"), entered)
        }
    };
    let mut command = tokio::process::Command::new(&program);
    command.args(&arguments).env_clear();
    Shell::spawn(command, ShellStopper::NamespaceInit).await
}

impl Sandbox for NamespaceSandbox {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        self.runner.execute(self, call).boxed()
    }

    /// Kills every process of the sandbox and removes its cgroups. The session
    /// directory (workspace and ledger) stays: it belongs to the caller.
    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        self.destroy_sandbox().boxed()
    }

    /// Not destroyed, bwrap (if started) still running, and the cgroups still there.
    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        let health = self.runner.health().and_then(|()| self.resources.check().map_err(SandboxError::Crashed));
        std::future::ready(health).boxed()
    }
}

impl Drop for NamespaceSandbox {
    fn drop(&mut self) {
        // Kill and reap bwrap, then remove the cgroups, on a short-lived thread: the kernel
        // tears the PID namespace down asynchronously, so removal needs retries.
        let shell = self.runner.take_shell_now();
        let directories = match &self.resources {
            ResourceControl::Cgroup { directories, .. } => directories.clone(),
            ResourceControl::Rlimit { .. } => Vec::new(),
        };
        if shell.is_none() && directories.is_empty() {
            return;
        }
        let spawned = std::thread::Builder::new().name("agentd-sandbox-cleanup".to_owned()).spawn(move || {
            if let Some(mut shell) = shell {
                shell.kill_blocking(Duration::from_millis(CLEANUP_WAIT_MS));
            }
            let deadline = Instant::now() + Duration::from_millis(CLEANUP_WAIT_MS);
            loop {
                let remaining = directories
                    .iter()
                    .filter(|directory| {
                        std::fs::remove_dir(directory).is_err_and(|error| error.kind() != std::io::ErrorKind::NotFound)
                    })
                    .count();
                if remaining == 0 {
                    return;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(?directories, "could not remove a dropped sandbox's cgroups");
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the sandbox cleanup thread");
        }
    }
}
