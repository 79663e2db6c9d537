//! The sandbox that the `agentd hands` agent serves from inside a VM: the same
//! tools and ledger, with `bash` a plain local shell. It isolates nothing by
//! itself; the VM around it does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::call_runner::{CallRunner, ShellLauncher};
use super::ledger::Ledger;
use super::shell::{Shell, ShellStopper};
use super::workspace::Workspace;
use super::{Limits, Sandbox, SandboxError, ToolCall, ToolOutput};

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
/// which the kernel does not apply to root).
pub struct LocalSandbox {
    shell_program: PathBuf,
    workspace: Workspace,
    run_as: Option<u32>,
    runner: CallRunner,
}

impl LocalSandbox {
    /// Serves tools over `workspace` (created if missing) with the ledger in
    /// `ledger`. `shell_program` is bash, or a shell that speaks its quoting
    /// (busybox ash). The shell starts on the first `bash` call.
    pub fn open(
        workspace: &Path,
        ledger: &Path,
        shell_program: PathBuf,
        run_as: Option<u32>,
        limits: Limits,
    ) -> Result<LocalSandbox, SandboxError> {
        std::fs::create_dir_all(workspace)
            .map_err(|error| SandboxError::Io(format!("creating {}: {error}", workspace.display())))?;
        if !shell_program.exists() {
            return Err(SandboxError::Unavailable(format!("no shell at {}", shell_program.display())));
        }
        let workspace = Workspace::new(workspace, run_as)
            .map_err(|error| SandboxError::Io(format!("resolving {}: {error}", workspace.display())))?;
        let ledger = Ledger::open(ledger.to_path_buf())?;
        Ok(LocalSandbox {
            shell_program,
            runner: CallRunner::new(limits, workspace.clone(), ledger),
            workspace,
            run_as,
        })
    }

    async fn spawn_shell(&self) -> Result<Shell, SandboxError> {
        // The first shell adjusts itself, then becomes the persistent one, so the
        // settings hold for everything it starts.
        let mut setup = "echo 1000 > /proc/self/oom_score_adj 2>/dev/null; ".to_owned();
        if self.run_as.is_some() {
            setup.push_str(&format!("ulimit -u {} || exit 1; ", self.runner.limits.pids_max));
        }
        let program = self.shell_program.to_string_lossy().into_owned();
        setup.push_str(&format!("exec {program}"));
        let mut command = tokio::process::Command::new(&self.shell_program);
        command
            .arg("-c")
            .arg(setup)
            .current_dir(self.workspace.root())
            .env_clear()
            .env("PATH", SHELL_PATH)
            .env("HOME", self.workspace.root())
            .process_group(0);
        if let Some(uid) = self.run_as {
            command.uid(uid).gid(uid);
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
}

impl Drop for LocalSandbox {
    fn drop(&mut self) {
        if let Some(mut shell) = self.runner.take_shell_now() {
            shell.kill_blocking(Duration::from_millis(CLEANUP_WAIT_MS));
        }
    }
}
