//! The local sandbox (what `agentd hands` serves inside a VM): a timeout kills
//! the shell's whole process group, and `run_as` bounds the shell user's processes.

#![allow(clippy::disallowed_methods, reason = "tests of real sandboxes on the host, timed by the wall clock")]

use std::path::Path;
use std::time::{Duration, Instant};

use agentd_actors::sandbox::{Limits, LocalSandbox, LocalShell, Sandbox, SandboxError, ToolCall, ToolOutput};
use serde_json::json;

async fn bash(sandbox: &LocalSandbox, command: &str, timeout_ms: u64) -> ToolOutput {
    sandbox
        .execute(ToolCall {
            name: "bash".into(),
            input_json: json!({ "command": command, "timeout_ms": timeout_ms }).to_string(),
            idempotency_key: String::new(),
            secrets: vec![],
        })
        .await
        .expect("the sandbox answers")
}

fn is_alive(pid: u32) -> bool {
    // A killed process stays a zombie until its parent (the test process or init) reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// A local bash sandbox over `dir/workspace`, its ledger in `dir/ledger`.
fn open_bash(dir: &Path) -> LocalSandbox {
    let shell = LocalShell { program: "/bin/bash".into(), run_as: None, network_namespace: None };
    LocalSandbox::open(&dir.join("workspace"), &dir.join("ledger"), shell, Limits::default()).expect("open the sandbox")
}

#[tokio::test]
async fn a_timeout_kills_background_processes_too() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = open_bash(dir.path());
    let started = bash(&sandbox, "sleep 300 & echo $!", 10_000).await;
    let pid: u32 = started.content.trim().parse().expect("a pid");
    assert!(is_alive(pid));
    let slow = bash(&sandbox, "sleep 300", 300).await;
    assert!(slow.is_error && slow.content.contains("timed out"), "{slow:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!is_alive(pid), "the background sleep was killed with its shell");
    let fresh = bash(&sandbox, "pwd", 10_000).await;
    assert_eq!(Path::new(fresh.content.trim()), dir.path().join("workspace").canonicalize().unwrap());
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn health_reports_a_killed_shell_and_a_destroyed_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = open_bash(dir.path());
    sandbox.health().await.expect("a sandbox whose shell has not started is healthy");
    let shell = bash(&sandbox, "echo $$", 10_000).await;
    let pid: u32 = shell.content.trim().parse().expect("a pid");
    sandbox.health().await.expect("a sandbox whose shell runs is healthy");

    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill the shell");
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match sandbox.health().await {
            Err(error) => break error,
            Ok(()) => assert!(Instant::now() < deadline, "the killed shell still counts as healthy"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(&error, SandboxError::Crashed(message) if message.contains("shell exited")), "{error:?}");

    sandbox.destroy().await.unwrap();
    let error = sandbox.health().await.unwrap_err();
    assert!(matches!(&error, SandboxError::Crashed(message) if message.contains("destroyed")), "{error:?}");
}

#[tokio::test]
async fn run_as_limits_the_shell_users_processes() {
    if !rustix_is_root() {
        eprintln!("skipped: run_as needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The uid must traverse to the workspace.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let limits = Limits { pids_max: 20, ..Limits::default() };
    let sandbox = LocalSandbox::open(
        &dir.path().join("workspace"),
        &dir.path().join("ledger"),
        LocalShell { program: "/bin/bash".into(), run_as: Some(64_123), network_namespace: None },
        limits,
    )
    .unwrap();
    let identity = bash(&sandbox, "id -u; ulimit -u; touch mine && stat -c %u mine", 10_000).await;
    assert_eq!(identity.content.split_whitespace().collect::<Vec<_>>(), ["64123", "20", "64123"], "{identity:?}");
    sandbox.destroy().await.unwrap();
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            status.lines().any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
