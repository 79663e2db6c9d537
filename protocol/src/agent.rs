//! Agents and environments: versioned resources held by the metadata group.
//! A session pins one agent version and one environment when it is created.

use serde::{Deserialize, Serialize};

pub use crate::egress::Network;
use crate::event::JsonText;
use crate::ids::{AgentId, EnvironmentId, VaultId};
use crate::{limits, ApiError};

/// Whether a tool call runs at once or waits for the client's confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionPolicy {
    AlwaysAllow,
    AlwaysAsk,
    /// The runtime decides per call. agentd decides to ask, always (the
    /// safe choice); the API reports the evaluation as `auto` → `ask`.
    Auto,
}

impl PermissionPolicy {
    /// Whether a call under this policy waits for the client's confirmation.
    pub fn asks(self) -> bool {
        !matches!(self, PermissionPolicy::AlwaysAllow)
    }

    /// The API's name of the policy.
    pub fn name(self) -> &'static str {
        match self {
            PermissionPolicy::AlwaysAllow => "always_allow",
            PermissionPolicy::AlwaysAsk => "always_ask",
            PermissionPolicy::Auto => "auto",
        }
    }
}

/// The built-in tools (`agent_toolset_20260401`), run in the session's sandbox.
pub const BUILT_IN_TOOLS: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltInTool {
    pub name: String,
    pub policy: PermissionPolicy,
}

/// A tool the client executes: the agent emits `agent.custom_tool_use` and
/// the client answers with `user.custom_tool_result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomTool {
    pub name: String,
    pub description: String,
    pub input_schema: JsonText,
}

/// What an agent is: one version of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: String,
    /// Chooses the model provider: `scripted:echo`, `scripted:FILE`,
    /// `anthropic:MODEL` (or `claude-...`), `openai:MODEL`.
    pub model: String,
    pub system: Option<String>,
    pub tools: Vec<BuiltInTool>,
    pub custom_tools: Vec<CustomTool>,
    /// Most model calls in one turn of the agent before it stops.
    pub max_model_calls_per_turn: u32,
    /// MCP servers the node calls for this agent's `mcp__<server>__<tool>` tools.
    pub mcp_servers: Vec<McpServer>,
    /// One toolset per server: which of its tools are enabled, under which policy.
    pub mcp_toolsets: Vec<McpToolset>,
}

/// The prefix of the name the model sees for an MCP tool:
/// `mcp__<server name>__<tool name>`, as Claude's own clients write it.
pub const MCP_TOOL_PREFIX: &str = "mcp__";

/// An MCP server an agent uses (`{type: "url", name, url}`), spoken to by
/// the node over the streamable HTTP transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer {
    pub name: String,
    pub url: String,
}

/// An `mcp_toolset`: the tools of one server the agent may call. Tools
/// without a config of their own follow the default config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpToolset {
    pub server_name: String,
    pub default_enabled: bool,
    pub default_policy: PermissionPolicy,
    pub configs: Vec<McpToolConfig>,
}

/// The default policy of an MCP tool: ask, since the tool is code the agent's
/// author does not control and that may act on the world with a credential.
pub const MCP_DEFAULT_POLICY: PermissionPolicy = PermissionPolicy::AlwaysAsk;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpToolConfig {
    pub name: String,
    pub enabled: bool,
    pub policy: PermissionPolicy,
}

/// The name the model sees for tool `tool` of server `server`.
pub fn mcp_tool_name(server: &str, tool: &str) -> String {
    format!("{MCP_TOOL_PREFIX}{server}__{tool}")
}

/// Splits a model-visible MCP tool name into server and tool. Server names
/// never hold `__`, so the first `__` after the prefix is the split.
pub fn split_mcp_tool_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(MCP_TOOL_PREFIX)?;
    let (server, tool) = rest.split_once("__")?;
    (!server.is_empty() && !tool.is_empty()).then_some((server, tool))
}

impl McpServer {
    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= limits::NAME_BYTES_MAX
            && !self.name.contains("__")
            && self.name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !name_ok {
            return Err(format!(
                "MCP server name {:?} must be 1 to {} letters, digits, '-' or '_', without \"__\"",
                self.name,
                limits::NAME_BYTES_MAX
            ));
        }
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok || self.url.len() > limits::NAME_BYTES_MAX * 8 {
            return Err(format!("MCP server {:?}: url must be an http:// or https:// URL", self.name));
        }
        Ok(())
    }
}

impl McpToolset {
    /// The policy of `tool`, or `None` when the toolset does not enable it.
    pub fn policy(&self, tool: &str) -> Option<PermissionPolicy> {
        match self.configs.iter().find(|config| config.name == tool) {
            Some(config) => config.enabled.then_some(config.policy),
            None => self.default_enabled.then_some(self.default_policy),
        }
    }
}

impl AgentSpec {
    pub fn validate(&self) -> Result<(), ApiError> {
        let invalid = |message: String| Err(ApiError::InvalidRequest { message });
        if self.name.is_empty() || self.name.len() > limits::NAME_BYTES_MAX {
            return invalid(format!("an agent name is 1 to {} bytes", limits::NAME_BYTES_MAX));
        }
        if self.model.is_empty() || self.model.len() > limits::NAME_BYTES_MAX {
            return invalid("an agent needs a model".into());
        }
        if self.system.as_ref().is_some_and(|system| system.len() > limits::TEXT_BYTES_MAX) {
            return invalid(format!("the system prompt exceeds {} bytes", limits::TEXT_BYTES_MAX));
        }
        for tool in &self.tools {
            if !BUILT_IN_TOOLS.contains(&tool.name.as_str()) {
                return invalid(format!("unknown built-in tool {:?}; known: {}", tool.name, BUILT_IN_TOOLS.join(", ")));
            }
        }
        for tool in &self.custom_tools {
            if tool.name.is_empty() || BUILT_IN_TOOLS.contains(&tool.name.as_str()) {
                return invalid(format!("custom tool name {:?} is empty or shadows a built-in tool", tool.name));
            }
        }
        if self.max_model_calls_per_turn == 0 || self.max_model_calls_per_turn > limits::MODEL_CALLS_PER_TURN_MAX {
            return invalid(format!("max_model_calls_per_turn is 1 to {}", limits::MODEL_CALLS_PER_TURN_MAX));
        }
        self.validate_mcp().or_else(invalid)
    }

    /// Every MCP server is named once and used by exactly one toolset, and
    /// every toolset names a listed server.
    fn validate_mcp(&self) -> Result<(), String> {
        if self.mcp_servers.len() > limits::MCP_SERVERS_MAX {
            return Err(format!("an agent has at most {} MCP servers", limits::MCP_SERVERS_MAX));
        }
        for (index, server) in self.mcp_servers.iter().enumerate() {
            server.validate()?;
            if self.mcp_servers[..index].iter().any(|earlier| earlier.name == server.name) {
                return Err(format!("MCP server name {:?} is used twice", server.name));
            }
            let toolsets = self.mcp_toolsets.iter().filter(|toolset| toolset.server_name == server.name).count();
            if toolsets != 1 {
                return Err(format!(
                    "MCP server {:?} must be referenced by exactly one mcp_toolset (found {toolsets})",
                    server.name
                ));
            }
        }
        if let Some(toolset) = self.mcp_toolsets.iter().find(|toolset| self.mcp_server(&toolset.server_name).is_none())
        {
            return Err(format!("mcp_toolset names MCP server {:?}, which is not in mcp_servers", toolset.server_name));
        }
        Ok(())
    }

    pub fn mcp_server(&self, name: &str) -> Option<&McpServer> {
        self.mcp_servers.iter().find(|server| server.name == name)
    }

    pub fn mcp_toolset(&self, server_name: &str) -> Option<&McpToolset> {
        self.mcp_toolsets.iter().find(|toolset| toolset.server_name == server_name)
    }

    /// The server, tool and policy a model-visible `mcp__<server>__<tool>`
    /// name stands for; the policy is `None` when the toolset does not
    /// enable the tool. `None` when the name is not one of this agent's
    /// MCP servers' tools.
    pub fn mcp_tool(&self, name: &str) -> Option<(&McpServer, String, Option<PermissionPolicy>)> {
        let (server_name, tool) = split_mcp_tool_name(name)?;
        let server = self.mcp_server(server_name)?;
        let policy = self.mcp_toolset(server_name).and_then(|toolset| toolset.policy(tool));
        Some((server, tool.to_string(), policy))
    }

    pub fn tool_policy(&self, name: &str) -> Option<PermissionPolicy> {
        self.tools.iter().find(|tool| tool.name == name).map(|tool| tool.policy)
    }

    pub fn is_custom_tool(&self, name: &str) -> bool {
        self.custom_tools.iter().any(|tool| tool.name == name)
    }
}

/// An agent and every version it has had; versions start at 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub versions: Vec<AgentSpec>,
    pub created_at_ms: u64,
}

impl Agent {
    pub fn latest_version(&self) -> u32 {
        self.versions.len() as u32
    }

    pub fn version(&self, version: u32) -> Option<&AgentSpec> {
        self.versions.get((version as usize).checked_sub(1)?)
    }
}

/// A session's pinned agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgentRef {
    pub id: AgentId,
    pub version: u32,
}

/// The sandbox drivers, one per kind of isolation. Environments carry the
/// driver's [`name`](SandboxDriver::name) on the wire and in the log; it is
/// parsed into this type where it enters (a front door, the environment's
/// validation) and where a sandbox is made, never compared as a string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SandboxDriver {
    /// bubblewrap: Linux namespaces, the fast default.
    #[default]
    Namespace,
    /// runc: an OCI container over a busybox root filesystem.
    Oci,
    /// gVisor's runsc: the same container under a user-space kernel.
    Gvisor,
    /// A QEMU microVM running `agentd hands`.
    Microvm,
}

impl SandboxDriver {
    pub const ALL: [SandboxDriver; 4] =
        [SandboxDriver::Namespace, SandboxDriver::Oci, SandboxDriver::Gvisor, SandboxDriver::Microvm];

    /// The name environments give it.
    pub fn name(self) -> &'static str {
        match self {
            SandboxDriver::Namespace => "namespace",
            SandboxDriver::Oci => "oci",
            SandboxDriver::Gvisor => "gvisor",
            SandboxDriver::Microvm => "microvm",
        }
    }
}

impl std::fmt::Display for SandboxDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SandboxDriver {
    type Err = String;

    fn from_str(name: &str) -> Result<SandboxDriver, String> {
        SandboxDriver::ALL.into_iter().find(|driver| driver.name() == name).ok_or_else(|| {
            let known: Vec<&str> = SandboxDriver::ALL.iter().map(|driver| driver.name()).collect();
            format!("unknown sandbox driver {name:?}; available: {}", known.join(", "))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentSpec {
    pub name: String,
    /// The sandbox driver's name (see [`SandboxDriver`]; a string on the
    /// wire and in the log). [`EnvironmentSpec::driver`] parses it.
    pub driver: String,
    /// What the sandboxes may connect to: nothing (the default), anything,
    /// or an allowlist of hosts.
    pub network: Network,
    pub tool_timeout_ms: u64,
    /// Provision the sandbox when a turn starts, before the first model
    /// call, instead of at the first tool call.
    pub eager_provisioning: bool,
    /// Vaults whose secrets are injected into every tool call (as
    /// environment variables for `bash`) and scrubbed from every result.
    pub vaults: Vec<VaultId>,
    /// Resource limits of each sandbox; `None` keeps the node's default.
    pub resources: Resources,
}

/// An environment's resource limits for each of its sandboxes (all of the
/// sandbox's processes together). `None` keeps the node's default: 1 GiB,
/// 256 processes, one core.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_mib: Option<u64>,
    pub processes_max: Option<u64>,
    /// Thousandths of a core: 500 is half of one, 2000 two.
    pub cpu_millicores: Option<u64>,
}

impl Resources {
    fn validate(&self) -> Result<(), String> {
        let bounds = [
            ("memory_mib", self.memory_mib, limits::SANDBOX_MEMORY_MIB_MIN, limits::SANDBOX_MEMORY_MIB_MAX),
            ("processes_max", self.processes_max, limits::SANDBOX_PROCESSES_MIN, limits::SANDBOX_PROCESSES_MAX),
            (
                "cpu_millicores",
                self.cpu_millicores,
                limits::SANDBOX_CPU_MILLICORES_MIN,
                limits::SANDBOX_CPU_MILLICORES_MAX,
            ),
        ];
        for (name, value, min, max) in bounds {
            if value.is_some_and(|value| !(min..=max).contains(&value)) {
                return Err(format!("{name} is {min} to {max}"));
            }
        }
        Ok(())
    }
}

impl EnvironmentSpec {
    pub fn validate(&self) -> Result<(), ApiError> {
        let invalid = |message: String| Err(ApiError::InvalidRequest { message });
        if self.name.is_empty() || self.name.len() > limits::NAME_BYTES_MAX {
            return invalid(format!("an environment name is 1 to {} bytes", limits::NAME_BYTES_MAX));
        }
        self.driver()?;
        if let Err(reason) = self.network.validate() {
            return invalid(format!("network allowlist: {reason}"));
        }
        if let Err(reason) = self.resources.validate() {
            return invalid(reason);
        }
        if self.tool_timeout_ms == 0 || self.tool_timeout_ms > limits::TOOL_TIMEOUT_MS_MAX {
            return invalid(format!("tool_timeout_ms is 1 to {}", limits::TOOL_TIMEOUT_MS_MAX));
        }
        Ok(())
    }
}

impl EnvironmentSpec {
    /// The environment's sandbox driver; an unknown name is an invalid request.
    pub fn driver(&self) -> Result<SandboxDriver, ApiError> {
        self.driver.parse().map_err(|message| ApiError::InvalidRequest { message })
    }
}

/// An environment and every version it has had; versions start at 1. A
/// session's tools run in the environment's latest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub id: EnvironmentId,
    pub versions: Vec<EnvironmentSpec>,
    pub created_at_ms: u64,
}

impl Environment {
    pub fn latest(&self) -> Option<&EnvironmentSpec> {
        self.versions.last()
    }
}

/// What clients see of a vault: never the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultInfo {
    pub id: VaultId,
    pub name: String,
    pub secret_names: Vec<String>,
}

/// A vault as stored: each value sealed (nonce and AES-256-GCM ciphertext)
/// with the cluster's secrets key, which never enters the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedVault {
    pub id: VaultId,
    pub name: String,
    pub secrets: Vec<(String, Vec<u8>)>,
}

impl SealedVault {
    pub fn info(&self) -> VaultInfo {
        VaultInfo {
            id: self.id,
            name: self.name.clone(),
            secret_names: self.secrets.iter().map(|(name, _)| name.clone()).collect(),
        }
    }
}

/// Whether `name` can be an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= limits::NAME_BYTES_MAX
        && chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentSpec {
        AgentSpec {
            name: "helper".into(),
            model: "scripted:echo".into(),
            system: None,
            tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAsk }],
            custom_tools: vec![],
            max_model_calls_per_turn: 10,
            mcp_servers: vec![],
            mcp_toolsets: vec![],
        }
    }

    #[test]
    fn mcp_tools_are_named_and_resolved_through_their_toolset() {
        let mut agent = spec();
        agent.mcp_servers.push(McpServer { name: "docs".into(), url: "http://127.0.0.1:9/mcp".into() });
        agent.mcp_toolsets.push(McpToolset {
            server_name: "docs".into(),
            default_enabled: true,
            default_policy: MCP_DEFAULT_POLICY,
            configs: vec![
                McpToolConfig { name: "search".into(), enabled: true, policy: PermissionPolicy::AlwaysAllow },
                McpToolConfig { name: "delete".into(), enabled: false, policy: PermissionPolicy::AlwaysAllow },
            ],
        });
        assert!(agent.validate().is_ok());
        assert_eq!(mcp_tool_name("docs", "search"), "mcp__docs__search");
        assert_eq!(split_mcp_tool_name("mcp__docs__a__b"), Some(("docs", "a__b")));
        assert_eq!(split_mcp_tool_name("mcp__docs"), None);
        let policy = |name: &str| agent.mcp_tool(name).map(|(_, _, policy)| policy);
        assert_eq!(policy("mcp__docs__search"), Some(Some(PermissionPolicy::AlwaysAllow)));
        assert_eq!(policy("mcp__docs__fetch"), Some(Some(PermissionPolicy::AlwaysAsk)));
        assert_eq!(policy("mcp__docs__delete"), Some(None));
        assert_eq!(policy("mcp__other__search"), None);

        let mut unreferenced = agent.clone();
        unreferenced.mcp_toolsets.clear();
        assert!(unreferenced.validate().is_err());
        let mut bad_name = agent.clone();
        bad_name.mcp_servers[0].name = "a__b".into();
        bad_name.mcp_toolsets[0].server_name = "a__b".into();
        assert!(bad_name.validate().is_err());
        let mut bad_url = agent;
        bad_url.mcp_servers[0].url = "ftp://x".into();
        assert!(bad_url.validate().is_err());
    }

    #[test]
    fn agent_specs_are_validated() {
        assert!(spec().validate().is_ok());
        let mut unknown = spec();
        unknown.tools[0].name = "rm".into();
        assert!(matches!(unknown.validate(), Err(ApiError::InvalidRequest { .. })));
        let mut shadowing = spec();
        shadowing.custom_tools.push(CustomTool {
            name: "bash".into(),
            description: String::new(),
            input_schema: JsonText::parse("{}").unwrap(),
        });
        assert!(shadowing.validate().is_err());
        let mut no_calls = spec();
        no_calls.max_model_calls_per_turn = 0;
        assert!(no_calls.validate().is_err());
        assert_eq!(spec().tool_policy("bash"), Some(PermissionPolicy::AlwaysAsk));
        assert_eq!(spec().tool_policy("read"), None);
    }

    #[test]
    fn versions_start_at_one() {
        let agent = Agent { id: AgentId::from_random(1), versions: vec![spec()], created_at_ms: 0 };
        assert_eq!(agent.latest_version(), 1);
        assert!(agent.version(1).is_some());
        assert!(agent.version(0).is_none());
        assert!(agent.version(2).is_none());
    }

    #[test]
    fn environments_name_a_known_sandbox_driver() {
        let environment = |driver: &str| EnvironmentSpec {
            name: "env".into(),
            driver: driver.into(),
            network: Network::None,
            tool_timeout_ms: 1_000,
            eager_provisioning: false,
            vaults: vec![],
            resources: Resources::default(),
        };
        for driver in SandboxDriver::ALL {
            assert!(environment(driver.name()).validate().is_ok(), "{driver}");
            assert_eq!(environment(driver.name()).driver(), Ok(driver));
        }
        let Err(ApiError::InvalidRequest { message }) = environment("runsc").validate() else {
            panic!("an unknown driver was accepted");
        };
        assert!(message.contains("available: namespace, oci, gvisor, microvm"), "{message}");
        assert!(matches!(environment("bwrap").driver(), Err(ApiError::InvalidRequest { .. })));
        let mut bad_allowlist = environment("namespace");
        bad_allowlist.network = Network::Allowlist(vec!["example.com/path".into()]);
        let Err(ApiError::InvalidRequest { message }) = bad_allowlist.validate() else {
            panic!("a bad allowlist was accepted");
        };
        assert!(message.contains("\"example.com/path\": an entry names a host, not a path"), "{message}");
        let mut too_small = environment("namespace");
        too_small.resources.memory_mib = Some(1);
        let Err(ApiError::InvalidRequest { message }) = too_small.validate() else {
            panic!("1 MiB of memory was accepted");
        };
        assert!(message.contains("memory_mib is 64 to"), "{message}");
        let mut sized = environment("namespace");
        sized.resources = Resources { memory_mib: Some(512), processes_max: Some(64), cpu_millicores: Some(500) };
        assert!(sized.validate().is_ok());
    }
}
