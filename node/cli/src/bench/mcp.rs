//! `agentd bench mcp`: what calling an MCP tool through the runtime costs
//! over calling the same server directly, in one run against one server.
//!
//! Through the runtime, one session's scripted model calls `add` `calls`
//! times in one turn; a client following the session times each call from
//! the arrival of its `agent.mcp_tool_use` to the arrival of its
//! `agent.mcp_tool_result` (the start record's and the result's commits,
//! the credential lookup, the HTTP exchange and redaction; both events reach
//! the client the same way). Directly, this process's MCP client (the one
//! the node uses) calls `add` `calls` times in one MCP session.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentd_actors::mcp::McpClient;
use agentd_actors::model::HttpClient;
use agentd_protocol::agent::{AgentSpec, EnvironmentSpec, McpServer, McpToolset, Network, PermissionPolicy};
use agentd_protocol::api::{ClientRequest, CredentialChange, McpCredentialChange};
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{CredentialId, SessionId, VaultId};
use agentd_protocol::resource::{ResourceBody, ResourceId, ResourceVersion, SessionCreate, VaultBody};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use super::percentile_ms;
use crate::commands::Target;

#[derive(Debug, Clone)]
pub struct McpBench {
    pub target: Target,
    /// The MCP server (`tests/mcp/server.py` serves `add`).
    pub url: String,
    pub token: String,
    /// The nodes' `--scripts-dir`, where the bench writes its model's script.
    pub scripts_dir: PathBuf,
    pub calls: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct McpReport {
    pub calls: u32,
    pub runtime_p50_ms: f64,
    pub runtime_p99_ms: f64,
    pub direct_p50_ms: f64,
    pub direct_p99_ms: f64,
    pub overhead_p50_ms: f64,
    pub overhead_p99_ms: f64,
}

pub async fn run(bench: McpBench) -> Result<McpReport> {
    if bench.calls == 0 || bench.calls >= agentd_protocol::limits::MODEL_CALLS_PER_TURN_MAX {
        bail!("--calls is 1 to {}", agentd_protocol::limits::MODEL_CALLS_PER_TURN_MAX - 1);
    }
    let direct = direct_calls(&bench).await?;
    let runtime = runtime_calls(&bench).await?;
    let (runtime_p50_ms, runtime_p99_ms) = (percentile_ms(&runtime, 0.50), percentile_ms(&runtime, 0.99));
    let (direct_p50_ms, direct_p99_ms) = (percentile_ms(&direct, 0.50), percentile_ms(&direct, 0.99));
    Ok(McpReport {
        calls: bench.calls,
        runtime_p50_ms,
        runtime_p99_ms,
        direct_p50_ms,
        direct_p99_ms,
        overhead_p50_ms: runtime_p50_ms - direct_p50_ms,
        overhead_p99_ms: runtime_p99_ms - direct_p99_ms,
    })
}

/// `calls` sequential `tools/call`s of `add` from this process, sorted.
async fn direct_calls(bench: &McpBench) -> Result<Vec<Duration>> {
    let client = McpClient::new(HttpClient::new(None));
    // The session is opened by the first call, outside the measurement.
    client.call_tool(&bench.url, Some(&bench.token), "add", r#"{"a":0,"b":1}"#).await?;
    let mut latencies = Vec::new();
    for number in 0..bench.calls {
        let arguments = json!({"a": number, "b": 1}).to_string();
        let started = Instant::now();
        let result = client.call_tool(&bench.url, Some(&bench.token), "add", &arguments).await?;
        latencies.push(started.elapsed());
        if result.is_error {
            bail!("the direct call failed: {}", result.text);
        }
    }
    latencies.sort_unstable();
    eprintln!("bench: {} direct calls", latencies.len());
    Ok(latencies)
}

/// One turn of `calls` MCP tool uses through the runtime, each timed from
/// its tool use's arrival to its result's, sorted.
async fn runtime_calls(bench: &McpBench) -> Result<Vec<Duration>> {
    let client = bench.target.client()?;
    let session = runtime_session(bench, &client).await?;
    let mut subscription = client.subscribe(session, 1);
    client.append(session, EventPayload::user_text("add, many times")).await?;
    let mut started: HashMap<agentd_protocol::ids::EventId, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    while latencies.len() < bench.calls as usize {
        for event in subscription.next().await? {
            match &event.payload {
                EventPayload::AgentMcpToolUse { .. } => {
                    started.insert(event.id, Instant::now());
                }
                EventPayload::AgentMcpToolResult { mcp_tool_use_id, is_error, content } => {
                    if *is_error {
                        bail!("a call through the runtime failed: {content:?}");
                    }
                    let start = started.get(mcp_tool_use_id).context("a result before its tool use")?;
                    latencies.push(start.elapsed());
                }
                EventPayload::SessionMcpError { message, .. } => bail!("the runtime reported: {message}"),
                EventPayload::SessionStatusIdle { .. } => bail!("the turn ended after {} calls", latencies.len()),
                _ => {}
            }
        }
    }
    latencies.sort_unstable();
    eprintln!("bench: {} calls through the runtime", latencies.len());
    Ok(latencies)
}

/// A session whose scripted model calls `mcp__bench__add` `calls` times,
/// with the token in its vault and the server in its environment's allowlist.
async fn runtime_session(bench: &McpBench, client: &agentd_client::Client) -> Result<SessionId> {
    let mut turns: Vec<serde_json::Value> = (0..bench.calls)
        .map(|number| json!([{"type": "tool_use", "name": "mcp__bench__add", "input": {"a": number, "b": 1}}]))
        .collect();
    turns.push(json!([{"type": "text", "text": "done"}]));
    let script = format!("bench-mcp-{}.json", std::process::id());
    std::fs::write(bench.scripts_dir.join(&script), serde_json::Value::Array(turns).to_string())
        .with_context(|| format!("cannot write the script into {}", bench.scripts_dir.display()))?;
    let spec = AgentSpec {
        name: "bench-mcp".into(),
        model: format!("scripted:{script}"),
        system: None,
        tools: vec![],
        custom_tools: vec![],
        max_model_calls_per_turn: bench.calls + 1,
        mcp_servers: vec![McpServer { name: "bench".into(), url: bench.url.clone() }],
        mcp_toolsets: vec![McpToolset {
            server_name: "bench".into(),
            default_enabled: true,
            default_policy: PermissionPolicy::AlwaysAllow,
            configs: vec![],
        }],
    };
    let agent = client.put_agent(None, spec).await?.id;
    let uri: hyper::Uri = bench.url.parse().context("--mcp-url")?;
    let host = format!("{}:{}", uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(80));
    let environment = EnvironmentSpec {
        name: "bench-mcp".into(),
        driver: "namespace".into(),
        network: Network::Allowlist(vec![host]),
        tool_timeout_ms: agentd_protocol::limits::TOOL_TIMEOUT_MS_DEFAULT,
        eager_provisioning: false,
        vaults: vec![],
        resources: Default::default(),
    };
    let environment = client.put_environment(None, environment).await?.id;
    let vault_id = VaultId::from_random(random());
    let body = ResourceBody::Vault(VaultBody { display_name: "bench-mcp".into(), credentials: vec![] });
    let version = ResourceVersion { body, description: None, metadata: vec![], created_at_ms: 0 };
    let request = ClientRequest::PutResource { id: ResourceId::Vault(vault_id), version, expected_revision: Some(0) };
    client.call(request).await?.into_resource()?;
    let change = CredentialChange {
        display_name: None,
        metadata: vec![],
        secret_name: None,
        secret_value: Some(bench.token.clone()),
        allowed_hosts: None,
        archive: false,
        mcp: Some(McpCredentialChange { server_url: bench.url.clone(), oauth: None }),
    };
    let credential_id = CredentialId::from_random(random());
    client.call(ClientRequest::PutCredential { vault_id, credential_id, change }).await?.into_resource()?;
    let session_id = SessionId::from_random(random());
    let create = SessionCreate {
        agent: Some(agent),
        environment: Some(environment),
        vault_ids: vec![vault_id],
        ..SessionCreate::default()
    };
    client.call(ClientRequest::CreateSessionIn { session_id, create }).await?.into_session_view()?;
    Ok(session_id)
}

fn random() -> u128 {
    rand::random()
}
