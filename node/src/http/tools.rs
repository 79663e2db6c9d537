//! An agent's `tools` as the API writes them: the built-in toolset
//! (`agent_toolset_20260401`) with per-tool configs and a default config,
//! and custom tools; and back, resolved, as the API shows them.

use agentd_protocol::agent::{
    BuiltInTool, CustomTool, McpToolConfig, McpToolset, PermissionPolicy, BUILT_IN_TOOLS, MCP_DEFAULT_POLICY,
};
use agentd_protocol::event::JsonText;
use agentd_protocol::resource::AgentBody;
use serde_json::{json, Map, Value};

use super::error::HttpError;

/// The toolset type agentd implements.
pub const TOOLSET_TYPE: &str = "agent_toolset_20260401";

/// The toolset's server tools, which agentd does not have: listed (off) in
/// what the API shows, refused when a request enables them.
const SERVER_TOOLS: [&str; 2] = ["web_fetch", "web_search"];

/// What a request's `tools` say.
pub struct ParsedTools {
    pub built_in: Vec<BuiltInTool>,
    pub default_enabled: bool,
    pub default_policy: PermissionPolicy,
    pub custom: Vec<CustomTool>,
    pub mcp_toolsets: Vec<McpToolset>,
}

impl Default for ParsedTools {
    /// No tools at all: no toolset, no custom tools.
    fn default() -> Self {
        ParsedTools {
            built_in: Vec::new(),
            default_enabled: false,
            default_policy: PermissionPolicy::AlwaysAllow,
            custom: Vec::new(),
            mcp_toolsets: Vec::new(),
        }
    }
}

pub fn parse_policy(field: &str, value: &Value) -> Result<PermissionPolicy, HttpError> {
    let kind = value.get("type").and_then(Value::as_str).or_else(|| value.as_str());
    match kind {
        Some("always_allow") => Ok(PermissionPolicy::AlwaysAllow),
        Some("always_ask") => Ok(PermissionPolicy::AlwaysAsk),
        Some("auto") => Ok(PermissionPolicy::Auto),
        _ => Err(HttpError::invalid(format!(
            "{field} must be {{\"type\": \"always_allow\" | \"always_ask\" | \"auto\"}}"
        ))),
    }
}

pub fn policy_json(policy: PermissionPolicy) -> Value {
    json!({"type": policy.name()})
}

fn object<'a>(field: &str, value: &'a Value) -> Result<&'a Map<String, Value>, HttpError> {
    value.as_object().ok_or_else(|| HttpError::invalid(format!("{field} must be an object")))
}

fn only(field: &str, map: &Map<String, Value>, known: &[&str]) -> Result<(), HttpError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(HttpError::invalid(format!("unknown field `{field}.{key}`"))),
        None => Ok(()),
    }
}

/// Parses an agent's `tools` array.
pub fn parse_tools(value: &Value) -> Result<ParsedTools, HttpError> {
    let Some(entries) = value.as_array() else { return Err(HttpError::invalid("tools must be an array")) };
    let mut parsed = ParsedTools::default();
    let mut toolset_seen = false;
    for (index, entry) in entries.iter().enumerate() {
        let field = format!("tools[{index}]");
        let map = object(&field, entry)?;
        match map.get("type").and_then(Value::as_str) {
            Some(TOOLSET_TYPE) if toolset_seen => {
                return Err(
                    HttpError::invalid(format!("{field}: the toolset is listed twice")).with_code("tool_name_conflict")
                )
            }
            Some(TOOLSET_TYPE) => {
                toolset_seen = true;
                parse_toolset(&field, map, &mut parsed)?;
            }
            Some("custom") => parsed.custom.push(parse_custom(&field, map)?),
            Some("mcp_toolset") => {
                let toolset = parse_mcp_toolset(&field, map)?;
                if parsed.mcp_toolsets.iter().any(|other| other.server_name == toolset.server_name) {
                    return Err(HttpError::invalid(format!(
                        "{field}: MCP server {:?} has a toolset already",
                        toolset.server_name
                    ))
                    .with_code("tool_name_conflict"));
                }
                parsed.mcp_toolsets.push(toolset);
            }
            other => return Err(HttpError::invalid(format!("{field}: unknown tool type {other:?}"))),
        }
    }
    let mut names: Vec<&str> = parsed
        .built_in
        .iter()
        .map(|tool| tool.name.as_str())
        .chain(parsed.custom.iter().map(|tool| tool.name.as_str()))
        .collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(
            HttpError::invalid(format!("tool name {:?} is used twice", pair[0])).with_code("tool_name_conflict")
        );
    }
    Ok(parsed)
}

fn parse_toolset(field: &str, map: &Map<String, Value>, parsed: &mut ParsedTools) -> Result<(), HttpError> {
    only(field, map, &["type", "configs", "default_config"])?;
    let (mut default_enabled, mut default_policy) = (true, PermissionPolicy::AlwaysAllow);
    if let Some(default) = map.get("default_config").filter(|value| !value.is_null()) {
        let default = object(&format!("{field}.default_config"), default)?;
        only(&format!("{field}.default_config"), default, &["enabled", "permission_policy"])?;
        default_enabled = default.get("enabled").and_then(Value::as_bool).unwrap_or(true);
        if let Some(policy) = default.get("permission_policy").filter(|value| !value.is_null()) {
            default_policy = parse_policy(&format!("{field}.default_config.permission_policy"), policy)?;
        }
    }
    let mut configured: Vec<(String, bool, PermissionPolicy)> = Vec::new();
    for (index, config) in map.get("configs").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let config_field = format!("{field}.configs[{index}]");
        let config = object(&config_field, config)?;
        only(&config_field, config, &["name", "type", "enabled", "permission_policy"])?;
        let name = config.get("name").and_then(Value::as_str).unwrap_or_default();
        if !BUILT_IN_TOOLS.contains(&name) && !SERVER_TOOLS.contains(&name) {
            return Err(HttpError::invalid(format!("{config_field}.name: unknown built-in tool {name:?}")));
        }
        let enabled = config.get("enabled").and_then(Value::as_bool).unwrap_or(default_enabled);
        let policy = match config.get("permission_policy").filter(|value| !value.is_null()) {
            Some(policy) => parse_policy(&format!("{config_field}.permission_policy"), policy)?,
            None => default_policy,
        };
        if enabled && SERVER_TOOLS.contains(&name) {
            return Err(HttpError::unsupported(&config_field, &format!("{name} is a server tool agentd does not run")));
        }
        configured.push((name.to_string(), enabled, policy));
    }
    for name in BUILT_IN_TOOLS {
        let (enabled, policy) = configured
            .iter()
            .find(|(configured_name, _, _)| configured_name == name)
            .map_or((default_enabled, default_policy), |(_, enabled, policy)| (*enabled, *policy));
        if enabled {
            parsed.built_in.push(BuiltInTool { name: name.to_string(), policy });
        }
    }
    parsed.default_enabled = default_enabled;
    parsed.default_policy = default_policy;
    Ok(())
}

/// An `mcp_toolset`: tools of one MCP server, `always_ask` unless configured
/// otherwise (see [`MCP_DEFAULT_POLICY`]).
fn parse_mcp_toolset(field: &str, map: &Map<String, Value>) -> Result<McpToolset, HttpError> {
    only(field, map, &["type", "mcp_server_name", "configs", "default_config"])?;
    let server_name = map
        .get("mcp_server_name")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::invalid(format!("{field}.mcp_server_name is required")))?;
    let (mut default_enabled, mut default_policy) = (true, MCP_DEFAULT_POLICY);
    if let Some(default) = map.get("default_config").filter(|value| !value.is_null()) {
        let default = object(&format!("{field}.default_config"), default)?;
        only(&format!("{field}.default_config"), default, &["enabled", "permission_policy"])?;
        default_enabled = default.get("enabled").and_then(Value::as_bool).unwrap_or(true);
        if let Some(policy) = default.get("permission_policy").filter(|value| !value.is_null()) {
            default_policy = parse_policy(&format!("{field}.default_config.permission_policy"), policy)?;
        }
    }
    let mut configs = Vec::new();
    for (index, config) in map.get("configs").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let config_field = format!("{field}.configs[{index}]");
        let config = object(&config_field, config)?;
        only(&config_field, config, &["name", "enabled", "permission_policy"])?;
        let name = config
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| HttpError::invalid(format!("{config_field}.name is required")))?;
        let policy = match config.get("permission_policy").filter(|value| !value.is_null()) {
            Some(policy) => parse_policy(&format!("{config_field}.permission_policy"), policy)?,
            None => default_policy,
        };
        let enabled = config.get("enabled").and_then(Value::as_bool).unwrap_or(default_enabled);
        configs.push(McpToolConfig { name: name.to_string(), enabled, policy });
    }
    Ok(McpToolset { server_name: server_name.to_string(), default_enabled, default_policy, configs })
}

fn parse_custom(field: &str, map: &Map<String, Value>) -> Result<CustomTool, HttpError> {
    only(field, map, &["type", "name", "description", "input_schema"])?;
    let name = map
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::invalid(format!("{field}.name is required")))?;
    let description = map.get("description").and_then(Value::as_str).unwrap_or_default();
    let schema =
        map.get("input_schema").ok_or_else(|| HttpError::invalid(format!("{field}.input_schema is required")))?;
    if !schema.is_object() {
        return Err(HttpError::invalid(format!("{field}.input_schema must be a JSON schema object")));
    }
    Ok(CustomTool {
        name: name.to_string(),
        description: description.to_string(),
        input_schema: JsonText::parse(schema.to_string()).map_err(HttpError::from)?,
    })
}

/// What the API shows of an agent's tools: the toolset resolved (every tool
/// with its `enabled` and policy) when it has one, then its custom tools.
pub fn tools_json(body: &AgentBody) -> Value {
    let mut tools = Vec::new();
    if !body.spec.tools.is_empty() || body.default_enabled {
        let configs: Vec<Value> = BUILT_IN_TOOLS
            .iter()
            .chain(SERVER_TOOLS.iter())
            .map(|name| {
                let tool = body.spec.tools.iter().find(|tool| tool.name == *name);
                let policy = tool.map_or(body.default_policy, |tool| tool.policy);
                json!({"name": name, "type": name, "enabled": tool.is_some(), "permission_policy": policy_json(policy)})
            })
            .collect();
        tools.push(json!({
            "type": TOOLSET_TYPE,
            "configs": configs,
            "default_config": {"enabled": body.default_enabled, "permission_policy": policy_json(body.default_policy)},
        }));
    }
    for toolset in &body.spec.mcp_toolsets {
        let configs: Vec<Value> = toolset
            .configs
            .iter()
            .map(|config| {
                json!({"name": config.name, "enabled": config.enabled, "permission_policy": policy_json(config.policy)})
            })
            .collect();
        tools.push(json!({
            "type": "mcp_toolset",
            "mcp_server_name": toolset.server_name,
            "configs": configs,
            "default_config": {"enabled": toolset.default_enabled, "permission_policy": policy_json(toolset.default_policy)},
        }));
    }
    for tool in &body.spec.custom_tools {
        let schema: Value = serde_json::from_str(tool.input_schema.as_str()).unwrap_or_else(|_| json!({}));
        tools.push(
            json!({"type": "custom", "name": tool.name, "description": tool.description, "input_schema": schema}),
        );
    }
    Value::Array(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toolset_resolves_configs_over_its_default() {
        let tools = json!([
            {"type": TOOLSET_TYPE, "default_config": {"permission_policy": {"type": "always_ask"}},
             "configs": [{"name": "read", "permission_policy": {"type": "always_allow"}}, {"name": "grep", "enabled": false}]},
            {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}}
        ]);
        let parsed = parse_tools(&tools).unwrap();
        let names: Vec<&str> = parsed.built_in.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(names, vec!["bash", "read", "write", "edit", "glob"]);
        assert_eq!(parsed.built_in[1].policy, PermissionPolicy::AlwaysAllow);
        assert_eq!(parsed.built_in[0].policy, PermissionPolicy::AlwaysAsk);
        assert_eq!(parsed.custom[0].name, "lookup");
    }

    #[test]
    fn an_mcp_toolset_asks_by_default_and_shows_back_resolved() {
        let tools = json!([{"type": "mcp_toolset", "mcp_server_name": "docs",
            "configs": [{"name": "search", "permission_policy": {"type": "always_allow"}}]}]);
        let parsed = parse_tools(&tools).unwrap();
        let toolset = &parsed.mcp_toolsets[0];
        assert_eq!(toolset.policy("search"), Some(PermissionPolicy::AlwaysAllow));
        assert_eq!(toolset.policy("anything"), Some(PermissionPolicy::AlwaysAsk));
        let mut spec = agentd_protocol::agent::AgentSpec {
            name: "a".into(),
            model: "m".into(),
            system: None,
            tools: vec![],
            custom_tools: vec![],
            max_model_calls_per_turn: 1,
            mcp_servers: vec![],
            mcp_toolsets: vec![],
        };
        spec.mcp_toolsets = parsed.mcp_toolsets;
        let body = AgentBody { spec, default_enabled: false, default_policy: PermissionPolicy::AlwaysAllow };
        let shown = tools_json(&body);
        assert_eq!(shown[0]["default_config"]["permission_policy"]["type"], "always_ask");
        assert_eq!(shown[0]["configs"][0]["name"], "search");
    }

    #[test]
    fn unsupported_and_conflicting_tools_are_refused() {
        for bad in [
            json!([{"type": "mcp_toolset"}]),
            json!([{"type": "mcp_toolset", "mcp_server_name": "x"}, {"type": "mcp_toolset", "mcp_server_name": "x"}]),
            json!([{"type": TOOLSET_TYPE, "configs": [{"name": "web_fetch", "enabled": true}]}]),
            json!([{"type": TOOLSET_TYPE}, {"type": "custom", "name": "bash", "input_schema": {}}]),
            json!([{"type": TOOLSET_TYPE, "configs": [{"name": "bash", "colour": "red"}]}]),
        ] {
            assert!(parse_tools(&bad).is_err(), "{bad}");
        }
    }
}
