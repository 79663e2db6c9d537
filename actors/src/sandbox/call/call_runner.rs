//! What every sandbox driver does the same way: calls run one at a time
//! against the idempotency ledger, `bash` in a persistent shell, file tools
//! on the host inside the workspace, secrets exported per call and scrubbed
//! from every output. A driver only says how to start its shell.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::file_tools::FileTools;
use super::ledger::{Claim, Ledger};
use super::shell::{Shell, ShellOutcome};
use super::workspace::Workspace;
use crate::sandbox::{redact, Limits, SandboxError, Secret, ToolCall, ToolOutput};

/// Tool names reported as metric labels; anything else is labelled `unknown`, so
/// a model cannot create unbounded label values.
const TOOL_NAMES: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];
/// Starts of a shell tried before the call fails with `SandboxError::Crashed`.
const SHELL_START_ATTEMPTS: u32 = 5;

/// How a driver starts a fresh shell (one attempt; the runner retries).
pub(crate) trait ShellLauncher: Send + Sync {
    fn launch(&self) -> BoxFuture<'_, Result<Shell, SandboxError>>;
}

#[derive(Deserialize)]
struct BashInput {
    command: Option<String>,
    #[serde(default)]
    restart: bool,
    timeout_ms: Option<u64>,
}

/// The driver-independent half of a sandbox.
pub(crate) struct CallRunner {
    pub(crate) limits: Limits,
    file_tools: FileTools,
    ledger: Ledger,
    /// The persistent shell, started on the first `bash` call and after a restart, timeout or crash.
    /// Holding this lock is what serializes calls.
    shell: tokio::sync::Mutex<Option<Shell>>,
    /// Set once by `stop`; a running `bash` call watches it and stops.
    destroyed: tokio::sync::watch::Sender<bool>,
}

impl CallRunner {
    pub(crate) fn new(limits: Limits, workspace: Workspace, ledger: Ledger) -> CallRunner {
        CallRunner {
            file_tools: FileTools::new(workspace, limits.output_bytes_max, limits.wall_clock_ms),
            limits,
            ledger,
            shell: tokio::sync::Mutex::new(None),
            destroyed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Marks the sandbox destroyed (a running call stops) and kills the shell.
    pub(crate) async fn stop(&self) {
        self.destroyed.send_replace(true);
        if let Some(mut current) = self.shell.lock().await.take() {
            current.kill().await;
        }
    }

    /// Whether another call can run: the sandbox was not destroyed and its shell, if one
    /// was started, has not exited (one not started yet starts with the next `bash` call).
    /// A running call holds the shell, which is then alive as far as anyone can tell.
    pub(crate) fn health(&self) -> Result<(), SandboxError> {
        if *self.destroyed.borrow() {
            return Err(SandboxError::Crashed("the sandbox was destroyed".to_owned()));
        }
        let Ok(mut shell) = self.shell.try_lock() else { return Ok(()) };
        match shell.as_mut().and_then(Shell::exit_status) {
            Some(status) => Err(SandboxError::Crashed(format!("the sandbox's shell exited ({status})"))),
            None => Ok(()),
        }
    }

    /// The shell, if no call holds it: for cleanup when the sandbox is dropped.
    pub(crate) fn take_shell_now(&self) -> Option<Shell> {
        self.shell.try_lock().ok().and_then(|mut shell| shell.take())
    }

    /// Runs one call: the ledger first (a repeated key is answered from it),
    /// then the tool, then the scrubbed output is recorded and returned.
    pub(crate) async fn execute(
        &self,
        launcher: &dyn ShellLauncher,
        call: ToolCall,
    ) -> Result<ToolOutput, SandboxError> {
        let mut shell = self.shell.lock().await;
        if *self.destroyed.borrow() {
            return Err(SandboxError::Crashed("the sandbox was destroyed".to_owned()));
        }
        let key = call.idempotency_key.clone();
        if !key.is_empty() {
            if let Claim::Answered { output, interrupted } = self.ledger.claim(&key).await? {
                record_metrics(&call.name, if interrupted { "interrupted" } else { "replayed" }, Duration::ZERO);
                return Ok(output);
            }
        }
        if let Some(bad) = call.secrets.iter().find(|secret| !Secret::is_valid_name(&secret.name)) {
            return Ok(ToolOutput::failure(format!(
                "secret name {:?} is not a valid environment variable name",
                bad.name
            )));
        }
        let started = Instant::now();
        let result = self.dispatch(launcher, &mut shell, &call).await.map(|output| ToolOutput {
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
                    self.ledger.abandon_async(&key).await?;
                }
                return Err(error);
            }
        };
        if !key.is_empty() {
            self.ledger.record_async(&key, &output).await?;
        }
        Ok(output)
    }

    async fn dispatch(
        &self,
        launcher: &dyn ShellLauncher,
        shell: &mut Option<Shell>,
        call: &ToolCall,
    ) -> Result<ToolOutput, SandboxError> {
        if call.name == "bash" {
            return self.bash(launcher, shell, &call.input_json, &call.secrets).await;
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
        launcher: &dyn ShellLauncher,
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
                *shell = Some(self.start_shell(launcher).await?);
                return Ok(ToolOutput::success("the shell was restarted"));
            }
            None => return Ok(ToolOutput::failure("bash needs a command (or restart: true)")),
        };
        let mut current = match shell.take() {
            Some(current) => current,
            None => self.start_shell(launcher).await?,
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

    /// Starts a fresh shell. The previous shell's processes may still be dying,
    /// so a failed start is retried a few times.
    async fn start_shell(&self, launcher: &dyn ShellLauncher) -> Result<Shell, SandboxError> {
        let mut attempt = 0;
        loop {
            match launcher.launch().await {
                Ok(shell) => return Ok(shell),
                Err(error) if attempt + 1 >= SHELL_START_ATTEMPTS => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, attempt, "sandbox shell did not start; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
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

/// A name unique to one sandbox instance (cgroup or container id prefix):
/// the session root's hash plus a random suffix.
pub(crate) fn instance_name(root: &Path) -> String {
    let digest = Sha256::digest(root.to_string_lossy().as_bytes());
    let prefix: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    format!("agentd-{prefix}-{:08x}", rand::random::<u32>())
}

fn record_metrics(tool: &str, outcome: &'static str, elapsed: Duration) {
    let tool = TOOL_NAMES.iter().find(|known| **known == tool).copied().unwrap_or("unknown");
    metrics::histogram!("agentd_tool_seconds", "tool" => tool).record(elapsed.as_secs_f64());
    metrics::counter!("agentd_tool_calls_total", "tool" => tool, "outcome" => outcome).increment(1);
}
