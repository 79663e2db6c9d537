//! The local sandbox driver ([`LocalSandbox`]): the sandbox that the `agentd
//! hands` agent serves from inside a VM, with the same tools, ledger and call
//! runner as every driver and `bash` a plain local shell (bash, or busybox
//! ash) in its own process group, working in the workspace.
//!
//! It isolates nothing by itself: the VM around it is the boundary. A timeout
//! or `destroy` kills the shell's process group (a process that left it with
//! `setsid` survives). The shell gets `oom_score_adj` 1000 so that memory
//! exhaustion kills tool processes before the agent; with `run_as` it runs as
//! that uid under `ulimit -u pids_max`. Memory and CPU are the VM's
//! (`Limits::cpu_millicores` does not apply).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::sandbox::call::{CallRunner, Shell, ShellLauncher, ShellStopper, Workspace};
use crate::sandbox::egress::proxy_environment;
use crate::sandbox::{Ledger, Limits, Network, Sandbox, SandboxError, ToolCall, ToolOutput};

/// The `PATH` the shell gets.
const SHELL_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
/// How long a dropped sandbox's cleanup waits for the shell to die.
const CLEANUP_WAIT_MS: u64 = 2_000;

/// A persistent local shell in its own process group, working in `workspace`,
/// plus the file tools confined to it and the idempotency ledger.
///
/// The shell's processes are made the first choice of the kernel's OOM killer
/// (`oom_score_adj` 1000), so memory exhaustion inside the VM takes them, not
/// the agent. With `run_as`, the shell runs as that user (and the workspace
/// is handed to it) with at most `Limits::pids_max` processes (RLIMIT_NPROC,
/// which the kernel does not apply to root). With a `network_namespace`, the shell
/// starts there; when `Limits::network` is an allowlist, it also gets the egress proxy
/// variables (`agentd hands` serves the proxy inside that namespace).
pub struct LocalSandbox {
    shell: LocalShell,
    workspace: Workspace,
    runner: CallRunner,
}

/// How the local shell is started.
#[derive(Debug, Clone)]
pub struct LocalShell {
    /// bash, or a shell that speaks its quoting (busybox ash).
    pub program: PathBuf,
    /// Run the shell as this uid and gid (the workspace is handed to it).
    pub run_as: Option<u32>,
    /// Start the shell in the network namespace bound at this path (through
    /// `nsenter`, which must be on `PATH`, as root): a namespace without
    /// interfaces leaves tools with no network while the agent keeps its own.
    pub network_namespace: Option<PathBuf>,
}

impl LocalSandbox {
    /// Serves tools over `workspace` (created if missing) with the ledger in
    /// `ledger`. The shell starts on the first `bash` call.
    pub fn open(
        workspace: &Path,
        ledger: &Path,
        shell: LocalShell,
        limits: Limits,
    ) -> Result<LocalSandbox, SandboxError> {
        std::fs::create_dir_all(workspace)
            .map_err(|error| SandboxError::Io(format!("creating {}: {error}", workspace.display())))?;
        if !shell.program.exists() {
            return Err(SandboxError::Unavailable(format!("no shell at {}", shell.program.display())));
        }
        if let Some(namespace) = shell.network_namespace.as_ref().filter(|namespace| !namespace.exists()) {
            return Err(SandboxError::Unavailable(format!("no network namespace at {}", namespace.display())));
        }
        let workspace = Workspace::new(workspace, shell.run_as)
            .map_err(|error| SandboxError::Io(format!("resolving {}: {error}", workspace.display())))?;
        let ledger = Ledger::open(ledger.to_path_buf())?;
        Ok(LocalSandbox { shell, runner: CallRunner::new(limits, workspace.clone(), ledger), workspace })
    }

    async fn spawn_shell(&self) -> Result<Shell, SandboxError> {
        // The first shell adjusts itself, then becomes the persistent one, so the
        // settings hold for everything it starts.
        let mut setup = "echo 1000 > /proc/self/oom_score_adj 2>/dev/null; ".to_owned();
        if self.shell.run_as.is_some() {
            setup.push_str(&format!("ulimit -u {} || exit 1; ", self.runner.limits.pids_max));
        }
        let program = self.shell.program.to_string_lossy().into_owned();
        setup.push_str(&format!("exec {program}"));
        let mut command = match &self.shell.network_namespace {
            // nsenter enters the namespace as root, then takes the uid; it does not fork.
            Some(namespace) => {
                let mut command = tokio::process::Command::new("nsenter");
                command.arg(format!("-n{}", namespace.display()));
                if let Some(uid) = self.shell.run_as {
                    command.args(["-S", &uid.to_string(), "-G", &uid.to_string()]);
                }
                command.arg("--").arg(&self.shell.program);
                command
            }
            None => {
                let mut command = tokio::process::Command::new(&self.shell.program);
                if let Some(uid) = self.shell.run_as {
                    command.uid(uid).gid(uid);
                }
                command
            }
        };
        command
            .arg("-c")
            .arg(setup)
            .current_dir(self.workspace.root())
            .env_clear()
            .env("PATH", SHELL_PATH)
            .env("HOME", self.workspace.root())
            .process_group(0);
        if matches!(self.runner.limits.network, Network::Allowlist(_)) {
            command.envs(proxy_environment());
        }
        Shell::spawn(command, ShellStopper::ProcessGroup).await
    }
}

impl ShellLauncher for LocalSandbox {
    fn launch(&self) -> BoxFuture<'_, Result<Shell, SandboxError>> {
        self.spawn_shell().boxed()
    }
}

impl Sandbox for LocalSandbox {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        self.runner.execute(self, call).boxed()
    }

    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        async move {
            self.runner.stop().await;
            Ok(())
        }
        .boxed()
    }

    /// Not destroyed, and the shell (if started) still running.
    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        std::future::ready(self.runner.health()).boxed()
    }
}

impl Drop for LocalSandbox {
    fn drop(&mut self) {
        if let Some(mut shell) = self.runner.take_shell_now() {
            shell.kill_blocking(Duration::from_millis(CLEANUP_WAIT_MS));
        }
    }
}
