//! MCP through the runtime, against a real server built with the official
//! Python MCP SDK (`tests/mcp/server.py`: streamable HTTP on loopback, a
//! bearer token required). The node lists and calls the server's tools with
//! the token of the session's vault; `always_ask` pauses for a confirmation;
//! a wrong token and a stopped server are `session.error`s the session
//! survives; a node SIGKILLed mid-call does not send the call again.

use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::agent::{
    AgentSpec, EnvironmentSpec, McpServer, McpToolConfig, McpToolset, Network, PermissionPolicy, Resources,
};
use agentd_protocol::api::{
    ClientRequest, Consistency, CredentialChange, McpCredentialChange, OAuthChange, OAuthRefreshChange,
};
use agentd_protocol::event::{Confirmation, ContentBlock, Event, EventPayload, StopReason};
use agentd_protocol::ids::{AgentId, CredentialId, EnvironmentId, GroupId, SessionId, VaultId};
use agentd_protocol::resource::{
    ResourceBody, ResourceId, ResourceVersion, SessionCreate, TokenEndpointAuth, VaultBody,
};
use agentd_tests::{leader_views, Cluster, McpTestServer};
use serde_json::json;

const TOKEN: &str = "mcp-test-token-5f1c9a";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_lists_and_calls_mcp_tools_with_its_vaults_token() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    let mut server = McpTestServer::start(TOKEN)?;
    let cluster = Cluster::one_node(agentd_tests::agentd_binary!(), scripts.path(), sandboxes.path(), &[]).await?;
    let client = cluster.client()?;
    write_script(
        scripts.path(),
        "calc",
        json!([
            [{"type": "tool_use", "name": "mcp__calc__add", "input": {"a": 2, "b": 3}}],
            [{"type": "tool_use", "name": "mcp__calc__whoami", "input": {}}],
            [{"type": "text", "text": "done"}],
        ]),
    )?;
    let environment = environment_for(&client, &server).await?;
    let agent = calc_agent(&client, &server, "calc").await?;

    // The right token: tools are listed, `add` runs at once, `whoami` asks.
    let good = session(&client, agent, environment, vault_with_token(&client, &server, TOKEN).await?).await?;
    client.append(good, EventPayload::user_text("add and ask")).await?;
    let events = wait_idle(&client, good, |events| requires_action(events).is_some()).await;
    assert_eq!(mcp_results(&events), vec![("5".to_string(), false)]);
    assert!(server.calls().contains(&"rpc tools/list".to_string()), "the node listed the tools: {:?}", server.calls());
    let asked = requires_action(&events).expect("whoami waits for a confirmation");
    assert!(events.iter().any(|event| event.id == asked
        && matches!(&event.payload, EventPayload::AgentMcpToolUse { name, mcp_server_name, .. }
            if name == "whoami" && mcp_server_name == "calc")));
    assert!(!server.calls().contains(&"whoami".to_string()), "an always_ask tool is not called before it is allowed");
    let confirmation =
        EventPayload::UserToolConfirmation { tool_use_id: asked, result: Confirmation::Allow, deny_message: None };
    client.append(good, confirmation).await?;
    let events = wait_idle(&client, good, ended).await;
    let results = mcp_results(&events);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[1].0.contains("[REDACTED:") && !results[1].0.contains(TOKEN), "redacted: {results:?}");
    assert!(mcp_errors(&events).is_empty(), "{:?}", mcp_errors(&events));
    let stored = format!("{events:?}");
    assert!(!stored.contains(TOKEN), "the token appears in no event");

    // A wrong token: the server refuses it; the session reports it and goes on.
    let wrong = "wrong-token-7c1e";
    let refused = session(&client, agent, environment, vault_with_token(&client, &server, wrong).await?).await?;
    client.append(refused, EventPayload::user_text("add")).await?;
    let events = wait_idle(&client, refused, |events| events.last().is_some_and(is_idle)).await;
    assert!(mcp_errors(&events)
        .iter()
        .any(|(kind, server)| kind == "mcp_authentication_failed_error" && server == "calc"));
    assert!(mcp_results(&events).first().is_some_and(|(_, is_error)| *is_error), "{:?}", mcp_results(&events));
    assert!(!format!("{events:?}").contains(wrong), "the server echoed the token; the log holds none of it");

    // A stopped server: the connection fails; the same session stays usable.
    server.stop();
    client.append(good, EventPayload::user_text("again")).await?;
    let events =
        wait_idle(&client, good, |events| ended(events) && events.iter().filter(|e| is_idle(e)).count() >= 3).await;
    assert!(mcp_errors(&events).iter().any(|(kind, server)| kind == "mcp_connection_failed_error" && server == "calc"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_mcp_oauth_token_is_refreshed_and_the_call_goes_through() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    let server = McpTestServer::start_with(TOKEN, &["--refresh-token", "refresh-me"])?;
    let cluster = Cluster::one_node(agentd_tests::agentd_binary!(), scripts.path(), sandboxes.path(), &[]).await?;
    let client = cluster.client()?;
    write_script(
        scripts.path(),
        "oauth",
        json!([[{"type": "tool_use", "name": "mcp__calc__add", "input": {"a": 20, "b": 22}}], [{"type": "text", "text": "ok"}]]),
    )?;
    let environment = environment_for(&client, &server).await?;
    let agent = calc_agent(&client, &server, "oauth").await?;
    // The stored access token is one the server no longer takes.
    let oauth = OAuthChange {
        expires_at_ms: None,
        refresh: Some(OAuthRefreshChange {
            client_id: "agentd-test".into(),
            token_endpoint: server.token_url(),
            endpoint_auth: TokenEndpointAuth::None,
            client_secret: None,
            refresh_token: "refresh-me".into(),
            scope: None,
            resource: None,
        }),
    };
    let vault = vault_with(&client, &server, "stale-access-token", Some(oauth)).await?;
    let session = session(&client, agent, environment, vault).await?;
    client.append(session, EventPayload::user_text("add")).await?;
    let events = wait_idle(&client, session, ended).await;
    assert_eq!(mcp_results(&events), vec![("42".to_string(), false)]);
    assert!(mcp_errors(&events).is_empty(), "{:?}", mcp_errors(&events));
    assert_eq!(server.calls().iter().filter(|line| *line == "token refreshed").count(), 1, "{:?}", server.calls());
    assert!(!format!("{events:?}").contains(TOKEN), "the refreshed token appears in no event");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mcp_call_cut_off_by_sigkill_is_reported_and_never_sent_again() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let server = McpTestServer::start(TOKEN)?;
    let scripts_flag = scripts.path().to_str().unwrap().to_string();
    let mut cluster =
        Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "4", "--scripts-dir", &scripts_flag]).await?;
    let client = cluster.client()?;
    write_script(
        scripts.path(),
        "slow",
        json!([
            [{"type": "tool_use", "name": "mcp__calc__slow", "input": {"label": "once", "seconds": 8}}],
            [{"type": "text", "text": "after"}],
        ]),
    )?;
    let environment = environment_for(&client, &server).await?;
    let agent = calc_agent(&client, &server, "slow").await?;
    let session = session(&client, agent, environment, vault_with_token(&client, &server, TOKEN).await?).await?;
    client.append(session, EventPayload::user_text("slowly")).await?;

    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.calls().contains(&"slow once".to_string()) {
        assert!(Instant::now() < deadline, "the call never reached the server: {:?}", server.calls());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shard = client.get_session(session).await?.shard;
    let status = cluster.status().await?;
    let leader = leader_views(&status)
        .into_iter()
        .find(|group| group.group == GroupId::Shard(shard))
        .and_then(|group| group.leader)
        .expect("the session's shard has a leader");
    cluster.kill(leader)?;

    let survivors: Vec<String> =
        cluster.nodes.iter().filter(|node| node.id != leader).map(|node| node.addr.clone()).collect();
    let events = wait_idle(&cluster.client_of(survivors)?, session, ended).await;
    let results = mcp_results(&events);
    assert_eq!(results.len(), 1, "one result for the one call: {results:?}");
    assert!(results[0].1 && results[0].0.contains("interrupted"), "reported as interrupted: {results:?}");
    let sent = server.calls().iter().filter(|line| *line == "slow once").count();
    assert_eq!(sent, 1, "the call reached the server once: {:?}", server.calls());
    let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    Ok(())
}

fn write_script(dir: &std::path::Path, name: &str, turns: serde_json::Value) -> anyhow::Result<()> {
    Ok(std::fs::write(dir.join(format!("{name}.json")), turns.to_string())?)
}

/// An environment whose network reaches only the MCP server.
async fn environment_for(client: &Client, server: &McpTestServer) -> anyhow::Result<EnvironmentId> {
    let spec = EnvironmentSpec {
        name: "mcp".into(),
        driver: "namespace".into(),
        network: Network::Allowlist(vec![format!("127.0.0.1:{}", server.port)]),
        tool_timeout_ms: 60_000,
        eager_provisioning: false,
        vaults: vec![],
        resources: Resources::default(),
    };
    Ok(client.put_environment(None, spec).await?.id)
}

/// An agent playing `scripts/NAME.json` with MCP server `calc`: every tool
/// always allowed but `whoami`, which asks.
async fn calc_agent(client: &Client, server: &McpTestServer, script: &str) -> anyhow::Result<AgentId> {
    let spec = AgentSpec {
        name: script.into(),
        model: format!("scripted:{script}.json"),
        system: None,
        tools: vec![],
        custom_tools: vec![],
        max_model_calls_per_turn: 10,
        mcp_servers: vec![McpServer { name: "calc".into(), url: server.url() }],
        mcp_toolsets: vec![McpToolset {
            server_name: "calc".into(),
            default_enabled: true,
            default_policy: PermissionPolicy::AlwaysAllow,
            configs: vec![McpToolConfig { name: "whoami".into(), enabled: true, policy: PermissionPolicy::AlwaysAsk }],
        }],
    };
    Ok(client.put_agent(None, spec).await?.id)
}

/// A vault holding a `static_bearer` credential for the server.
async fn vault_with_token(client: &Client, server: &McpTestServer, token: &str) -> anyhow::Result<VaultId> {
    vault_with(client, server, token, None).await
}

/// A vault holding an MCP credential for the server: `static_bearer`, or
/// `mcp_oauth` with `oauth`.
async fn vault_with(
    client: &Client,
    server: &McpTestServer,
    token: &str,
    oauth: Option<OAuthChange>,
) -> anyhow::Result<VaultId> {
    let vault_id = VaultId::from_random(rand::random());
    let body = ResourceBody::Vault(VaultBody { display_name: "mcp".into(), credentials: vec![] });
    let version = ResourceVersion { body, description: None, metadata: vec![], created_at_ms: 0 };
    let request = ClientRequest::PutResource { id: ResourceId::Vault(vault_id), version, expected_revision: Some(0) };
    client.call(request).await?.into_resource()?;
    let change = CredentialChange {
        display_name: None,
        metadata: vec![],
        secret_name: None,
        secret_value: Some(token.into()),
        allowed_hosts: None,
        archive: false,
        mcp: Some(McpCredentialChange { server_url: server.url(), oauth }),
    };
    let credential_id = CredentialId::from_random(rand::random());
    client.call(ClientRequest::PutCredential { vault_id, credential_id, change }).await?.into_resource()?;
    Ok(vault_id)
}

async fn session(
    client: &Client,
    agent: AgentId,
    environment: EnvironmentId,
    vault: VaultId,
) -> anyhow::Result<SessionId> {
    let session_id = SessionId::from_random(rand::random());
    let create = SessionCreate {
        agent: Some(agent),
        environment: Some(environment),
        vault_ids: vec![vault],
        ..SessionCreate::default()
    };
    client.call(ClientRequest::CreateSessionIn { session_id, create }).await?.into_session_view()?;
    Ok(session_id)
}

fn is_idle(event: &Event) -> bool {
    matches!(event.payload, EventPayload::SessionStatusIdle { .. })
}

fn ended(events: &[Event]) -> bool {
    matches!(
        events.last().map(|event| &event.payload),
        Some(EventPayload::SessionStatusIdle { stop_reason: StopReason::EndTurn })
    )
}

fn requires_action(events: &[Event]) -> Option<agentd_protocol::ids::EventId> {
    match events.last().map(|event| &event.payload) {
        Some(EventPayload::SessionStatusIdle { stop_reason: StopReason::RequiresAction { event_ids } }) => {
            event_ids.first().copied()
        }
        _ => None,
    }
}

/// The session's events once `done` holds for them; panics after 90 s.
async fn wait_idle(client: &Client, session: SessionId, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
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

fn mcp_results(events: &[Event]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::AgentMcpToolResult { content, is_error, .. } => {
                Some((content.iter().map(|ContentBlock::Text { text }| text.clone()).collect(), *is_error))
            }
            _ => None,
        })
        .collect()
}

fn mcp_errors(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|event| match &event.payload {
            EventPayload::SessionMcpError { kind, mcp_server_name, .. } => {
                Some((kind.clone(), mcp_server_name.clone()))
            }
            _ => None,
        })
        .collect()
}
