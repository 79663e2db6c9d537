//! What the model is told about the built-in tools (`agent_toolset_20260401`).

use agentd_protocol::agent::AgentSpec;

use crate::model::ToolSpec;

fn built_in(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "bash" => (
            "Run a command in a persistent bash shell in the workspace.",
            r#"{"type":"object","properties":{"command":{"type":"string"},"restart":{"type":"boolean"},"timeout_ms":{"type":"integer"}},"required":["command"]}"#,
        ),
        "read" => (
            "Read a file of the workspace, with line numbers.",
            r#"{"type":"object","properties":{"file_path":{"type":"string"},"view_range":{"type":"array","items":{"type":"integer"}}},"required":["file_path"]}"#,
        ),
        "write" => (
            "Write a file of the workspace.",
            r#"{"type":"object","properties":{"file_path":{"type":"string"},"content":{"type":"string"}},"required":["file_path","content"]}"#,
        ),
        "edit" => (
            "Replace text in a file of the workspace.",
            r#"{"type":"object","properties":{"file_path":{"type":"string"},"old_string":{"type":"string"},"new_string":{"type":"string"},"replace_all":{"type":"boolean"}},"required":["file_path","old_string","new_string"]}"#,
        ),
        "glob" => (
            "List workspace files matching a glob pattern.",
            r#"{"type":"object","properties":{"pattern":{"type":"string"},"path":{"type":"string"}},"required":["pattern"]}"#,
        ),
        "grep" => (
            "Search workspace files with a regular expression.",
            r#"{"type":"object","properties":{"pattern":{"type":"string"},"path":{"type":"string"}},"required":["pattern"]}"#,
        ),
        _ => return None,
    })
}

/// The tools an agent offers its model: its built-in tools, then its custom tools.
pub fn tool_specs(agent: &AgentSpec) -> Vec<ToolSpec> {
    let built_ins = agent.tools.iter().filter_map(|tool| {
        built_in(&tool.name).map(|(description, schema)| ToolSpec {
            name: tool.name.clone(),
            description: description.into(),
            input_schema_json: schema.into(),
        })
    });
    let custom = agent.custom_tools.iter().map(|tool| ToolSpec {
        name: tool.name.clone(),
        description: tool.description.clone(),
        input_schema_json: tool.input_schema.as_str().into(),
    });
    built_ins.chain(custom).collect()
}
