//! The node running a session is SIGKILLed in the middle of a tool call;
//! another node wakes the session and finishes it, and the tool's effect
//! happens exactly once.

use std::path::Path;
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::agent::{AgentSpec, BuiltInTool, PermissionPolicy};
use agentd_protocol::api::{Consistency, SessionInfo};
use agentd_protocol::event::{ContentBlock, Event, EventPayload, StopReason};
use agentd_protocol::ids::{GroupId, SessionId};
use agentd_tests::{leader_views, Cluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_survives_losing_its_node_mid_tool_call_and_the_effect_happens_once() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    std::fs::write(
        scripts.path().join("effect.json"),
        json!([
            [{"type": "tool_use", "name": "bash", "input": {"command": "echo line >> effect.txt; sleep 5; echo finished"}}],
            [{"type": "text", "text": "all done"}],
        ])
        .to_string(),
    )?;
    let scripts_flag = scripts.path().to_str().unwrap().to_string();
    let sandboxes_flag = sandboxes.path().to_str().unwrap().to_string();
    let mut cluster = Cluster::start(
        agentd_tests::agentd_binary!(),
        3,
        &["--shards", "4", "--scripts-dir", &scripts_flag, "--sandbox-dir", &sandboxes_flag],
    )
    .await?;
    let client = cluster.client()?;
    let info = a_session_starts_its_effectful_tool_call(&client).await?;
    let session = info.session_id;
    let effect = sandboxes.path().join(session.to_string()).join("workspace").join("effect.txt");
    the_sessions_node_is_killed_mid_tool_call(&mut cluster, &info, &effect).await?;
    let events = another_node_finishes_the_session(&cluster, session).await?;
    the_turn_ended_with_one_errored_result_and_gapless_events(&events);

    assert_eq!(std::fs::read_to_string(&effect)?.lines().count(), 1, "the tool's effect happened exactly once");
    Ok(())
}

/// An agent whose one tool call has an effect is asked to act (the new session is returned).
async fn a_session_starts_its_effectful_tool_call(client: &Client) -> anyhow::Result<SessionInfo> {
    let spec = AgentSpec {
        name: "effectful".into(),
        model: "scripted:effect.json".into(),
        system: None,
        tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow }],
        custom_tools: vec![],
        max_model_calls_per_turn: 10,
        mcp_servers: vec![],
        mcp_toolsets: vec![],
    };
    let agent = client.put_agent(None, spec).await?;
    let info = client.create_session_with(Some(agent.id), None).await?;
    let session = info.session_id;
    client.append(session, EventPayload::user_text("do the thing once")).await?;
    Ok(info)
}

/// Once the tool has had its effect and is still running, the node leading the session's shard is SIGKILLed.
async fn the_sessions_node_is_killed_mid_tool_call(
    cluster: &mut Cluster,
    info: &SessionInfo,
    effect: &Path,
) -> anyhow::Result<()> {
    let session = info.session_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(effect).map(|text| text.lines().count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the tool never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = cluster.status().await?;
    let leader = leader_views(&status)
        .into_iter()
        .find(|group| group.group == GroupId::Shard(info.shard))
        .and_then(|group| group.leader)
        .expect("the session's shard has a leader");
    eprintln!("killing node {leader}, which runs session {session}");
    cluster.kill(leader)?;
    Ok(())
}

/// Another node takes over the shard, wakes the session and finishes it (its events are returned).
async fn another_node_finishes_the_session(cluster: &Cluster, session: SessionId) -> anyhow::Result<Vec<Event>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = cluster.client()?.read_all(session, Consistency::Leader).await.unwrap_or_default();
        if matches!(events.last().map(|event| &event.payload), Some(EventPayload::SessionStatusIdle { .. })) {
            break events;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> =
                cluster.nodes.iter().map(|node| format!("--- node {}:\n{}", node.id, node.log_tail())).collect();
            panic!("the session was not finished by another node: {events:#?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(events)
}

/// The turn ended normally, the one tool use got one (errored) result, and the events have no gaps.
fn the_turn_ended_with_one_errored_result_and_gapless_events(events: &[Event]) {
    assert_eq!(
        events.last().map(|event| &event.payload),
        Some(&EventPayload::SessionStatusIdle { stop_reason: StopReason::EndTurn })
    );
    assert!(events.iter().any(|event| matches!(&event.payload, EventPayload::AgentMessage { content }
        if content == &vec![ContentBlock::text("all done")])));
    let results: Vec<(String, bool)> = events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::AgentToolResult { content, is_error, .. } => {
                Some((content.iter().map(|ContentBlock::Text { text }| text.clone()).collect(), *is_error))
            }
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "one result for the one tool use: {results:?}");
    assert!(results[0].1, "the interrupted call is reported as an error to the model: {results:?}");
    let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
}
