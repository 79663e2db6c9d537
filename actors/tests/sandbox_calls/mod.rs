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

/// A host HTTP server on `ip` answering every request with `hello`; counts connections.
pub fn serve_hello(ip: &str) -> (u16, std::sync::Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).expect("a loopback listener");
    let port = listener.local_addr().expect("the listener's address").port();
    let connections = std::sync::Arc::new(AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    (port, connections)
}

/// Two host servers on 127.0.0.2, a loopback address that a sandbox's own
/// loopback does not answer on (and that `NO_PROXY` does not exempt), and an
/// allowlist that names only the first.
pub struct EgressTargets {
    pub listed: (u16, std::sync::Arc<AtomicU64>),
    pub unlisted: (u16, std::sync::Arc<AtomicU64>),
}

impl EgressTargets {
    pub fn start() -> EgressTargets {
        EgressTargets { listed: serve_hello("127.0.0.2"), unlisted: serve_hello("127.0.0.2") }
    }

    pub fn network(&self) -> agentd_actors::sandbox::Network {
        agentd_actors::sandbox::Network::Allowlist(vec![format!("127.0.0.2:{}", self.listed.0)])
    }
}

/// With an allowlist, the proxy (named by `HTTPS_PROXY`) reaches the listed host, by
/// `CONNECT` and by an absolute URL; it refuses the unlisted one with the reason and
/// never connects to it; and nothing connects without the proxy.
/// `to_proxy(request)` is a shell command that sends `request` (a printf format) to
/// `127.0.0.1:3128` and prints the answer; `direct(port)` one that connects straight
/// to 127.0.0.2:`port` and says `connected`.
pub async fn egress_reaches_only_listed_hosts(
    sandbox: &impl Sandbox,
    targets: &EgressTargets,
    to_proxy: impl Fn(&str) -> String,
    direct: impl Fn(u16) -> String,
) {
    let (listed, listed_connections) = (targets.listed.0, &targets.listed.1);
    let (unlisted, unlisted_connections) = (targets.unlisted.0, &targets.unlisted.1);
    let output = bash(sandbox, "echo $HTTPS_PROXY $http_proxy").await;
    assert_eq!(output.content, "http://127.0.0.1:3128 http://127.0.0.1:3128\n");

    let tunnel =
        bash(sandbox, &to_proxy(&format!("CONNECT 127.0.0.2:{listed} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.0\\r\\n\\r\\n")))
            .await;
    assert!(tunnel.content.starts_with("HTTP/1.1 200 Connection established"), "{}", tunnel.content);
    assert!(tunnel.content.ends_with("hello"), "{}", tunnel.content);
    let forwarded = bash(sandbox, &to_proxy(&format!("GET http://127.0.0.2:{listed}/ HTTP/1.0\\r\\n\\r\\n"))).await;
    assert!(forwarded.content.starts_with("HTTP/1.0 200 OK"), "{}", forwarded.content);
    assert_eq!(listed_connections.load(Ordering::SeqCst), 2);

    for request in [
        format!("CONNECT 127.0.0.2:{unlisted} HTTP/1.1\\r\\n\\r\\n"),
        format!("GET http://127.0.0.2:{unlisted}/ HTTP/1.0\\r\\n\\r\\n"),
        format!("CONNECT localhost:{listed} HTTP/1.1\\r\\n\\r\\n"),
    ] {
        let refused = bash(sandbox, &to_proxy(&request)).await;
        assert!(refused.content.starts_with("HTTP/1.1 403 Forbidden"), "{request}: {}", refused.content);
        assert!(refused.content.contains("is not in this environment's allowlist"), "{}", refused.content);
    }
    assert_eq!(unlisted_connections.load(Ordering::SeqCst), 0, "the proxy connected to an unlisted host");

    for port in [listed, unlisted] {
        let output = bash(sandbox, &direct(port)).await;
        assert!(!output.content.contains("connected"), "a direct connection left the sandbox: {}", output.content);
    }
    assert_eq!(listed_connections.load(Ordering::SeqCst), 2, "a direct connection reached the listed host");
}
