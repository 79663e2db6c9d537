//! The bubblewrap sandbox driver.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::bwrap::Bwrap;
use super::call_runner::{instance_name, CallRunner, ShellLauncher};
use super::egress::EgressNetwork;
use super::ledger::Ledger;
use super::resource_control::ResourceControl;
use super::shell::Shell;
use super::workspace::Workspace;
use super::{Limits, Sandbox, SandboxError, ToolCall, ToolOutput};

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
            Shell::start(&self.bwrap, &self.resources, self.workspace.root(), &self.runner.limits, namespace).await
        }
        .boxed()
    }
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
