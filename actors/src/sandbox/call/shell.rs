//! The persistent shell of a sandbox (bash inside bwrap, a container's ash, a
//! local shell), spoken to over pipes; each driver starts it its own way.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::capped_output::CappedOutput;
use crate::sandbox::drivers::RuntimeCli;
use crate::sandbox::{SandboxError, Secret};

/// How long a fresh shell may take to answer its first command.
const START_TIMEOUT_MS: u64 = 10_000;
/// Bytes of bwrap's own stderr kept to explain a failed start.
const STDERR_TAIL_BYTES_MAX: usize = 4096;
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Sends signals to the sandbox's processes (no `libc` in this crate: `unsafe` is forbidden).
const KILL_PROGRAM: &str = "/bin/kill";
/// How long bwrap may take to exit after its namespace's init was killed, before it is killed too.
const KILL_WAIT_MS: u64 = 1_000;

/// How one command ended.
#[derive(Debug)]
pub(crate) enum ShellOutcome {
    /// The command ran to completion with this exit status.
    Finished { output: String, exit_code: i32 },
    /// The deadline passed; the shell has been killed.
    TimedOut { output: String },
    /// The shell itself exited (the command ran `exit`, or something killed it).
    ShellExited { output: String, status: String },
    /// The sandbox was destroyed while the command ran; the shell has been killed.
    Destroyed { output: String },
}

/// One shell process in a sandbox. Commands are sent as single lines that cannot
/// break the framing, and each command's end is marked by a random sentinel.
///
/// **Invariant:** after any outcome other than `Finished`, the shell is dead and
/// must be replaced; the caller drops it.
pub(crate) struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes read past the last sentinel (output of background processes, usually empty).
    pending: Vec<u8>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    stopper: ShellStopper,
}

/// How every process of a shell's sandbox is killed.
#[derive(Debug, Clone)]
pub(crate) enum ShellStopper {
    /// The spawned process is bwrap: kill its only child, the PID namespace's init.
    NamespaceInit,
    /// The spawned process is `runc run` or `runsc run` (foreground): `kill <id> KILL`
    /// kills the container's init, which ends its PID namespace (under gVisor, the whole
    /// sandbox); the `run` process then exits. A container still starting has no state
    /// yet, so `kill` misses it: the `run` process is killed after a wait (runsc's
    /// sandbox is attached to it and dies with it).
    Container { runtime: RuntimeCli, container_id: String },
    /// The spawned process is a plain local shell that leads its own process group:
    /// kill the group (processes that left it with `setsid` are not reached).
    ProcessGroup,
}

impl Shell {
    /// Spawns `command`, whose stdin and stdout must reach a shell that speaks this
    /// protocol (bash, or busybox ash: both understand `eval $'...'`), and checks it
    /// answers. `stopper` says how to kill every process of its sandbox.
    pub(crate) async fn spawn(
        mut command: tokio::process::Command,
        stopper: ShellStopper,
    ) -> Result<Shell, SandboxError> {
        let program = command.as_std().get_program().to_string_lossy().into_owned();
        // Spawned from the runtime's thread, not a blocking-pool thread: --die-with-parent
        // fires when the spawning thread exits, and pool threads exit when idle.
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| SandboxError::Crashed(format!("cannot start {program}: {error}")))?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SandboxError::Crashed("the sandbox's pipes were not created".to_owned()));
        };
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&stderr_tail);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok(read) = stderr.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                if let Ok(mut tail) = tail.lock() {
                    tail.extend_from_slice(&buffer[..read]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES_MAX);
                    tail.drain(..excess);
                }
            }
        });
        let mut shell = Shell { child, stdin, stdout, pending: Vec::new(), stderr_tail, stopper };
        let (_never_destroyed, destroyed) = tokio::sync::watch::channel(false);
        match shell.run("true", &[], Duration::from_millis(START_TIMEOUT_MS), 1024, destroyed).await {
            Ok(ShellOutcome::Finished { exit_code: 0, .. }) => Ok(shell),
            Ok(outcome) => {
                let stderr = shell.stderr_tail();
                shell.kill().await;
                Err(SandboxError::Crashed(format!("the sandbox shell did not start ({outcome:?}): {stderr}")))
            }
            Err(error) => {
                shell.kill().await;
                Err(error)
            }
        }
    }

    /// How the spawned process (bwrap, the runtime's `run`, the local shell) ended, if it did.
    pub(crate) fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(format!("cannot be waited for: {error}")),
        }
    }

    fn stderr_tail(&self) -> String {
        self.stderr_tail.lock().map(|tail| String::from_utf8_lossy(&tail).trim().to_owned()).unwrap_or_default()
    }

    /// Runs `command` in the shell's current state, keeping at most `output_bytes_max` of its output.
    pub(crate) async fn run(
        &mut self,
        command: &str,
        secrets: &[Secret],
        timeout: Duration,
        output_bytes_max: usize,
        mut destroyed: tokio::sync::watch::Receiver<bool>,
    ) -> Result<ShellOutcome, SandboxError> {
        let sentinel = format!("__agentd_done_{:032x}__", rand::random::<u128>());
        // `eval` of an ANSI-C quoted string: any command text, even with unbalanced
        // quotes or heredocs, is one line to the shell and cannot swallow the sentinel.
        // stdin is /dev/null so a command cannot read the next command.
        // Secrets are exported for this command only (names are validated by
        // the caller) and unset before the status is reported.
        let exports: String =
            secrets.iter().map(|secret| format!("export {}={}; ", secret.name, ansi_c_quote(&secret.value))).collect();
        let unsets: String = secrets.iter().map(|secret| format!("unset {}; ", secret.name)).collect();
        let line = format!(
            "{exports}eval {} </dev/null 2>&1; __agentd_status=$?; {unsets}echo \"{sentinel} $__agentd_status\"\n",
            ansi_c_quote(command)
        );
        let mut output = CappedOutput::new(output_bytes_max);
        let deadline = tokio::time::Instant::now() + timeout;
        // A shell busy with a background job may not read its stdin: the write is under the deadline too.
        let write = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Ok(self.exited(output, format!("the shell's stdin closed ({error})")).await),
            Err(_elapsed) => {
                self.kill().await;
                return Ok(ShellOutcome::TimedOut { output: output.finish() });
            }
        }
        let sentinel_bytes = sentinel.as_bytes();
        let mut buffer = vec![0u8; READ_CHUNK_BYTES];
        loop {
            if let Some(position) = find(&self.pending, sentinel_bytes) {
                let after = position + sentinel_bytes.len();
                if let Some(newline) = self.pending[after..].iter().position(|byte| *byte == b'\n') {
                    output.push(&self.pending[..position]);
                    let status = String::from_utf8_lossy(&self.pending[after..after + newline]).trim().to_owned();
                    self.pending.drain(..after + newline + 1);
                    let exit_code = status.parse().unwrap_or(-1);
                    return Ok(ShellOutcome::Finished { output: output.finish(), exit_code });
                }
            } else {
                // Keep a possible partial sentinel at the end; everything before it is output.
                let flushable = self.pending.len().saturating_sub(sentinel_bytes.len());
                output.push(&self.pending[..flushable]);
                self.pending.drain(..flushable);
            }
            let read = tokio::select! {
                biased;
                _ = destroyed.wait_for(|destroyed| *destroyed) => None,
                read = tokio::time::timeout_at(deadline, self.stdout.read(&mut buffer)) => Some(read),
            };
            let Some(read) = read else {
                output.push(&std::mem::take(&mut self.pending));
                self.kill().await;
                return Ok(ShellOutcome::Destroyed { output: output.finish() });
            };
            match read {
                Err(_elapsed) => {
                    output.push(&std::mem::take(&mut self.pending));
                    self.kill().await;
                    return Ok(ShellOutcome::TimedOut { output: output.finish() });
                }
                Ok(Ok(0)) => {
                    output.push(&std::mem::take(&mut self.pending));
                    return Ok(self.exited(output, String::new()).await);
                }
                Ok(Ok(read)) => self.pending.extend_from_slice(&buffer[..read]),
                Ok(Err(error)) => {
                    output.push(&std::mem::take(&mut self.pending));
                    return Ok(self.exited(output, format!("reading the shell's output failed ({error})")).await);
                }
            }
        }
    }

    async fn exited(&mut self, output: CappedOutput, reason: String) -> ShellOutcome {
        self.kill().await;
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => "unknown status".to_owned(),
        };
        let status = if reason.is_empty() { status } else { format!("{status}; {reason}") };
        ShellOutcome::ShellExited { output: output.finish(), status }
    }

    /// Kills every process of the sandbox (background ones included) and reaps bwrap.
    ///
    /// The sandbox's PID namespace init (bwrap's child) is killed first: the kernel then
    /// kills every process in the namespace and the dying init reaps them, after which
    /// bwrap reaps init and exits. Killing bwrap first would also end the namespace
    /// (`--die-with-parent`), but its processes would be reparented to the host's init,
    /// and until that reaps them they stay in the sandbox's cgroup.
    pub(crate) async fn kill(&mut self) {
        self.kill_process_group();
        if let Some((program, arguments)) = self.stop_command() {
            let _ = tokio::process::Command::from(helper_command(program, arguments)).status().await;
            if tokio::time::timeout(Duration::from_millis(KILL_WAIT_MS), self.child.wait()).await.is_err() {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        } else {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        if let Some((program, arguments)) = self.cleanup_command() {
            let _ = tokio::process::Command::from(helper_command(program, arguments)).status().await;
        }
        self.remove_leftovers();
    }

    /// `kill` without a runtime, waiting at most `timeout`: for `Drop`.
    pub(crate) fn kill_blocking(&mut self, timeout: Duration) {
        self.kill_process_group();
        if let Some((program, arguments)) = self.stop_command() {
            let _ = helper_command(program, arguments).status();
        }
        let started = std::time::Instant::now();
        let mut bwrap_killed = false;
        while matches!(self.child.try_wait(), Ok(None)) && started.elapsed() < timeout {
            if !bwrap_killed && started.elapsed() >= Duration::from_millis(KILL_WAIT_MS) {
                let _ = self.child.start_kill();
                bwrap_killed = true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some((program, arguments)) = self.cleanup_command() {
            let _ = helper_command(program, arguments).status();
        }
        self.remove_leftovers();
    }

    /// Removes what a container killed before its runtime recorded it leaves behind, which
    /// the runtime's `delete` cannot find (a few directory removals: cheap enough to do inline).
    fn remove_leftovers(&self) {
        if let ShellStopper::Container { runtime, container_id } = &self.stopper {
            runtime.remove_leftovers(container_id);
        }
    }

    /// Kills the process group a local shell leads (its own processes and their children).
    fn kill_process_group(&self) {
        if !matches!(self.stopper, ShellStopper::ProcessGroup) {
            return;
        }
        let leader = self.child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
        if let Some(leader) = leader {
            // The group may be gone already; there is nothing to do then.
            let _ = rustix::process::kill_process_group(leader, rustix::process::Signal::KILL);
        }
    }

    /// What removes the sandbox's leftovers once its processes are dead: a container's
    /// state and cgroups (`run` removes them itself when it exits normally, not when it
    /// was killed).
    fn cleanup_command(&self) -> Option<(PathBuf, Vec<OsString>)> {
        match &self.stopper {
            ShellStopper::NamespaceInit | ShellStopper::ProcessGroup => None,
            ShellStopper::Container { runtime, container_id } => {
                Some((runtime.program().to_path_buf(), runtime.arguments(["delete", "--force", container_id])))
            }
        }
    }

    /// The program and arguments that kill the sandbox's PID namespace init, if it can be found.
    fn stop_command(&self) -> Option<(PathBuf, Vec<OsString>)> {
        match &self.stopper {
            ShellStopper::NamespaceInit => {
                let init = self.namespace_init_pid()?;
                Some((PathBuf::from(KILL_PROGRAM), vec!["-KILL".into(), init.to_string().into()]))
            }
            ShellStopper::Container { runtime, container_id } => {
                Some((runtime.program().to_path_buf(), runtime.arguments(["kill", container_id, "KILL"])))
            }
            ShellStopper::ProcessGroup => None,
        }
    }

    /// The host PID of the sandbox's PID namespace init: bwrap's only child.
    fn namespace_init_pid(&self) -> Option<u32> {
        let bwrap = self.child.id()?;
        let children = std::fs::read_to_string(format!("/proc/{bwrap}/task/{bwrap}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

/// A helper program (`kill`, a runtime's `kill` or `delete`) with a cleared
/// environment and its output discarded.
fn helper_command(program: PathBuf, arguments: Vec<OsString>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.args(arguments).env_clear().stdout(Stdio::null()).stderr(Stdio::null());
    command
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Quotes `text` as bash `$'...'` with every byte that is not printable ASCII
/// (and `'` and `\`) escaped, so the result is one line whatever `text` holds.
fn ansi_c_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 3);
    quoted.push_str("$'");
    for byte in text.bytes() {
        match byte {
            b'\'' => quoted.push_str("\\'"),
            b'\\' => quoted.push_str("\\\\"),
            b' '..=b'~' => quoted.push(char::from(byte)),
            _ => quoted.push_str(&format!("\\x{byte:02x}")),
        }
    }
    quoted.push('\'');
    quoted
}
