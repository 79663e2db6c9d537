//! A host program that runs an agentd node inside its own tokio runtime.
//!
//! It joins a cluster started with the `agentd` program, serves a model of
//! its own in process (no HTTP: `shout:v1` answers the last user message in
//! capitals) and runs sessions until SIGINT or SIGTERM, or until the node
//! fails (a storage error, or the cluster refusing it), then shuts the node
//! down. See `docs/embedding.md`.
//!
//! ```sh
//! agentd start --node-id 1 --listen 127.0.0.1:7101 --data-dir /tmp/n1 --init --replication 2
//! cargo run -p agentd-node --example embedded -- \
//!     --node-id 2 --listen 127.0.0.1:7102 --data-dir /tmp/n2 \
//!     --join 127.0.0.1:7101 --token "$(cat /tmp/n1/join-token)"
//! ```
//!
//! Restarted with the same `--data-dir`, it needs no `--join`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agentd_node::model::{Block, ModelError, ModelProvider, ModelRequest, ModelResponse, ModelUsage, Role, StopReason};
use agentd_node::{Bootstrap, BoxFuture, Node, NodeOptions};
use anyhow::{bail, Context, Result};

/// The model name agents use to reach [`Shout`].
const SHOUT_MODEL: &str = "shout:v1";

/// An in-process model: the last user message, in capitals.
struct Shout;

impl ModelProvider for Shout {
    fn name(&self) -> &str {
        "shout"
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let last_user = request.messages.iter().rev().find(|message| message.role == Role::User);
            let text: String = last_user.map(|message| message.texts().collect()).unwrap_or_default();
            Ok(ModelResponse {
                content: vec![Block::Text { text: text.to_uppercase() }],
                stop_reason: StopReason::EndTurn,
                usage: ModelUsage {
                    input_tokens: text.len() as u64,
                    output_tokens: text.len() as u64,
                    ..Default::default()
                },
            })
        })
    }
}

/// `--name value` pairs from the command line.
fn flags() -> Result<BTreeMap<String, String>> {
    let mut args = std::env::args().skip(1);
    let mut flags = BTreeMap::new();
    while let Some(name) = args.next() {
        let Some(name) = name.strip_prefix("--") else { bail!("unexpected argument {name:?}") };
        let value = args.next().with_context(|| format!("--{name} needs a value"))?;
        flags.insert(name.to_string(), value);
    }
    Ok(flags)
}

fn options(flags: &BTreeMap<String, String>) -> Result<NodeOptions> {
    let get = |name: &str| flags.get(name).with_context(|| format!("--{name} is required"));
    let bootstrap = match (flags.get("join"), flags.get("token")) {
        (Some(seed), Some(token)) => Bootstrap::Join { seed: seed.clone(), token: token.clone() },
        (Some(_), None) => bail!("--join needs --token (DATA/join-token on any member)"),
        (None, _) => Bootstrap::Restart,
    };
    // Everything else as `agentd start` defaults it; a host sets the
    // fields it cares about (`raft`, `sandbox_dir`, `models`, ...).
    Ok(NodeOptions::new(
        get("node-id")?.parse().context("--node-id")?,
        get("listen")?.parse::<SocketAddr>().context("--listen")?,
        PathBuf::from(get("data-dir")?),
        bootstrap,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options(&flags()?)?;
    let models: Vec<(String, Arc<dyn ModelProvider>)> = vec![(SHOUT_MODEL.to_string(), Arc::new(Shout))];
    let node = Node::start_with_models(options, models).await?;
    println!("embedded: node {} serving on {}", node.node_id(), node.advertise_addr());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let failure = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = terminate.recv() => None,
        failure = node.failed() => Some(failure),
    };
    node.shutdown().await;
    match failure {
        None => {
            println!("embedded: node stopped");
            Ok(())
        }
        Some(failure) => bail!("embedded: node failed: {failure}"),
    }
}
