//! The real `agentd hands` agent, called over QUIC with per-sandbox
//! certificates: every tool, the idempotency ledger, refused clients, and bad
//! frames answered with typed errors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentd_actors::sandbox::{Sandbox, SandboxError, ToolCall, ToolOutput};
use agentd_node::hands::HandsClient;
use agentd_protocol::hands::{HandsCall, HandsError, HandsRequest, HandsResponse};
use agentd_protocol::limits::HANDS_FRAME_BYTES_MAX;
use agentd_protocol::{frame, HANDS_ALPN};
use agentd_transport::tls::{client_config, ClusterCa, HandsIdentities, HandsIdentity, ServerTrust};

struct Agent {
    child: Child,
    addr: std::net::SocketAddr,
    identities: HandsIdentities,
    ca: ClusterCa,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `agentd hands` with fresh certificates and waits for it to listen.
fn start_agent(extra: &[&str]) -> anyhow::Result<Agent> {
    let dir = tempfile::Builder::new().prefix("agentd-hands-").tempdir()?;
    let ca = ClusterCa::generate()?;
    let identities = ca.issue_hands("test-sandbox")?;
    let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let ca_path = write("ca.pem", &ca.cert_pem())?;
    let cert_path = write("agent.pem", &identities.agent.cert_pem)?;
    let key_path = write("agent.key", &identities.agent.key_pem)?;
    let mut child = Command::new(agentd_tests::agentd_binary!())
        .arg("hands")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--workspace")
        .arg(dir.path().join("workspace"))
        .arg("--ledger")
        .arg(dir.path().join("ledger"))
        .arg("--ca")
        .arg(&ca_path)
        .arg("--cert")
        .arg(&cert_path)
        .arg("--key")
        .arg(&key_path)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("agentd hands listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected first line {line:?}"))?
        .parse()?;
    Ok(Agent { child, addr, identities, ca, dir })
}

fn call(name: &str, input: serde_json::Value, key: &str) -> ToolCall {
    ToolCall { name: name.into(), input_json: input.to_string(), idempotency_key: key.into(), secrets: Vec::new() }
}

async fn run(client: &HandsClient, name: &str, input: serde_json::Value) -> ToolOutput {
    client.execute(call(name, input, "")).await.expect("the sandbox answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_runs_over_quic_and_repeated_keys_replay() -> anyhow::Result<()> {
    let agent = start_agent(&["--output-bytes-max", "2000", "--wall-clock-ms", "20000"])?;
    let client = HandsClient::new(agent.addr, &agent.identities, 20_000)?;
    client.ping().await?;

    let written =
        run(&client, "write", serde_json::json!({"file_path": "notes/a.txt", "content": "alpha\nbeta\n"})).await;
    assert!(!written.is_error, "{written:?}");
    assert!(agent.dir.path().join("workspace/notes/a.txt").exists(), "write lands in the agent's workspace");
    let edited = run(
        &client,
        "edit",
        serde_json::json!({"file_path": "/workspace/notes/a.txt", "old_string": "beta", "new_string": "gamma"}),
    )
    .await;
    assert!(!edited.is_error, "{edited:?}");
    let read = run(&client, "read", serde_json::json!({"file_path": "notes/a.txt"})).await;
    assert!(read.content.contains("alpha") && read.content.contains("gamma"), "{read:?}");
    assert!(!read.content.contains("beta"), "{read:?}");
    let globbed = run(&client, "glob", serde_json::json!({"pattern": "**/*.txt"})).await;
    assert!(globbed.content.contains("notes/a.txt"), "{globbed:?}");
    let grepped = run(&client, "grep", serde_json::json!({"pattern": "gam+a"})).await;
    assert!(grepped.content.contains("a.txt") && grepped.content.contains("gamma"), "{grepped:?}");
    let escaped = run(&client, "read", serde_json::json!({"file_path": "../ledger"})).await;
    assert!(escaped.is_error, "paths outside the workspace are refused: {escaped:?}");

    // bash is persistent and works in the workspace.
    let exported = run(&client, "bash", serde_json::json!({"command": "export GREETING=hi; cd notes"})).await;
    assert!(!exported.is_error, "{exported:?}");
    let shell = run(&client, "bash", serde_json::json!({"command": "echo $GREETING; cat a.txt | wc -l"})).await;
    assert_eq!(shell.content.split_whitespace().collect::<Vec<_>>(), ["hi", "2"], "{shell:?}");
    let failed = run(&client, "bash", serde_json::json!({"command": "exit 3"})).await;
    assert!(failed.is_error && failed.content.contains("exit"), "{failed:?}");

    // Wall-clock limit and output cap.
    let slow = run(&client, "bash", serde_json::json!({"command": "sleep 30", "timeout_ms": 500})).await;
    assert!(slow.is_error && slow.content.contains("timed out"), "{slow:?}");
    let flood = run(&client, "bash", serde_json::json!({"command": "yes flood | head -c 1000000"})).await;
    assert!(flood.content.len() < 3000, "output is capped: {} bytes", flood.content.len());
    assert!(flood.content.contains("flood"), "{}", &flood.content[..100.min(flood.content.len())]);

    // Secrets reach bash and never its output.
    let mut with_secret = call("bash", serde_json::json!({"command": "echo token=$API_TOKEN"}), "");
    with_secret.secrets =
        vec![agentd_actors::sandbox::Secret { name: "API_TOKEN".into(), value: "s3cr3t-value".into() }];
    let scrubbed = client.execute(with_secret).await?;
    assert!(scrubbed.content.contains("token=[REDACTED:API_TOKEN]"), "{scrubbed:?}");

    // A repeated idempotency key returns the recorded output without running again,
    // also over a new connection (the ledger is the agent's).
    let append = serde_json::json!({"command": "echo x >> $HOME/once.txt; wc -l < $HOME/once.txt"});
    let first = client.execute(call("bash", append.clone(), "key-once")).await?;
    assert_eq!(first.content.trim(), "1", "{first:?}");
    let again = client.execute(call("bash", append.clone(), "key-once")).await?;
    assert_eq!(again, first);
    let other_client = HandsClient::new(agent.addr, &agent.identities, 20_000)?;
    let third = other_client.execute(call("bash", append.clone(), "key-once")).await?;
    assert_eq!(third, first);
    let content = std::fs::read_to_string(agent.dir.path().join("workspace/once.txt"))?;
    assert_eq!(content, "x\n", "the command ran exactly once");
    let fresh = client.execute(call("bash", append, "key-twice")).await?;
    assert_eq!(fresh.content.trim(), "2", "a new key runs: {fresh:?}");

    client.destroy().await?;
    assert!(matches!(
        client.execute(call("bash", serde_json::json!({"command": "true"}), "")).await,
        Err(SandboxError::Crashed(_))
    ));
    Ok(())
}

/// One raw call with the given client config: the answer, or the error that ended it.
async fn raw_call(
    config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    server_name: &str,
    bytes: &[u8],
) -> anyhow::Result<Option<HandsResponse>> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let connection = endpoint.connect(addr, server_name)?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        agentd_transport::wire::read_frame(&mut recv, HANDS_FRAME_BYTES_MAX),
    )
    .await??;
    Ok(answer)
}

fn ping_frame() -> Vec<u8> {
    frame::encode_frame(&HandsRequest::new(HandsCall::Ping), HANDS_FRAME_BYTES_MAX).expect("encode a ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_ca_issued_client_certificate_are_refused() -> anyhow::Result<()> {
    let agent = start_agent(&[])?;
    let name = agent.identities.server_name.clone();

    let with_node_cert =
        raw_call(agent.identities.node.node_client_config()?, agent.addr, &name, &ping_frame()).await?;
    assert_eq!(with_node_cert, Some(HandsResponse::Pong), "the node's certificate is accepted");

    let anonymous = client_config(ServerTrust::Ca(agent.ca.cert_pem()), HANDS_ALPN)?;
    let refused = raw_call(anonymous, agent.addr, &name, &ping_frame()).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");

    let other_ca = ClusterCa::generate()?;
    let foreign = other_ca.issue_hands("test-sandbox")?;
    let foreign_client = HandsIdentity { ca_cert_pem: agent.ca.cert_pem(), ..foreign.node.clone() };
    let refused = raw_call(foreign_client.node_client_config()?, agent.addr, &name, &ping_frame()).await;
    assert!(refused.is_err(), "a client certificate from another CA: {refused:?}");

    // The agent's own certificate is for server auth only: a sandbox cannot use it to call another.
    let agent_as_client = agent.identities.agent.clone();
    let refused = raw_call(agent_as_client.node_client_config()?, agent.addr, &name, &ping_frame()).await;
    assert!(refused.is_err(), "a server-only certificate as a client certificate: {refused:?}");

    // The node checks the agent too: an agent certificate for another sandbox is refused.
    let wrong_name =
        raw_call(agent.identities.node.node_client_config()?, agent.addr, "other.hands.agentd.cluster", &ping_frame())
            .await;
    assert!(wrong_name.is_err(), "the agent's certificate names another sandbox: {wrong_name:?}");

    let still = HandsClient::new(agent.addr, &agent.identities, 10_000)?;
    still.ping().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_typed_errors_and_the_agent_keeps_serving() -> anyhow::Result<()> {
    let agent = start_agent(&[])?;
    let name = agent.identities.server_name.clone();
    let config = || agent.identities.node.node_client_config();

    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 5]);
    let answer = raw_call(config()?, agent.addr, &name, &garbage).await?;
    assert!(matches!(answer, Some(HandsResponse::Error(HandsError::Malformed { .. }))), "{answer:?}");

    let huge = ((HANDS_FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    let answer = raw_call(config()?, agent.addr, &name, &huge).await?;
    assert!(matches!(answer, Some(HandsResponse::Error(HandsError::PayloadTooLarge { .. }))), "{answer:?}");

    let mut truncated = ping_frame();
    truncated.pop();
    let answer = raw_call(config()?, agent.addr, &name, &truncated).await?;
    assert!(matches!(answer, Some(HandsResponse::Error(HandsError::Malformed { .. }))), "{answer:?}");

    let future = HandsRequest { version: 99, body: HandsCall::Ping };
    let answer = raw_call(config()?, agent.addr, &name, &frame::encode_frame(&future, HANDS_FRAME_BYTES_MAX)?).await?;
    assert_eq!(answer, Some(HandsResponse::Error(HandsError::UnsupportedVersion { requested: 99, supported: 1 })));

    let client = HandsClient::new(agent.addr, &agent.identities, 10_000)?;
    let output = client.execute(call("bash", serde_json::json!({"command": "echo still here"}), "")).await?;
    assert_eq!(output.content.trim(), "still here");
    assert!(Path::new(&agent.dir.path().join("ledger")).is_dir());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_a_ping_that_fails_once_the_agent_is_gone() -> anyhow::Result<()> {
    let mut agent = start_agent(&[])?;
    let client = HandsClient::new(agent.addr, &agent.identities, 10_000)?;
    client.health().await?;
    let output = run(&client, "bash", serde_json::json!({"command": "echo up"})).await;
    assert_eq!(output.content, "up\n");
    client.health().await?;

    // The agent dies (its VM was killed, say): the ping gets no answer, within the health timeout.
    agent.child.kill()?;
    agent.child.wait()?;
    let started = std::time::Instant::now();
    let error = client.health().await.expect_err("a dead agent is unhealthy");
    assert!(matches!(error, SandboxError::Crashed(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_millis(agentd_protocol::limits::SANDBOX_HEALTH_TIMEOUT_MS + 5_000),
        "the health check was not bounded"
    );

    client.destroy().await?;
    let error = client.health().await.expect_err("a destroyed sandbox is unhealthy");
    assert!(matches!(&error, SandboxError::Crashed(message) if message.contains("destroyed")), "{error:?}");
    Ok(())
}
