//! `agentd bench first-model-request`: how long a turn waits for its first
//! model request with lazy and with eager sandbox provisioning.

use std::time::Instant;

use agentd_protocol::agent::{AgentSpec, BuiltInTool, EnvironmentSpec, Network, PermissionPolicy, SandboxDriver};
use agentd_protocol::event::EventPayload;
use anyhow::Result;
use serde::Serialize;

use super::percentile_ms;
use crate::commands::Target;

/// Time from sending a message to the first model request of the turn, for
/// sandboxes provisioned lazily (at the first tool call) and eagerly (when
/// the turn starts), in one run against one cluster.
#[derive(Debug, Clone)]
pub struct FirstModelRequestBench {
    /// The cluster, and the key to call it with.
    pub target: Target,
    pub sessions: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirstModelRequestReport {
    pub provisioning: &'static str,
    pub sessions: u32,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

pub async fn run(bench: FirstModelRequestBench) -> Result<Vec<FirstModelRequestReport>> {
    let client = bench.target.client()?;
    let agent = client
        .put_agent(
            None,
            AgentSpec {
                name: "bench".into(),
                model: "scripted:echo".into(),
                system: None,
                tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow }],
                custom_tools: vec![],
                max_model_calls_per_turn: 5,
                mcp_servers: vec![],
                mcp_toolsets: vec![],
            },
        )
        .await?;
    let mut reports = Vec::new();
    for (provisioning, eager) in [("lazy", false), ("eager", true)] {
        let environment = client
            .put_environment(
                None,
                EnvironmentSpec {
                    name: format!("bench-{provisioning}"),
                    driver: SandboxDriver::Namespace.name().into(),
                    network: Network::None,
                    tool_timeout_ms: agentd_protocol::limits::TOOL_TIMEOUT_MS_DEFAULT,
                    eager_provisioning: eager,
                    vaults: vec![],
                    resources: Default::default(),
                },
            )
            .await?;
        let mut latencies = Vec::new();
        for number in 0..bench.sessions {
            let session = client.create_session_with(Some(agent.id), Some(environment.id)).await?.session_id;
            let mut subscription = client.subscribe(session, 1);
            let sent = Instant::now();
            client.append(session, EventPayload::user_text(format!("message {number}"))).await?;
            'wait: loop {
                for event in subscription.next().await? {
                    if matches!(event.payload, EventPayload::SpanModelRequestStart { .. }) {
                        latencies.push(sent.elapsed());
                        break 'wait;
                    }
                }
            }
        }
        latencies.sort_unstable();
        let percentile = |fraction: f64| percentile_ms(&latencies, fraction);
        eprintln!("bench: {provisioning} provisioning measured over {} sessions", latencies.len());
        reports.push(FirstModelRequestReport {
            provisioning,
            sessions: bench.sessions,
            p50_ms: percentile(0.50),
            p95_ms: percentile(0.95),
            max_ms: percentile(1.0),
        });
    }
    Ok(reports)
}
