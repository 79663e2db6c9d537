//! A sandbox no tool call used for `--sandbox-idle-secs` is destroyed (its
//! processes end), and the session's next call gets a fresh one that still
//! sees the workspace.

use std::time::{Duration, Instant};

use agentd_protocol::agent::{AgentSpec, BuiltInTool, PermissionPolicy};
use agentd_protocol::api::Consistency;
use agentd_protocol::event::{ContentBlock, EventPayload};
use agentd_protocol::ids::SessionId;
use agentd_tests::Cluster;
use serde_json::json;

/// Processes whose command line mentions `needle` (the sandbox's bwrap
/// names the session's directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    agentd_tests::processes_mentioning(needle, None)
}

async fn wait_for_results(client: &agentd_node::Client, session: SessionId, results: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = client.read_all(session, Consistency::Leader).await.expect("read events");
        let outputs: Vec<String> = events
            .iter()
            .filter_map(|event| match &event.payload {
                EventPayload::AgentToolResult { content, .. } => {
                    Some(content.iter().map(|ContentBlock::Text { text }| text.as_str()).collect())
                }
                _ => None,
            })
            .collect();
        let idle = matches!(events.last().map(|event| &event.payload), Some(EventPayload::SessionStatusIdle { .. }));
        if outputs.len() >= results && idle {
            return outputs;
        }
        assert!(Instant::now() < deadline, "no {results} tool results in time: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    std::fs::write(scripts.path().join("idle.json"), script.to_string())?;
    let scripts_flag = scripts.path().display().to_string();
    let sandboxes_flag = sandboxes.path().display().to_string();
    let cluster = Cluster::start(
        agentd_tests::agentd_binary!(),
        1,
        &[
            "--shards",
            "2",
            "--scripts-dir",
            &scripts_flag,
            "--sandbox-dir",
            &sandboxes_flag,
            "--sandbox-idle-secs",
            "3",
        ],
    )
    .await?;
    let client = cluster.client()?;
    let spec = AgentSpec {
        name: "idle".into(),
        model: "scripted:idle.json".into(),
        system: None,
        tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow }],
        custom_tools: Vec::new(),
        max_model_calls_per_turn: 5,
    };
    let agent = client.put_agent(None, spec).await?;
    let session = client.create_session_with(Some(agent.id), None).await?.session_id;
    client.append(session, EventPayload::user_text("first turn")).await?;
    assert_eq!(wait_for_results(&client, session, 1).await, vec!["first\n".to_string()]);
    let needle = session.to_string();
    assert!(!processes_mentioning(&needle).is_empty(), "the sandbox's shell should be running after the call");

    // Unused for longer than the idle timeout: its processes end.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(&needle).is_empty() {
        assert!(Instant::now() < deadline, "the idle sandbox was not destroyed: {:?}", processes_mentioning(&needle));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The next turn's call gets a fresh sandbox over the same workspace.
    client.append(session, EventPayload::user_text("second turn")).await?;
    assert_eq!(wait_for_results(&client, session, 2).await, vec!["first\n".to_string(), "kept\n".to_string()]);
    Ok(())
}
