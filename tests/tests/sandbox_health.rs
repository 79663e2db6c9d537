//! A session's sandbox that dies between two tool calls (killed from
//! outside) is found unhealthy when the next call asks for it, destroyed and
//! replaced by a fresh one over the same workspace: the call succeeds.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use agentd_protocol::event::EventPayload;
use agentd_tests::{free_port, processes_mentioning, tool_results, Cluster};
use serde_json::json;

/// The value of a counter in the node's Prometheus text (0 if it was never counted).
fn counter(metrics_port: u16, name: &str) -> anyhow::Result<u64> {
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", metrics_port))?;
    connection.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    connection.read_to_string(&mut body)?;
    let value =
        body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0);
    Ok(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_between_calls_is_replaced_and_the_next_call_succeeds() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    let script = json!([
        [{"type": "tool_use", "name": "bash", "input": {"command": "echo kept > note.txt; echo first"}}],
        [{"type": "text", "text": "done"}],
        [{"type": "tool_use", "name": "bash", "input": {"command": "cat note.txt"}}],
        [{"type": "text", "text": "done again"}],
    ]);
    let metrics_port = free_port();
    let metrics_flag = format!("127.0.0.1:{metrics_port}");
    let cluster = Cluster::one_node(
        agentd_tests::agentd_binary!(),
        scripts.path(),
        sandboxes.path(),
        &["--metrics", &metrics_flag],
    )
    .await?;
    let client = cluster.client()?;
    let agent = agentd_tests::scripted_bash_agent(&client, scripts.path(), "health", script).await?;
    let session = client.create_session_with(Some(agent), None).await?.session_id;
    client.append(session, EventPayload::user_text("first turn")).await?;
    assert_eq!(tool_results(&client, session, 1).await, vec!["first\n".to_string()]);
    let needle = session.to_string();
    let killed = processes_mentioning(&needle, None);
    assert!(!killed.is_empty(), "the sandbox's shell should be running after the call");

    // Killed from outside (an OOM kill, an operator): the node is not told.
    for pid in &killed {
        // A process may have died with its parent already.
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(&needle, None).is_empty() {
        assert!(Instant::now() < deadline, "the sandbox survived SIGKILL: {:?}", processes_mentioning(&needle, None));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counter(metrics_port, "agentd_sandboxes_replaced_total")?, 0);

    // The next turn's call finds the dead sandbox, replaces it, and runs in the same workspace.
    client.append(session, EventPayload::user_text("second turn")).await?;
    assert_eq!(tool_results(&client, session, 2).await, vec!["first\n".to_string(), "kept\n".to_string()]);
    assert_eq!(counter(metrics_port, "agentd_sandboxes_replaced_total")?, 1);
    let fresh = processes_mentioning(&needle, None);
    assert!(!fresh.is_empty() && fresh.iter().all(|pid| !killed.contains(pid)), "no fresh sandbox: {fresh:?}");
    Ok(())
}
