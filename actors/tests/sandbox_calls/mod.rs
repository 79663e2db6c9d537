//! Calling a sandbox's tools from a test, for every driver.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentd_actors::sandbox::{Sandbox, Secret, ToolCall, ToolOutput};
use serde_json::json;

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// A fresh idempotency key, so each call runs.
pub fn unique_key() -> String {
    format!("key-{}", NEXT_KEY.fetch_add(1, Ordering::SeqCst))
}

/// A `bash` call of `command` with `secrets` in its environment.
pub fn bash_with_secrets(command: &str, key: String, secrets: Vec<Secret>) -> ToolCall {
    ToolCall {
        name: "bash".into(),
        input_json: json!({ "command": command }).to_string(),
        idempotency_key: key,
        secrets,
    }
}

pub async fn call_with_key(sandbox: &impl Sandbox, name: &str, input: serde_json::Value, key: &str) -> ToolOutput {
    sandbox
        .execute(ToolCall {
            name: name.to_owned(),
            input_json: input.to_string(),
            idempotency_key: key.to_owned(),
            secrets: vec![],
        })
        .await
        .expect("the sandbox itself should not fail")
}

pub async fn call(sandbox: &impl Sandbox, name: &str, input: serde_json::Value) -> ToolOutput {
    call_with_key(sandbox, name, input, &unique_key()).await
}

pub async fn bash(sandbox: &impl Sandbox, command: &str) -> ToolOutput {
    call(sandbox, "bash", json!({ "command": command })).await
}

pub fn assert_ok(output: &ToolOutput) {
    assert!(!output.is_error, "expected success, got error: {}", output.content);
}

pub fn assert_error(output: &ToolOutput) {
    assert!(output.is_error, "expected an error, got success: {}", output.content);
}

/// A `bash` call past its `timeout_ms` is cut short with a clear error, and the next call
/// gets a fresh shell (the old one's state is gone); a timeout above the limit is refused.
pub async fn timeout_kills_the_command_and_the_next_call_works(sandbox: &impl Sandbox) {
    assert_ok(&bash(sandbox, "export BEFORE=1").await);
    let started = Instant::now();
    let output = call(sandbox, "bash", json!({ "command": "echo started; sleep 10", "timeout_ms": 300 })).await;
    assert_error(&output);
    assert!(output.content.contains("started"), "{}", output.content);
    assert!(output.content.contains("timed out after 300 ms"), "{}", output.content);
    assert!(started.elapsed() < Duration::from_secs(10), "the sleep was not cut short");
    let output = bash(sandbox, "echo after ${BEFORE:-fresh}").await;
    assert_ok(&output);
    assert_eq!(output.content, "after fresh\n");
    assert_error(&call(sandbox, "bash", json!({ "command": "true", "timeout_ms": 10_000_000 })).await);
}

/// `first` can neither read nor find a file that `second`, whose session directory is
/// `second_root`, wrote to its own workspace.
pub async fn sibling_workspace_is_out_of_reach(first: &impl Sandbox, second: &impl Sandbox, second_root: &Path) {
    assert_ok(&bash(second, "echo sibling-secret > secret.txt").await);
    let sibling_file = second_root.join("workspace/secret.txt");
    assert!(sibling_file.exists());
    let output = bash(first, &format!("cat {}", sibling_file.display())).await;
    assert_error(&output);
    assert!(!output.content.contains("sibling-secret"), "{}", output.content);
    let output = bash(first, "find / -path /proc -prune -o -name secret.txt -print 2>/dev/null; echo searched").await;
    assert_eq!(output.content, "searched\n");
}
