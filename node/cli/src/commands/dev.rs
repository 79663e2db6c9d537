//! `agentd dev`: a local three-node cluster inside this process (the
//! embeddable `Node`), a sample agent that uses tools, and one session whose
//! events are printed live as they commit.

use std::path::PathBuf;
use std::time::Duration;

use agentd_actors::model::ProviderConfig;
use agentd_protocol::agent::{AgentSpec, BuiltInTool, PermissionPolicy};
use agentd_protocol::event::{EventPayload, StopReason};
use agentd_protocol::ids::SessionId;
use anyhow::{bail, Context, Result};
use serde_json::json;

use agentd_client::Client;
use agentd_node::http::{HttpHandle, HttpOptions, HttpServer};
use agentd_node::options::SANDBOX_IDLE_DEFAULT;
use agentd_node::{Bootstrap, Node, NodeHandle, NodeOptions, RaftTuning};

use crate::output;

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    pub nodes: u16,
    pub base_port: u16,
    pub http_base_port: u16,
    pub shards: u32,
    pub keep_running: bool,
}

/// The sample agent's model: a script of turns, played one per model call.
fn sample_script() -> serde_json::Value {
    json!([
        [
            {"type": "text", "text": "I'll write a short note, then check it with bash."},
            {"type": "tool_use", "name": "write", "input": {"file_path": "notes/hello.md", "content": "# Hello from agentd\n\nWritten by a scripted agent.\n"}}
        ],
        [
            {"type": "tool_use", "name": "bash", "input": {"command": "wc -l notes/hello.md && grep -n agentd notes/hello.md"}}
        ],
        [
            {"type": "tool_use", "name": "read", "input": {"file_path": "notes/hello.md"}}
        ],
        [
            {"type": "text", "text": "Done: notes/hello.md has 3 lines and mentions agentd."}
        ]
    ])
}

/// How long the sample session may take to finish its turn.
const SAMPLE_SESSION_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(options: DevOptions) -> Result<()> {
    if options.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let models = prepare_data_dir(&options)?;
    let nodes = start_nodes(&options, &models).await?;
    let addrs: Vec<String> = nodes.iter().map(|node| node.advertise_addr().to_string()).collect();
    let admin_key_path = options.data_dir.join("n1").join("admin-key");
    let admin_key = std::fs::read_to_string(&admin_key_path)
        .with_context(|| format!("cannot read the admin key in {}", admin_key_path.display()))?;
    let admin_key = admin_key.trim().to_string();
    let apis = start_http(&options, &nodes).await?;
    let base_urls: Vec<String> = apis.iter().map(|api| format!("http://{}", api.local_addr())).collect();
    eprintln!("agentd dev: HTTP API (Managed Agents, for the Anthropic SDKs) at {}", base_urls.join(", "));
    eprintln!("agentd dev: API key (admin, workspace default): {admin_key}");
    let client = Client::for_addrs(addrs.clone(), None)?.with_api_key(admin_key.clone());
    let session = run_sample_session(&client).await?;
    let workspace = options.data_dir.join("sandboxes").join(session.to_string()).join("workspace");
    eprintln!("agentd dev: the session finished; its workspace is {}", workspace.display());

    if options.keep_running {
        eprintln!(
            "agentd dev: cluster running; try `agentd session events --addr {} {session} --follow`. Ctrl-C stops it.",
            addrs.join(",")
        );
        tokio::signal::ctrl_c().await?;
    }
    for api in &apis {
        api.shutdown();
    }
    for node in nodes.iter().rev() {
        node.shutdown().await;
    }
    Ok(())
}

/// The HTTP API on every node, on ports from `--http-base-port` up.
async fn start_http(options: &DevOptions, nodes: &[NodeHandle]) -> Result<Vec<HttpHandle>> {
    let mut apis = Vec::with_capacity(nodes.len());
    for (index, node) in nodes.iter().enumerate() {
        let listen = format!("127.0.0.1:{}", options.http_base_port + index as u16).parse()?;
        let api = HttpServer::start(node.service().clone(), HttpOptions { listen, tls: None })
            .await
            .with_context(|| format!("the HTTP API of node {} did not start (try --http-base-port)", node.node_id()))?;
        apis.push(api);
    }
    Ok(apis)
}

/// Clears the data directory and writes the sample agent's script into it;
/// returns the models' configuration that reads it.
fn prepare_data_dir(options: &DevOptions) -> Result<ProviderConfig> {
    if options.data_dir.exists() {
        std::fs::remove_dir_all(&options.data_dir)
            .with_context(|| format!("cannot clear {}", options.data_dir.display()))?;
    }
    std::fs::create_dir_all(&options.data_dir)?;
    let scripts_dir = options.data_dir.join("scripts");
    std::fs::create_dir_all(&scripts_dir)?;
    std::fs::write(scripts_dir.join("sample.json"), serde_json::to_string_pretty(&sample_script())?)?;
    Ok(ProviderConfig { scripts_dir: Some(scripts_dir), ..ProviderConfig::from_env() })
}

/// Starts the nodes in this process: the first creates the cluster, the
/// others join it with its token.
async fn start_nodes(options: &DevOptions, models: &ProviderConfig) -> Result<Vec<NodeHandle>> {
    eprintln!("agentd dev: starting {} nodes in {}", options.nodes, options.data_dir.display());
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for index in 0..options.nodes {
        let node_id = u64::from(index) + 1;
        let listen = format!("127.0.0.1:{}", options.base_port + index).parse()?;
        let bootstrap = match nodes.first() {
            None => Bootstrap::Init { shards: options.shards, replication_factor: 3, credentials: None },
            Some(first) => {
                let token = std::fs::read_to_string(options.data_dir.join("n1").join("join-token"))?;
                Bootstrap::Join { seed: first.advertise_addr().to_string(), token: token.trim().to_string() }
            }
        };
        let node = Node::start(NodeOptions {
            node_id,
            listen,
            advertise: None,
            data_dir: options.data_dir.join(format!("n{node_id}")),
            bootstrap,
            raft: RaftTuning::default(),
            sandbox_dir: Some(options.data_dir.join("sandboxes")),
            sandbox_idle: SANDBOX_IDLE_DEFAULT,
            client_idle: std::time::Duration::from_secs(agentd_protocol::limits::CLIENT_IDLE_SECS_DEFAULT),
            min_free_disk: agentd_protocol::limits::DISK_FREE_FLOOR_DEFAULT,
            requests_in_flight_max: agentd_protocol::limits::REQUESTS_IN_FLIGHT_MAX,
            models: models.clone(),
        })
        .await
        .with_context(|| format!("node {node_id} did not start (is port {listen} free? try --base-port)"))?;
        eprintln!("agentd dev: node {node_id} serving on {}", node.advertise_addr());
        nodes.push(node);
    }
    Ok(nodes)
}

/// Creates the sample agent and a session, sends it a message and prints
/// its events until the turn ends; returns the session.
async fn run_sample_session(client: &Client) -> Result<SessionId> {
    let agent = client
        .put_agent(
            None,
            AgentSpec {
                name: "sample".into(),
                model: "scripted:sample.json".into(),
                system: Some("You keep tidy notes.".into()),
                tools: ["write", "bash", "read"]
                    .iter()
                    .map(|name| BuiltInTool { name: (*name).into(), policy: PermissionPolicy::AlwaysAllow })
                    .collect(),
                custom_tools: vec![],
                max_model_calls_per_turn: agentd_protocol::limits::MODEL_CALLS_PER_TURN_DEFAULT,
                mcp_servers: vec![],
                mcp_toolsets: vec![],
            },
        )
        .await?;
    let session = client.create_session_with(Some(agent.id), None).await?.session_id;
    eprintln!("agentd dev: agent {} (scripted model, tools write/bash/read), session {session}", agent.id);
    client.append(session, EventPayload::user_text("Please write a short note and check it.")).await?;
    let mut subscription = client.subscribe(session, 1);
    let finished = tokio::time::timeout(SAMPLE_SESSION_TIMEOUT, async {
        loop {
            for event in subscription.next().await? {
                outln!("{}", output::summary(&event));
                if let EventPayload::SessionStatusIdle { stop_reason: StopReason::EndTurn } = event.payload {
                    return anyhow::Ok(());
                }
            }
        }
    })
    .await;
    match finished {
        Ok(result) => result.map(|()| session),
        Err(_) => bail!("the sample session did not finish within {SAMPLE_SESSION_TIMEOUT:?}"),
    }
}
