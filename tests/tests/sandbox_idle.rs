//! A sandbox no tool call used for `--sandbox-idle-secs` is destroyed (its
//! processes end), and the session's next call gets a fresh one that still
//! sees the workspace.

use std::time::{Duration, Instant};

use agentd_protocol::event::EventPayload;
use agentd_tests::{processes_mentioning, tool_results, Cluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_is_destroyed_and_the_next_call_gets_a_fresh_one() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    let script = json!([
        [{"type": "tool_use", "name": "bash", "input": {"command": "echo kept > note.txt; echo first"}}],
        [{"type": "text", "text": "done"}],
        [{"type": "tool_use", "name": "bash", "input": {"command": "cat note.txt"}}],
        [{"type": "text", "text": "done again"}],
    ]);
    let cluster = Cluster::one_node(
        agentd_tests::agentd_binary!(),
        scripts.path(),
        sandboxes.path(),
        &["--sandbox-idle-secs", "3"],
    )
    .await?;
    let client = cluster.client()?;
    let agent = agentd_tests::scripted_bash_agent(&client, scripts.path(), "idle", script).await?;
    let session = client.create_session_with(Some(agent), None).await?.session_id;
    client.append(session, EventPayload::user_text("first turn")).await?;
    assert_eq!(tool_results(&client, session, 1).await, vec!["first\n".to_string()]);
    let needle = session.to_string();
    assert!(!processes_mentioning(&needle, None).is_empty(), "the sandbox's shell should be running after the call");

    // Unused for longer than the idle timeout: its processes end.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(&needle, None).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the idle sandbox was not destroyed: {:?}",
            processes_mentioning(&needle, None)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The next turn's call gets a fresh sandbox over the same workspace.
    client.append(session, EventPayload::user_text("second turn")).await?;
    assert_eq!(tool_results(&client, session, 2).await, vec!["first\n".to_string(), "kept\n".to_string()]);
    Ok(())
}
