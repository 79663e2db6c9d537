//! The agent loop on a real 3-node cluster: scripted models, tools in
//! bubblewrap sandboxes, confirmations, custom tools, interrupts, the turn
//! cap, the stuck detector and model failures.

use std::path::Path;
use std::time::{Duration, Instant};

use agentd_client::{Client, ClientError};
use agentd_protocol::agent::{AgentSpec, BuiltInTool, CustomTool, Network, PermissionPolicy};
use agentd_protocol::api::Consistency;
use agentd_protocol::event::{Confirmation, ContentBlock, Event, EventPayload, JsonText, StopReason};
use agentd_protocol::ids::{AgentId, EventId, SessionId};
use agentd_protocol::ApiError;
use agentd_tests::Cluster;
use serde_json::json;

fn text_of(content: &[ContentBlock]) -> String {
    content.iter().map(|ContentBlock::Text { text }| text.as_str()).collect::<Vec<_>>().join("")
}

fn agent(model: &str, tools: &[(&str, PermissionPolicy)], custom: &[&str], max_calls: u32) -> AgentSpec {
    AgentSpec {
        name: "test agent".into(),
        model: model.into(),
        system: Some("You are a test.".into()),
        tools: tools.iter().map(|(name, policy)| BuiltInTool { name: (*name).into(), policy: *policy }).collect(),
        custom_tools: custom
            .iter()
            .map(|name| CustomTool {
                name: (*name).into(),
                description: "answered by the client".into(),
                input_schema: JsonText::parse(r#"{"type":"object"}"#).expect("valid schema"),
            })
            .collect(),
        max_model_calls_per_turn: max_calls,
        mcp_servers: vec![],
        mcp_toolsets: vec![],
    }
}

fn write_script(dir: &Path, name: &str, turns: serde_json::Value) -> String {
    std::fs::write(dir.join(name), turns.to_string()).expect("write the script");
    format!("scripted:{name}")
}

fn tool_use(name: &str, input: serde_json::Value) -> serde_json::Value {
    json!({"type": "tool_use", "name": name, "input": input})
}

fn text(text: &str) -> serde_json::Value {
    json!({"type": "text", "text": text})
}

/// Waits until the session's last event is `session.status_idle` and at
/// least `after` events exist; returns every event.
async fn wait_idle(client: &Client, session: SessionId, after: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = client.read_all(session, Consistency::Leader).await.expect("read events");
        if events.len() > after
            && matches!(events.last().map(|event| &event.payload), Some(EventPayload::SessionStatusIdle { .. }))
        {
            return events;
        }
        assert!(Instant::now() < deadline, "session did not go idle; events: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop_reason(events: &[Event]) -> StopReason {
    match &events.last().expect("events").payload {
        EventPayload::SessionStatusIdle { stop_reason } => stop_reason.clone(),
        other => panic!("last event is {other:?}"),
    }
}

fn tool_results(events: &[Event]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::AgentToolResult { content, is_error, .. } => Some((text_of(content), *is_error)),
            _ => None,
        })
        .collect()
}

fn errors(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::SessionError { kind, .. } => Some(kind.clone()),
            _ => None,
        })
        .collect()
}

async fn new_session(client: &Client, spec: AgentSpec) -> SessionId {
    let agent = client.put_agent(None, spec).await.expect("create agent");
    client.create_session_with(Some(agent.id), None).await.expect("create session").session_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_loop_runs_tools_asks_waits_and_stops() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    let scripts_flag = scripts.path().to_str().unwrap().to_string();
    let sandboxes_flag = sandboxes.path().to_str().unwrap().to_string();
    let cluster = Cluster::start(
        agentd_tests::agentd_binary!(),
        3,
        &["--shards", "4", "--scripts-dir", &scripts_flag, "--sandbox-dir", &sandboxes_flag],
    )
    .await?;
    let client = cluster.client()?;
    a_full_turn_writes_reads_and_answers(&client, scripts.path()).await?;
    oci_environments_run_tools_in_containers(&client, scripts.path()).await?;
    always_ask_pauses_for_a_confirmation(&client, scripts.path()).await?;
    a_custom_tool_round_trips_through_the_client(&client, scripts.path()).await?;
    an_interrupt_stops_the_turn_after_the_running_tool(&client, scripts.path()).await?;
    the_turn_cap_and_the_stuck_detector_end_turns(&client, scripts.path()).await?;
    let (session, seen) = a_failing_model_reports_errors_and_stays_usable(&client).await?;
    a_dead_lettered_session_is_retried_where_it_failed(&client, scripts.path(), session, seen).await?;
    bad_input_is_refused(&client, session).await
}

/// A full turn: a file is written, read back with bash, and the model answers.
async fn a_full_turn_writes_reads_and_answers(client: &Client, scripts: &Path) -> anyhow::Result<()> {
    let allow = PermissionPolicy::AlwaysAllow;
    let model = write_script(
        scripts,
        "full.json",
        json!([
            [text("Writing."), tool_use("write", json!({"file_path": "notes.txt", "content": "hello agent\n"}))],
            [tool_use("bash", json!({"command": "cat notes.txt"}))],
            [text("The file says hello.")],
        ]),
    );
    let session = new_session(client, agent(&model, &[("write", allow), ("bash", allow)], &[], 10)).await;
    client.append(session, EventPayload::user_text("write and read a note")).await?;
    let events = wait_idle(client, session, 1).await;
    assert_eq!(stop_reason(&events), StopReason::EndTurn);
    let results = tool_results(&events);
    assert_eq!(results.len(), 2, "{events:#?}");
    assert!(!results[0].1 && results[1] == ("hello agent\n".to_string(), false), "{results:?}");
    assert!(events.iter().any(|event| matches!(&event.payload, EventPayload::AgentMessage { content } if text_of(content) == "The file says hello.")));
    assert_eq!(client.get_session(session).await?.status, agentd_protocol::api::SessionStatus::Idle);
    Ok(())
}

/// The same agent in OCI environments: tools run in a runc container, and in a gVisor one.
async fn oci_environments_run_tools_in_containers(client: &Client, scripts: &Path) -> anyhow::Result<()> {
    let allow = PermissionPolicy::AlwaysAllow;
    for driver in ["oci", "gvisor"] {
        let environment = client
            .put_environment(
                None,
                agentd_protocol::agent::EnvironmentSpec {
                    name: driver.into(),
                    driver: driver.into(),
                    network: Network::None,
                    tool_timeout_ms: 10_000,
                    eager_provisioning: false,
                    vaults: vec![],
                    resources: Default::default(),
                },
            )
            .await?;
        let model = write_script(
            scripts,
            &format!("{driver}.json"),
            json!([[tool_use("bash", json!({"command": "echo in a container; id -u; uname -r"}))], [text("ok")]]),
        );
        let agent_id = client.put_agent(None, agent(&model, &[("bash", allow)], &[], 10)).await?.id;
        let session = client.create_session_with(Some(agent_id), Some(environment.id)).await?.session_id;
        client.append(session, EventPayload::user_text("where am I?")).await?;
        let events = wait_idle(client, session, 1).await;
        // gVisor's kernel says it is Linux 4.4.0, whatever the host runs.
        let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
        let kernel = if driver == "gvisor" { "4.4.0\n" } else { host_kernel.as_str() };
        let expected = format!("in a container\n1000\n{kernel}");
        assert_eq!(tool_results(&events), vec![(expected, false)], "{driver}: {events:#?}");
    }
    Ok(())
}

/// always_ask: the turn pauses; allow runs the tool, deny returns an error to the model.
async fn always_ask_pauses_for_a_confirmation(client: &Client, scripts: &Path) -> anyhow::Result<()> {
    let ask = PermissionPolicy::AlwaysAsk;
    let model = write_script(
        scripts,
        "ask.json",
        json!([[tool_use("bash", json!({"command": "echo ran"}))], [text("after the tool")]]),
    );
    for allowed in [true, false] {
        let session = new_session(client, agent(&model, &[("bash", ask)], &[], 10)).await;
        client.append(session, EventPayload::user_text("run it")).await?;
        let events = wait_idle(client, session, 1).await;
        let StopReason::RequiresAction { event_ids } = stop_reason(&events) else { panic!("{events:#?}") };
        assert_eq!(event_ids.len(), 1);
        assert_eq!(client.get_session(session).await?.pending_actions, event_ids);
        let (result, deny_message) =
            if allowed { (Confirmation::Allow, None) } else { (Confirmation::Deny, Some("not today".to_string())) };
        let confirmation = EventPayload::UserToolConfirmation { tool_use_id: event_ids[0], result, deny_message };
        client.append(session, confirmation.clone()).await?;
        let events = wait_idle(client, session, events.len()).await;
        assert_eq!(stop_reason(&events), StopReason::EndTurn);
        let results = tool_results(&events);
        if allowed {
            assert_eq!(results, vec![("ran\n".to_string(), false)]);
        } else {
            assert!(results.len() == 1 && results[0].1 && results[0].0.contains("not today"), "{results:?}");
        }
        // Answering again answers nothing.
        let again = client.append(session, confirmation).await;
        assert!(matches!(again, Err(ClientError::Api(ApiError::InvalidRequest { .. }))), "{again:?}");
    }
    Ok(())
}

/// A custom tool round trip: the turn waits for the client's result, then ends.
async fn a_custom_tool_round_trips_through_the_client(client: &Client, scripts: &Path) -> anyhow::Result<()> {
    let model =
        write_script(scripts, "custom.json", json!([[tool_use("lookup", json!({"key": "answer"}))], [text("got it")]]));
    let session = new_session(client, agent(&model, &[], &["lookup"], 10)).await;
    client.append(session, EventPayload::user_text("look it up")).await?;
    let events = wait_idle(client, session, 1).await;
    let StopReason::RequiresAction { event_ids } = stop_reason(&events) else { panic!("{events:#?}") };
    assert!(events
        .iter()
        .any(|event| event.id == event_ids[0] && matches!(event.payload, EventPayload::AgentCustomToolUse { .. })));
    let result = EventPayload::UserCustomToolResult {
        custom_tool_use_id: event_ids[0],
        content: vec![ContentBlock::text("42")],
        is_error: false,
    };
    client.append(session, result).await?;
    let events = wait_idle(client, session, events.len()).await;
    assert_eq!(stop_reason(&events), StopReason::EndTurn);
    assert!(events
        .iter()
        .any(|event| matches!(&event.payload, EventPayload::AgentMessage { content } if text_of(content) == "got it")));
    Ok(())
}

/// Interrupt: the turn stops at the next step (after the running tool).
async fn an_interrupt_stops_the_turn_after_the_running_tool(client: &Client, scripts: &Path) -> anyhow::Result<()> {
    let allow = PermissionPolicy::AlwaysAllow;
    let model = write_script(
        scripts,
        "slow.json",
        json!([[tool_use("bash", json!({"command": "sleep 2; echo slept"}))], [text("never said")]]),
    );
    let session = new_session(client, agent(&model, &[("bash", allow)], &[], 10)).await;
    client.append(session, EventPayload::user_text("take your time")).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .read_all(session, Consistency::Leader)
        .await?
        .iter()
        .any(|event| matches!(event.payload, EventPayload::AgentToolUse { .. }))
    {
        assert!(Instant::now() < deadline, "the tool never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.append(session, EventPayload::UserInterrupt).await?;
    let events = wait_idle(client, session, 1).await;
    assert!(!events.iter().any(
        |event| matches!(&event.payload, EventPayload::AgentMessage { content } if text_of(content) == "never said")
    ));
    Ok(())
}

/// The turn cap and the stuck detector each end a turn with their own session.error.
async fn the_turn_cap_and_the_stuck_detector_end_turns(client: &Client, scripts: &Path) -> anyhow::Result<()> {
    let allow = PermissionPolicy::AlwaysAllow;
    let counting = write_script(
        scripts,
        "counting.json",
        json!([
            [tool_use("bash", json!({"command": "echo 1"}))],
            [tool_use("bash", json!({"command": "echo 2"}))],
            [tool_use("bash", json!({"command": "echo 3"}))],
            [text("done counting")],
        ]),
    );
    let session = new_session(client, agent(&counting, &[("bash", allow)], &[], 2)).await;
    client.append(session, EventPayload::user_text("count")).await?;
    let events = wait_idle(client, session, 1).await;
    assert_eq!(errors(&events), vec!["max_model_calls".to_string()]);
    let looping = write_script(
        scripts,
        "looping.json",
        json!([
            [tool_use("bash", json!({"command": "true"}))],
            [tool_use("bash", json!({"command": "true"}))],
            [tool_use("bash", json!({"command": "true"}))],
            [tool_use("bash", json!({"command": "true"}))],
        ]),
    );
    let session = new_session(client, agent(&looping, &[("bash", allow)], &[], 10)).await;
    client.append(session, EventPayload::user_text("loop")).await?;
    let events = wait_idle(client, session, 1).await;
    assert_eq!(errors(&events), vec!["stuck".to_string()]);
    Ok(())
}

/// A model that fails: a clear session.error, and the session stays usable (returns it and its event count).
async fn a_failing_model_reports_errors_and_stays_usable(client: &Client) -> anyhow::Result<(SessionId, usize)> {
    let session = new_session(client, agent("scripted:missing.json", &[], &[], 10)).await;
    client.append(session, EventPayload::user_text("hello?")).await?;
    let events = wait_idle(client, session, 1).await;
    assert_eq!(stop_reason(&events), StopReason::RetriesExhausted);
    assert_eq!(errors(&events).len(), 1);
    client.append(session, EventPayload::user_text("still there?")).await?;
    let events = wait_idle(client, session, events.len()).await;
    assert_eq!(errors(&events).len(), 2);
    Ok((session, events.len()))
}

/// The session is dead-lettered; once the model works again a retry takes the turn up where it failed.
async fn a_dead_lettered_session_is_retried_where_it_failed(
    client: &Client,
    scripts: &Path,
    session: SessionId,
    seen: usize,
) -> anyhow::Result<()> {
    assert_eq!(client.get_session(session).await?.stop_reason, Some(StopReason::RetriesExhausted));
    write_script(scripts, "missing.json", json!([[text("back again")]]));
    client.retry_session(session).await?;
    let events = wait_idle(client, session, seen).await;
    assert_eq!(stop_reason(&events), StopReason::EndTurn);
    assert!(events.iter().any(|event| event.payload == EventPayload::SessionStatusRescheduled));
    assert!(events.iter().any(
        |event| matches!(&event.payload, EventPayload::AgentMessage { content } if text_of(content) == "back again")
    ));
    let not_dead = client.retry_session(session).await;
    assert!(matches!(not_dead, Err(ClientError::Api(ApiError::InvalidRequest { .. }))), "{not_dead:?}");
    Ok(())
}

/// Bad input is refused: an unknown agent, a forged agent event.
async fn bad_input_is_refused(client: &Client, session: SessionId) -> anyhow::Result<()> {
    let unknown = client.create_session_with(Some(AgentId::from_random(12345)), None).await;
    assert!(matches!(unknown, Err(ClientError::Api(ApiError::NotFound { .. }))), "{unknown:?}");
    let forged = client.append_with_id(session, EventId::from_random(9), EventPayload::SessionStatusTerminated).await;
    assert!(matches!(forged, Err(ClientError::Api(ApiError::InvalidRequest { .. }))), "{forged:?}");
    Ok(())
}
