//! The OCI container sandbox driver (runc).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::file_tools::FileTools;
use super::ledger::{Ledger, LedgerState};
use super::oci_bundle::{bundle_config, check_rootfs, write_bundle, Runc, SANDBOX_UID};
use super::shell::{Shell, ShellOutcome, ShellStopper};
use super::workspace::Workspace;
use super::{redact, Limits, Sandbox, SandboxError, Secret, ToolCall, ToolOutput};

/// Tool names reported as metric labels; anything else is labelled `unknown`, so
/// a model cannot create unbounded label values.
const TOOL_NAMES: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];
/// Starts of a shell tried before the call fails with `SandboxError::Crashed`.
const SHELL_START_ATTEMPTS: u32 = 5;
/// How long a dropped sandbox's cleanup waits for `runc run` to exit.
const CLEANUP_WAIT_MS: u64 = 2_000;

/// A session's sandbox: a persistent busybox shell in a runc container over a shared
/// read-only rootfs, plus host-side file tools confined to the same workspace. See the
/// module docs for what is isolated and which limits are enforced.
///
/// Calls run one at a time, in the order they arrive.
pub struct OciSandbox {
    runc: Runc,
    limits: Limits,
    file_tools: FileTools,
    ledger: Ledger,
    /// `root/bundle`, holding the generated `config.json`.
    bundle: PathBuf,
    /// Prefix of the container ids; each shell's container adds a counter to it.
    container_prefix: String,
    shells_started: std::sync::atomic::AtomicU64,
    /// The persistent shell, started on the first `bash` call and after a restart, timeout or crash.
    /// Holding this lock is what serializes calls.
    shell: tokio::sync::Mutex<Option<Shell>>,
    /// Set once by `destroy`; a running `bash` call watches it and stops.
    destroyed: tokio::sync::watch::Sender<bool>,
}

#[derive(Deserialize)]
struct BashInput {
    command: Option<String>,
    #[serde(default)]
    restart: bool,
    timeout_ms: Option<u64>,
}

impl OciSandbox {
    /// Prepares a sandbox whose session directory on the host is `root` (created if
    /// missing): the workspace is `root/workspace` (handed to the container's uid 1000),
    /// the ledger `root/ledger`, the OCI bundle `root/bundle`. `rootfs` is the shared
    /// read-only root filesystem built by `scripts/oci-rootfs.sh`. The container itself
    /// starts lazily on the first `bash` call.
    pub async fn provision(root: PathBuf, limits: Limits, rootfs: PathBuf) -> Result<OciSandbox, SandboxError> {
        let runc = Runc::locate()?;
        check_rootfs(&rootfs)?;
        let workspace_path = root.join("workspace");
        std::fs::create_dir_all(&workspace_path)
            .map_err(|error| SandboxError::Io(format!("creating {}: {error}", workspace_path.display())))?;
        // The container has no user namespace: its uid 1000 is host uid 1000, which must own
        // the workspace (and every file the file tools create) to write to it.
        let workspace = Workspace::new(&workspace_path, Some(SANDBOX_UID))
            .map_err(|error| SandboxError::Io(format!("resolving {}: {error}", workspace_path.display())))?;
        let bundle = root.join("bundle");
        write_bundle(&bundle, &bundle_config(&rootfs, workspace.root(), &limits))
            .map_err(|error| SandboxError::Io(format!("writing the bundle in {}: {error}", bundle.display())))?;
        let ledger = Ledger::open(root.join("ledger"))?;
        tracing::debug!(root = %root.display(), rootfs = %rootfs.display(), "oci sandbox provisioned");
        Ok(OciSandbox {
            runc,
            file_tools: FileTools::new(workspace.clone(), limits.output_bytes_max, limits.wall_clock_ms),
            limits,
            ledger,
            bundle,
            container_prefix: container_prefix(&root),
            shells_started: std::sync::atomic::AtomicU64::new(0),
            shell: tokio::sync::Mutex::new(None),
            destroyed: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Whether runc (from `AGENTD_RUNC`, else PATH) can run a container over `rootfs` on this
    /// machine: starts one that runs `/bin/true`.
    pub fn probe(rootfs: &Path) -> Result<(), SandboxError> {
        Runc::locate()?.probe(rootfs)
    }

    async fn execute_call(&self, call: ToolCall) -> Result<ToolOutput, SandboxError> {
        let mut shell = self.shell.lock().await;
        if *self.destroyed.borrow() {
            return Err(SandboxError::Crashed("the sandbox was destroyed".to_owned()));
        }
        let key = call.idempotency_key.clone();
        if !key.is_empty() {
            let ledger = self.ledger.clone();
            let lookup = key.clone();
            let state = tokio::task::spawn_blocking(move || -> Result<LedgerState, SandboxError> {
                let state = ledger.state(&lookup)?;
                if matches!(state, LedgerState::New) {
                    ledger.begin(&lookup)?;
                }
                Ok(state)
            })
            .await
            .map_err(|error| SandboxError::Io(format!("ledger task failed: {error}")))??;
            match state {
                LedgerState::New => {}
                LedgerState::Recorded(output) => {
                    record_metrics(&call.name, "replayed", Duration::ZERO);
                    return Ok(output);
                }
                LedgerState::Interrupted => {
                    record_metrics(&call.name, "interrupted", Duration::ZERO);
                    let output = ToolOutput::failure(
                        "this tool call was interrupted by a crash before it finished; it was not run again \
                         (it runs at most once per idempotency key), and its effects may be partial",
                    );
                    self.record(key, output.clone()).await?;
                    return Ok(output);
                }
            }
        }
        if let Some(bad) = call.secrets.iter().find(|secret| !Secret::is_valid_name(&secret.name)) {
            return Ok(ToolOutput::failure(format!(
                "secret name {:?} is not a valid environment variable name",
                bad.name
            )));
        }
        let started = Instant::now();
        let result = self.dispatch(&mut shell, &call).await.map(|output| ToolOutput {
            // Scrubbed before the ledger records it or anyone sees it.
            content: redact(&output.content, &call.secrets),
            is_error: output.is_error,
        });
        let outcome = match &result {
            Ok(output) if output.is_error => "tool_error",
            Ok(_) => "ok",
            Err(_) => "sandbox_error",
        };
        record_metrics(&call.name, outcome, started.elapsed());
        let output = match result {
            Ok(output) => output,
            Err(error) => {
                // A sandbox failure happens before the tool runs (the shell did not start),
                // so a retry with this key may run it.
                if !key.is_empty() {
                    let ledger = self.ledger.clone();
                    tokio::task::spawn_blocking(move || ledger.abandon(&key))
                        .await
                        .map_err(|join| SandboxError::Io(format!("ledger task failed: {join}")))??;
                }
                return Err(error);
            }
        };
        if !key.is_empty() {
            self.record(key, output.clone()).await?;
        }
        Ok(output)
    }

    async fn record(&self, key: String, output: ToolOutput) -> Result<(), SandboxError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.record(&key, &output))
            .await
            .map_err(|error| SandboxError::Io(format!("ledger task failed: {error}")))?
    }

    async fn dispatch(&self, shell: &mut Option<Shell>, call: &ToolCall) -> Result<ToolOutput, SandboxError> {
        if call.name == "bash" {
            return self.bash(shell, &call.input_json, &call.secrets).await;
        }
        let file_tools = self.file_tools.clone();
        let (name, input_json) = (call.name.clone(), call.input_json.clone());
        let output = tokio::task::spawn_blocking(move || file_tools.run(&name, &input_json))
            .await
            .map_err(|error| SandboxError::Crashed(format!("file tool task failed: {error}")))?;
        Ok(output.unwrap_or_else(|| {
            ToolOutput::failure(format!(
                "unknown tool {:?}; available tools: {}",
                call.name.chars().take(100).collect::<String>(),
                TOOL_NAMES.join(", ")
            ))
        }))
    }

    async fn bash(
        &self,
        shell: &mut Option<Shell>,
        input_json: &str,
        secrets: &[Secret],
    ) -> Result<ToolOutput, SandboxError> {
        let input: BashInput = match serde_json::from_str(input_json) {
            Ok(input) => input,
            Err(error) => return Ok(ToolOutput::failure(format!("invalid input for bash: {error}"))),
        };
        let timeout_ms = input.timeout_ms.unwrap_or(self.limits.wall_clock_ms);
        if timeout_ms == 0 || timeout_ms > self.limits.wall_clock_ms {
            return Ok(ToolOutput::failure(format!(
                "timeout_ms must be between 1 and {} (the sandbox's wall-clock limit)",
                self.limits.wall_clock_ms
            )));
        }
        if input.command.as_deref().is_some_and(|command| command.contains('\0')) {
            return Ok(ToolOutput::failure("the command contains a NUL byte"));
        }
        if input.restart {
            if let Some(mut old) = shell.take() {
                old.kill().await;
            }
        }
        let command = match input.command {
            Some(command) => command,
            None if input.restart => {
                *shell = Some(self.start_shell().await?);
                return Ok(ToolOutput::success("the shell was restarted"));
            }
            None => return Ok(ToolOutput::failure("bash needs a command (or restart: true)")),
        };
        let mut current = match shell.take() {
            Some(current) => current,
            None => self.start_shell().await?,
        };
        let outcome = current
            .run(
                &command,
                secrets,
                Duration::from_millis(timeout_ms),
                self.limits.output_bytes_max,
                self.destroyed.subscribe(),
            )
            .await?;
        Ok(match outcome {
            ShellOutcome::Finished { output, exit_code } => {
                *shell = Some(current);
                if exit_code == 0 {
                    ToolOutput::success(output)
                } else {
                    ToolOutput::failure(format!("{output}{}[exit code {exit_code}]", separator(&output)))
                }
            }
            ShellOutcome::TimedOut { output } => ToolOutput::failure(format!(
                "{output}{}[timed out after {timeout_ms} ms; the shell was killed and the next call gets a fresh one]",
                separator(&output)
            )),
            ShellOutcome::Destroyed { output } => ToolOutput::failure(format!(
                "{output}{}[the sandbox was destroyed while the command ran]",
                separator(&output)
            )),
            ShellOutcome::ShellExited { output, status } => ToolOutput::failure(format!(
                "{output}{}[the shell exited ({status}); the next call gets a fresh one]",
                separator(&output)
            )),
        })
    }

    /// Starts a fresh shell in a new container. The previous container's processes may
    /// still be dying, so a failed start is retried a few times.
    async fn start_shell(&self) -> Result<Shell, SandboxError> {
        let mut attempt = 0;
        loop {
            match self.spawn_container().await {
                Ok(shell) => return Ok(shell),
                Err(error) if attempt + 1 >= SHELL_START_ATTEMPTS => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, attempt, "sandbox container did not start; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
    }

    /// Runs `runc run` in the foreground: its stdin and stdout are the container shell's.
    /// Every container gets a fresh id, so a dying predecessor never collides with it.
    async fn spawn_container(&self) -> Result<Shell, SandboxError> {
        let number = self.shells_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let container_id = format!("{}-{number}", self.container_prefix);
        let mut command = tokio::process::Command::new(self.runc.program());
        command.args(["run", "--bundle"]).arg(&self.bundle).arg(&container_id).env_clear();
        let stopper = ShellStopper::Runc { program: self.runc.program().to_path_buf(), container_id };
        Shell::spawn(command, stopper).await
    }

    async fn destroy_sandbox(&self) -> Result<(), SandboxError> {
        self.destroyed.send_replace(true);
        let mut shell = self.shell.lock().await;
        if let Some(mut current) = shell.take() {
            current.kill().await;
        }
        Ok(())
    }
}

impl Sandbox for OciSandbox {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        self.execute_call(call).boxed()
    }

    /// Kills every process of the sandbox and deletes its container. The session
    /// directory (workspace and ledger) stays: it belongs to the caller.
    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        self.destroy_sandbox().boxed()
    }
}

impl Drop for OciSandbox {
    fn drop(&mut self) {
        // Kill the container and delete it on a short-lived thread: `runc kill` and
        // `runc delete` are processes to wait for, and Drop cannot await.
        let Some(mut shell) = self.shell.try_lock().ok().and_then(|mut shell| shell.take()) else {
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

fn separator(output: &str) -> &'static str {
    if output.is_empty() || output.ends_with('\n') {
        ""
    } else {
        "\n"
    }
}

/// A container id prefix unique to this sandbox instance: the root's hash plus a random suffix.
fn container_prefix(root: &Path) -> String {
    let digest = Sha256::digest(root.to_string_lossy().as_bytes());
    let prefix: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    format!("agentd-{prefix}-{:08x}", rand::random::<u32>())
}

fn record_metrics(tool: &str, outcome: &'static str, elapsed: Duration) {
    let tool = TOOL_NAMES.iter().find(|known| **known == tool).copied().unwrap_or("unknown");
    metrics::histogram!("agentd_tool_seconds", "tool" => tool).record(elapsed.as_secs_f64());
    metrics::counter!("agentd_tool_calls_total", "tool" => tool, "outcome" => outcome).increment(1);
}
