//! `agentd session terminate` ends a session for good: a tool call running in
//! its sandbox is stopped, the sandbox's processes end, its directory
//! (workspace, ledger) is removed, and the session takes no more events.

use std::time::{Duration, Instant};

use agentd_protocol::api::{Consistency, SessionStatus};
use agentd_protocol::event::EventPayload;
use agentd_tests::{processes_mentioning, Cluster};
use serde_json::json;

fn terminate(cluster: &Cluster, addr: &str, session: &str) -> String {
    let output = cluster
        .command()
        .expect("the admin key")
        .args(["session", "terminate", "--addr", addr, session])
        .output()
        .expect("run agentd");
    assert!(output.status.success(), "terminate failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_session_stops_its_tool_and_removes_its_sandbox() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    let script = json!([
        [{"type": "tool_use", "name": "bash", "input": {"command": "echo kept > note.txt; sleep 600"}}],
        [{"type": "text", "text": "done"}],
    ]);
    let cluster = Cluster::one_node(agentd_tests::agentd_binary!(), scripts.path(), sandboxes.path(), &[]).await?;
    let client = cluster.client()?;
    let agent = agentd_tests::scripted_bash_agent(&client, scripts.path(), "long", script).await?;
    let session = client.create_session_with(Some(agent), None).await?.session_id;
    client.append(session, EventPayload::user_text("start")).await?;

    // The tool is running: its file is written and its sandbox's processes are up.
    let directory = sandboxes.path().join(session.to_string());
    let needle = session.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !directory.join("workspace/note.txt").exists() {
        assert!(Instant::now() < deadline, "the tool did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!processes_mentioning(&needle, None).is_empty(), "the sandbox runs the tool");

    let addr = cluster.addrs()[0].clone();
    let seq = terminate(&cluster, &addr, &needle);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(&needle, None).is_empty() || directory.exists() {
        assert!(
            Instant::now() < deadline,
            "the terminated session's sandbox lives on: processes {:?}, directory exists: {}",
            processes_mentioning(&needle, None),
            directory.exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let info = client.get_session(session).await?;
    assert_eq!(info.status, SessionStatus::Terminated);
    let events = client.read_all(session, Consistency::Leader).await?;
    let last = events.last().expect("events");
    assert_eq!(last.payload, EventPayload::SessionStatusTerminated, "{events:#?}");
    assert_eq!(last.seq.to_string(), seq);
    // The stopped tool's result came too late: nothing follows the termination.
    assert!(!events.iter().any(|event| matches!(event.payload, EventPayload::AgentToolResult { .. })), "{events:#?}");
    let refused = client.append(session, EventPayload::user_text("more")).await;
    assert!(refused.is_err_and(|error| error.to_string().contains("terminated")));
    // Terminating again answers the same event.
    assert_eq!(terminate(&cluster, &addr, &needle), seq);
    Ok(())
}
