//! A workspace approval policy reserves `bash` for approvers: an agent whose
//! own policy always allows it still pauses, a member key's confirmation is
//! refused, an approver key's is taken, and the log names who approved under
//! which version of the policy.

use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::agent::{EnvironmentSpec, Network, Resources};
use agentd_protocol::api::Consistency;
use agentd_protocol::event::{Confirmation, ContentBlock, Event, EventPayload, StopReason};
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::tenancy::Role;
use agentd_tests::{scripted_bash_agent, Cluster};
use anyhow::Context;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workspace_policy_makes_bash_wait_for_an_approver() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    let cluster = Cluster::one_node(agentd_tests::agentd_binary!(), scripts.path(), sandboxes.path(), &[]).await?;
    let addr = cluster.nodes[0].addr.clone();
    let policy =
        cli_json(&cluster, &["policy", "set", "--addr", &addr, "--workspace", "team", "--approver-only", "bash"])?;
    assert_eq!(policy["version"], 1, "{policy}");
    let (_, member_key) = cluster.create_api_key("team")?;
    let approver = cli_json(
        &cluster,
        &["apikey", "create", "--addr", &addr, "--workspace", "team", "--name", "alice", "--role", "approver"],
    )?;
    let approver_key = approver["key"].as_str().context("the approver's key")?.to_string();
    let member = Client::for_addrs(cluster.addrs(), None)?.with_api_key(member_key);
    let approver = Client::for_addrs(cluster.addrs(), None)?.with_api_key(approver_key);

    // The agent's own policy always allows bash.
    let turns = json!([
        [{"type": "tool_use", "name": "bash", "input": {"command": "echo approved-run"}}],
        [{"type": "text", "text": "done"}],
    ]);
    let agent = scripted_bash_agent(&member, scripts.path(), "gated", turns).await?;
    let environment = member.put_environment(None, environment()).await?.id;
    let session = member.create_session_with(Some(agent), Some(environment)).await?.session_id;
    member.append(session, EventPayload::user_text("run it")).await?;

    let events = wait(&member, session, |events| waiting_on(events).is_some()).await;
    let tool_use = waiting_on(&events).expect("bash waits");
    let gate = events.iter().find(|event| event.id == tool_use).and_then(|event| match &event.payload {
        EventPayload::AgentGatedToolUse { name, gate, custom: false, .. } if name == "bash" => Some(gate.clone()),
        _ => None,
    });
    let gate = gate.expect("the tool use records the workspace policy's gate");
    assert!(gate.approver_only && gate.policy_version == 1 && gate.rule == "bash", "{gate:?}");

    let allow =
        EventPayload::UserToolConfirmation { tool_use_id: tool_use, result: Confirmation::Allow, deny_message: None };
    let refused = member.append(session, allow.clone()).await.expect_err("a member may not approve");
    assert!(refused.to_string().contains("reserved for approvers"), "{refused}");
    approver.append(session, allow).await?;

    let events = wait(&member, session, |events| {
        matches!(
            events.last().map(|event| &event.payload),
            Some(EventPayload::SessionStatusIdle { stop_reason: StopReason::EndTurn })
        )
    })
    .await;
    the_tool_ran_once_and_the_log_names_the_approver(&events);
    Ok(())
}

/// The tool ran once, and the one decision recorded is alice's, an approver,
/// under version 1 of the policy.
fn the_tool_ran_once_and_the_log_names_the_approver(events: &[Event]) {
    let output: Vec<String> = events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::AgentToolResult { content, .. } => {
                Some(content.iter().map(|ContentBlock::Text { text }| text.clone()).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(output.len(), 1);
    assert!(output[0].contains("approved-run"), "{output:?}");
    let decisions: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::UserToolDecision { decided_by, policy_version, result, .. } => {
                Some((decided_by.clone(), *policy_version, *result))
            }
            _ => None,
        })
        .collect();
    assert_eq!(decisions.len(), 1, "only the approver's decision is in the log: {decisions:?}");
    let (decider, version, result) = &decisions[0];
    let decider = decider.as_ref().expect("the decision names its key");
    assert_eq!(
        (decider.key_name.as_str(), decider.role, *version, *result),
        ("alice", Role::Approver, Some(1), Confirmation::Allow)
    );
}

/// Runs `agentd ARGS --json` as the admin; its output as JSON.
fn cli_json(cluster: &Cluster, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output = cluster.command()?.args(args).arg("--json").output()?;
    anyhow::ensure!(output.status.success(), "agentd {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn environment() -> EnvironmentSpec {
    EnvironmentSpec {
        name: "gated".into(),
        driver: "namespace".into(),
        network: Network::None,
        tool_timeout_ms: 60_000,
        eager_provisioning: false,
        vaults: vec![],
        resources: Resources::default(),
    }
}

fn waiting_on(events: &[Event]) -> Option<EventId> {
    match events.last().map(|event| &event.payload) {
        Some(EventPayload::SessionStatusIdle { stop_reason: StopReason::RequiresAction { event_ids } }) => {
            event_ids.first().copied()
        }
        _ => None,
    }
}

async fn wait(client: &Client, session: SessionId, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let events = client.read_all(session, Consistency::Leader).await.unwrap_or_default();
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "the session did not get there in time: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
