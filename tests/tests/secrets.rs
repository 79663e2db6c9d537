//! A vault secret reaches the tool that needs it and never appears in a
//! stored event, the sandbox ledger or any node's data files, even when the
//! tool prints it — also when a node that joined later runs the session.

use std::path::Path;
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::agent::{AgentSpec, BuiltInTool, EnvironmentSpec, Network, PermissionPolicy};
use agentd_protocol::api::Consistency;
use agentd_protocol::event::{ContentBlock, Event, EventPayload};
use agentd_protocol::ids::SessionId;
use agentd_tests::Cluster;
use serde_json::json;

const SECRET: &str = "tok-9f8e7d6c5b4a-very-secret";

fn files_containing(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vault_secrets_are_injected_and_never_stored() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    std::fs::write(
        scripts.path().join("secret.json"),
        json!([
            [{"type": "tool_use", "name": "bash", "input": {"command": "echo \"token is $API_TOKEN\"; echo \"$API_TOKEN\" > t.txt"}}],
            [{"type": "tool_use", "name": "read", "input": {"file_path": "t.txt"}}],
            [{"type": "text", "text": "used the token"}],
        ])
        .to_string(),
    )?;
    let scripts_flag = scripts.path().to_str().unwrap_or_default().to_string();
    let sandboxes_flag = sandboxes.path().to_str().unwrap_or_default().to_string();
    let mut cluster = Cluster::start(
        agentd_tests::agentd_binary!(),
        3,
        &["--shards", "4", "--scripts-dir", &scripts_flag, "--sandbox-dir", &sandboxes_flag],
    )
    .await?;
    let client = cluster.client()?;
    let session = a_session_whose_environment_has_the_secret(&client).await?;
    let events = a_node_that_joined_later_runs_the_session(&mut cluster, session).await?;
    the_tool_had_the_secret_and_no_event_holds_it(&events, sandboxes.path(), session)?;

    // No node stored or logged it in the clear: not in RocksDB, not in a
    // log, not in the ledger.
    let leaks = files_containing(cluster.dir.path(), SECRET.as_bytes());
    assert!(leaks.is_empty(), "the cluster stores or logs the secret in {leaks:?}");
    let ledger = sandboxes.path().join(session.to_string()).join("ledger");
    assert!(files_containing(&ledger, SECRET.as_bytes()).is_empty(), "the ledger stores the secret");
    Ok(())
}

/// A vault holds the secret and a session's environment uses it (the session is returned).
async fn a_session_whose_environment_has_the_secret(client: &Client) -> anyhow::Result<SessionId> {
    let vault = client.put_secret(None, "ci".into(), "API_TOKEN".into(), SECRET.into()).await?;
    assert_eq!(vault.secret_names, vec!["API_TOKEN".to_string()]);
    let environment = client
        .put_environment(
            None,
            EnvironmentSpec {
                name: "with-token".into(),
                driver: "namespace".into(),
                network: Network::None,
                tool_timeout_ms: 10_000,
                eager_provisioning: false,
                vaults: vec![vault.id],
                resources: Default::default(),
            },
        )
        .await?;
    let agent = client
        .put_agent(
            None,
            AgentSpec {
                name: "uses a token".into(),
                model: "scripted:secret.json".into(),
                system: None,
                tools: ["bash", "read"]
                    .iter()
                    .map(|name| BuiltInTool { name: (*name).into(), policy: PermissionPolicy::AlwaysAllow })
                    .collect(),
                custom_tools: vec![],
                max_model_calls_per_turn: 10,
                mcp_servers: vec![],
                mcp_toolsets: vec![],
            },
        )
        .await?;
    Ok(client.create_session_with(Some(agent.id), Some(environment.id)).await?.session_id)
}

/// The session runs to idle on a node that joined the cluster (node 1, which created the secrets key, is gone).
async fn a_node_that_joined_later_runs_the_session(
    cluster: &mut Cluster,
    session: SessionId,
) -> anyhow::Result<Vec<Event>> {
    cluster.kill(1)?;
    let client = cluster.client()?;
    client.append(session, EventPayload::user_text("use the token")).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = client.read_all(session, Consistency::Leader).await.unwrap_or_default();
        if matches!(events.last().map(|event| &event.payload), Some(EventPayload::SessionStatusIdle { .. })) {
            break events;
        }
        assert!(Instant::now() < deadline, "the session did not finish: {events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(events)
}

/// The tools saw the secret (it reached the workspace) but their results and every stored event hold only redactions.
fn the_tool_had_the_secret_and_no_event_holds_it(
    events: &[Event],
    sandboxes: &Path,
    session: SessionId,
) -> anyhow::Result<()> {
    let results: Vec<String> = events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::AgentToolResult { content, .. } => {
                Some(content.iter().map(|ContentBlock::Text { text }| text.clone()).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 2, "{events:#?}");
    assert!(results[0].contains("token is [REDACTED:API_TOKEN]"), "{results:?}");
    assert!(results[1].contains("[REDACTED:API_TOKEN]"), "{results:?}");
    for event in events {
        assert!(!format!("{event:?}").contains(SECRET), "a stored event holds the secret: {event:?}");
    }
    // The tool really had the value: it wrote it into the workspace.
    let written = sandboxes.join(session.to_string()).join("workspace").join("t.txt");
    assert_eq!(std::fs::read_to_string(written)?.trim(), SECRET);
    Ok(())
}
