//! `agentd agent`: define agents (versioned) and read them back.

use agentd_protocol::agent::{AgentSpec, BuiltInTool, CustomTool, PermissionPolicy};
use agentd_protocol::event::JsonText;
use agentd_protocol::ids::AgentId;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::Target;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an agent (or, with --id, add a version to one); prints its id.
    Create {
        #[command(flatten)]
        target: Target,
        /// Add a version to this agent instead of creating a new one.
        #[arg(long)]
        id: Option<AgentId>,
        #[arg(long)]
        name: String,
        /// scripted:echo, scripted:FILE, anthropic:MODEL (or claude-...), openai:MODEL.
        #[arg(long)]
        model: String,
        #[arg(long)]
        system: Option<String>,
        /// Built-in tools the agent may use: bash, read, write, edit, glob, grep.
        #[arg(long, value_delimiter = ',')]
        tools: Vec<String>,
        /// Tools that wait for the client's confirmation (always_ask).
        #[arg(long, value_delimiter = ',')]
        ask: Vec<String>,
        /// A tool the client executes: NAME or NAME=DESCRIPTION (input: any JSON object).
        #[arg(long = "custom-tool")]
        custom_tools: Vec<String>,
        #[arg(long, default_value_t = agentd_protocol::limits::MODEL_CALLS_PER_TURN_DEFAULT)]
        max_model_calls: u32,
    },
    /// Print an agent and its versions.
    Get {
        #[command(flatten)]
        target: Target,
        agent: AgentId,
    },
}

pub async fn run(command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Create { target, id, name, model, system, tools, ask, custom_tools, max_model_calls } => {
            let mut built_in: Vec<BuiltInTool> =
                tools.into_iter().map(|name| BuiltInTool { name, policy: PermissionPolicy::AlwaysAllow }).collect();
            for name in ask {
                match built_in.iter_mut().find(|tool| tool.name == name) {
                    Some(tool) => tool.policy = PermissionPolicy::AlwaysAsk,
                    None => built_in.push(BuiltInTool { name, policy: PermissionPolicy::AlwaysAsk }),
                }
            }
            let custom_tools = custom_tools
                .into_iter()
                .map(|tool| {
                    let (name, description) = tool.split_once('=').unwrap_or((tool.as_str(), ""));
                    Ok(CustomTool {
                        name: name.to_string(),
                        description: description.to_string(),
                        input_schema: JsonText::parse(r#"{"type":"object"}"#)?,
                    })
                })
                .collect::<Result<Vec<_>, agentd_protocol::ApiError>>()?;
            let spec = AgentSpec {
                name,
                model,
                system,
                tools: built_in,
                custom_tools,
                max_model_calls_per_turn: max_model_calls,
                mcp_servers: vec![],
                mcp_toolsets: vec![],
            };
            let agent = target.client()?.put_agent(id, spec).await?;
            if target.json {
                outln!("{}", json!({"agent_id": agent.id.to_string(), "version": agent.latest_version()}));
            } else {
                outln!("{}", agent.id);
            }
        }
        AgentCommand::Get { target, agent } => {
            let agent = target.client()?.get_agent(agent).await?;
            let versions: Vec<_> = agent
                .versions
                .iter()
                .enumerate()
                .map(|(index, spec)| {
                    json!({
                        "version": index + 1,
                        "name": spec.name,
                        "model": spec.model,
                        "system": spec.system,
                        "tools": spec.tools.iter().map(|tool| json!({"name": tool.name, "policy": tool.policy.name()}))
                            .collect::<Vec<_>>(),
                        "custom_tools": spec.custom_tools.iter().map(|tool| tool.name.clone()).collect::<Vec<_>>(),
                        "max_model_calls_per_turn": spec.max_model_calls_per_turn,
                    })
                })
                .collect();
            let value =
                json!({"agent_id": agent.id.to_string(), "created_at_ms": agent.created_at_ms, "versions": versions});
            outln!("{}", if target.json { value.to_string() } else { serde_json::to_string_pretty(&value)? });
        }
    }
    Ok(())
}
