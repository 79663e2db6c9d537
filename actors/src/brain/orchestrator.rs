//! Runs the agent loop for one session: claims an epoch, then repeatedly
//! reads the log, asks [`plan`] for the next step, and carries it out,
//! appending the outcome with the epoch. Holds no state between steps.

use std::sync::Arc;

use agentd_protocol::agent::{mcp_tool_name, AgentSpec, McpServer};
use agentd_protocol::api::{SessionInfo, SessionStatus};
use agentd_protocol::approval::ApprovalPolicy;
use agentd_protocol::event::{ContentBlock, Event, EventPayload, JsonText, ModelUsage, StopReason};
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::ApiError;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::plan::{plan, Step};
use super::tools::tool_specs;
use crate::mcp::{McpCallResult, McpError, McpTool};
use crate::model::{Block, ModelRequest, Models, ToolSpec};
use crate::sandbox::{SandboxError, ToolCall, ToolOutput};

/// Tokens a model may produce in one call.
const MODEL_OUTPUT_TOKENS_MAX: u32 = 4096;
/// Steps one run may take before it yields (a safety net against a planner
/// bug looping; the turn cap bounds real work long before this).
const STEPS_PER_RUN_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BrainError {
    /// Another orchestrator claimed the session; this one stops quietly.
    #[error("fenced: {0}")]
    Fenced(ApiError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("session {0} has no agent")]
    NoAgent(SessionId),
}

/// The session log as the brain needs it. The node implements it over the
/// local replica of the session's shard (the brain runs on the shard leader).
pub trait SessionLog: Send + Sync + 'static {
    fn session(&self, session_id: SessionId) -> BoxFuture<'_, Result<SessionInfo, ApiError>>;
    fn events(&self, session_id: SessionId) -> BoxFuture<'_, Result<Vec<Event>, ApiError>>;
    fn claim_epoch(&self, session_id: SessionId) -> BoxFuture<'_, Result<u64, ApiError>>;
    /// Appends with the run's epoch; `ApiError::StaleEpoch` when fenced.
    fn append(
        &self,
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
        epoch: u64,
    ) -> BoxFuture<'_, Result<u64, ApiError>>;
    fn agent(&self, session: &SessionInfo) -> BoxFuture<'_, Result<AgentSpec, ApiError>>;
    /// The approval policy of the session's workspace, read when the model
    /// asks for tools (a log without one has the empty policy).
    fn approval_policy(&self, session: &SessionInfo) -> BoxFuture<'_, Result<ApprovalPolicy, ApiError>> {
        let _ = session;
        Box::pin(async { Ok(ApprovalPolicy::empty(agentd_protocol::tenancy::DEFAULT_WORKSPACE)) })
    }
}

/// The session's MCP servers, spoken to by the node (never by the sandbox)
/// with the credential of the session's vaults whose `mcp_server_url` is the
/// server's. Results come back with every secret of the session redacted.
pub trait McpServers: Send + Sync + 'static {
    fn list_tools(&self, session: &SessionInfo, server: &McpServer) -> BoxFuture<'_, Result<Vec<McpTool>, McpError>>;
    fn call_tool(
        &self,
        session: &SessionInfo,
        server: &McpServer,
        tool: &str,
        input_json: &str,
    ) -> BoxFuture<'_, Result<McpCallResult, McpError>>;
}

/// A brain without MCP (the simulator's): every server is unreachable.
pub struct NoMcp;

impl McpServers for NoMcp {
    fn list_tools(&self, _: &SessionInfo, server: &McpServer) -> BoxFuture<'_, Result<Vec<McpTool>, McpError>> {
        let error = McpError::connection(&server.url, "this node has no MCP client");
        Box::pin(async move { Err(error) })
    }

    fn call_tool(
        &self,
        _: &SessionInfo,
        server: &McpServer,
        _: &str,
        _: &str,
    ) -> BoxFuture<'_, Result<McpCallResult, McpError>> {
        let error = McpError::connection(&server.url, "this node has no MCP client");
        Box::pin(async move { Err(error) })
    }
}

/// The session's sandbox, provisioned on first use.
pub trait Hands: Send + Sync + 'static {
    fn execute(&self, session: &SessionInfo, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>>;
    /// Called when a turn starts, before the first model call: an
    /// environment that asks for eager provisioning gets its sandbox now.
    fn on_turn_start(&self, session: &SessionInfo) -> BoxFuture<'_, Result<(), SandboxError>>;
    /// Called when the session is terminated: its sandbox and workspace go.
    fn release(&self, session: &SessionInfo) -> BoxFuture<'_, ()>;
}

/// The agent loop of one node.
pub struct Brain {
    log: Arc<dyn SessionLog>,
    hands: Arc<dyn Hands>,
    models: Models,
    mcp: Arc<dyn McpServers>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Nothing left to do until the client sends more.
    Idle,
    /// Another orchestrator took over the session.
    Fenced,
}

impl Brain {
    pub fn new(log: Arc<dyn SessionLog>, hands: Arc<dyn Hands>, models: Models) -> Self {
        Self { log, hands, models, mcp: Arc::new(NoMcp) }
    }

    /// The brain with `mcp` for its agents' MCP servers.
    pub fn with_mcp(mut self, mcp: Arc<dyn McpServers>) -> Self {
        self.mcp = mcp;
        self
    }

    /// Releases a terminated session's sandbox (see [`Hands::release`]).
    pub async fn release(&self, session_id: SessionId) {
        match self.log.session(session_id).await {
            Ok(session) => self.hands.release(&session).await,
            Err(error) => {
                tracing::warn!(%session_id, %error, "cannot read a terminated session to release its sandbox")
            }
        }
    }

    /// Wakes a session: claims a new epoch and runs the loop until there is
    /// nothing to do.
    pub async fn run(&self, session_id: SessionId) -> Result<RunOutcome, BrainError> {
        let session = self.log.session(session_id).await?;
        // The watcher that saw the termination released its sandbox.
        if session.status == SessionStatus::Terminated {
            return Ok(RunOutcome::Idle);
        }
        if session.agent.is_none() {
            return Err(BrainError::NoAgent(session_id));
        }
        let agent = self.log.agent(&session).await?;
        // Claim an epoch only when there is work: a wake with nothing to do
        // (a duplicate, a follower's late wake) writes nothing.
        if plan(&agent, &self.log.events(session_id).await?) == Step::Wait {
            return Ok(RunOutcome::Idle);
        }
        let epoch = self.log.claim_epoch(session_id).await?;
        let run = Run { brain: self, session, agent, epoch, mcp_tools: std::sync::Mutex::new(None) };
        match run.loop_until_idle().await {
            Err(BrainError::Fenced(error)) => {
                tracing::info!(%session_id, %error, "orchestrator fenced by a newer one");
                Ok(RunOutcome::Fenced)
            }
            other => other,
        }
    }
}

struct Run<'a> {
    brain: &'a Brain,
    session: SessionInfo,
    agent: AgentSpec,
    epoch: u64,
    /// The agent's MCP tools as listed once in this run (servers that could
    /// not list them were reported then and are left out).
    mcp_tools: std::sync::Mutex<Option<Vec<ToolSpec>>>,
}

impl Run<'_> {
    async fn loop_until_idle(&self) -> Result<RunOutcome, BrainError> {
        let session_id = self.session.session_id;
        for _ in 0..STEPS_PER_RUN_MAX {
            let events = self.brain.log.events(session_id).await?;
            let after_seq = events.last().map_or(0, |event| event.seq);
            let step = plan(&self.agent, &events);
            tracing::debug!(%session_id, ?step, "step");
            let mut appender = Appender { run: self, after_seq, ordinal: 0 };
            match step {
                Step::Wait => return Ok(RunOutcome::Idle),
                Step::Start => {
                    if let Err(error) = self.brain.hands.on_turn_start(&self.session).await {
                        // The first tool call will try again (and report it).
                        tracing::warn!(%session_id, %error, "eager sandbox provisioning failed");
                    }
                    appender.append(EventPayload::SessionStatusRunning).await?;
                }
                Step::CallModel { messages } => self.call_model(&mut appender, messages).await?,
                Step::RunTool { tool_use_id, seq, name, input_json } => {
                    let idempotency_key = idempotency_key(session_id, seq, &name);
                    let call = ToolCall { name, input_json, idempotency_key, secrets: Vec::new() };
                    let output = match self.brain.hands.execute(&self.session, call).await {
                        Ok(output) => output,
                        Err(error) => ToolOutput { content: format!("the sandbox failed: {error}"), is_error: true },
                    };
                    appender.tool_result(tool_use_id, output.content, output.is_error).await?;
                }
                Step::RejectTool { tool_use_id, message } => appender.tool_result(tool_use_id, message, true).await?,
                Step::CallMcpTool { tool_use_id, server, tool, input_json } => {
                    self.call_mcp_tool(&mut appender, tool_use_id, &server, &tool, &input_json).await?
                }
                Step::RejectMcpTool { tool_use_id, message } => {
                    appender.mcp_tool_result(tool_use_id, message, true).await?
                }
                Step::AwaitClient { event_ids } => {
                    let stop_reason = StopReason::RequiresAction { event_ids };
                    appender.append(EventPayload::SessionStatusIdle { stop_reason }).await?;
                }
                Step::Stop { stop_reason, error } => {
                    if let Some((kind, message)) = error {
                        appender.append(EventPayload::SessionError { kind, message }).await?;
                    }
                    appender.append(EventPayload::SessionStatusIdle { stop_reason }).await?;
                }
            }
        }
        tracing::error!(%session_id, "orchestrator took {STEPS_PER_RUN_MAX} steps in one run; yielding");
        Ok(RunOutcome::Idle)
    }

    /// Records the call's start, then calls: a call cut off after the start
    /// is recorded is reported as interrupted by the next run, never re-sent.
    async fn call_mcp_tool(
        &self,
        appender: &mut Appender<'_, '_>,
        tool_use_id: EventId,
        server: &McpServer,
        tool: &str,
        input_json: &str,
    ) -> Result<(), BrainError> {
        appender.append(EventPayload::SpanMcpToolCallStart { mcp_tool_use_id: tool_use_id }).await?;
        match self.brain.mcp.call_tool(&self.session, server, tool, input_json).await {
            Ok(result) => appender.mcp_tool_result(tool_use_id, result.text, result.is_error).await,
            Err(error) => {
                tracing::warn!(session = %self.session.session_id, server = %server.name, %error, "MCP call failed");
                appender.mcp_error(&server.name, &error).await?;
                appender.mcp_tool_result(tool_use_id, error.to_string(), true).await
            }
        }
    }

    /// The MCP tools the model is offered: each server's listed tools that
    /// its toolset enables, listed once per run. A server that cannot list
    /// them is reported (`session.error`) and left out; the turn goes on.
    async fn mcp_tool_specs(&self, appender: &mut Appender<'_, '_>) -> Result<Vec<ToolSpec>, BrainError> {
        if let Some(specs) = agentd_protocol::sync::lock(&self.mcp_tools).clone() {
            return Ok(specs);
        }
        let mut specs = Vec::new();
        for server in &self.agent.mcp_servers {
            let Some(toolset) = self.agent.mcp_toolset(&server.name) else { continue };
            match self.brain.mcp.list_tools(&self.session, server).await {
                Ok(tools) => {
                    specs.extend(tools.into_iter().filter(|tool| toolset.policy(&tool.name).is_some()).map(|tool| {
                        ToolSpec {
                            name: mcp_tool_name(&server.name, &tool.name),
                            description: tool.description,
                            input_schema_json: tool.input_schema_json,
                        }
                    }))
                }
                Err(error) => {
                    tracing::warn!(session = %self.session.session_id, server = %server.name, %error, "MCP tools/list failed");
                    appender.mcp_error(&server.name, &error).await?;
                }
            }
        }
        *agentd_protocol::sync::lock(&self.mcp_tools) = Some(specs.clone());
        Ok(specs)
    }

    /// The event recording the model's call of tool `name`: an MCP tool use,
    /// a custom one or a built-in one, flagged when the workspace's approval
    /// policy says so.
    fn tool_use_event(&self, policy: &ApprovalPolicy, name: String, input: JsonText) -> EventPayload {
        let gate = policy.gate(&name);
        if let Some((server, tool, _)) = self.agent.mcp_tool(&name) {
            return EventPayload::AgentMcpToolUse { mcp_server_name: server.name.clone(), name: tool, input, gate };
        }
        let custom = self.agent.is_custom_tool(&name);
        match gate {
            Some(gate) => EventPayload::AgentGatedToolUse { name, input, custom, gate },
            None if custom => EventPayload::AgentCustomToolUse { name, input },
            None => EventPayload::AgentToolUse { name, input },
        }
    }

    async fn call_model(
        &self,
        appender: &mut Appender<'_, '_>,
        messages: Vec<crate::model::Message>,
    ) -> Result<(), BrainError> {
        let mut tools = tool_specs(&self.agent);
        tools.extend(self.mcp_tool_specs(appender).await?);
        let model = self.agent.model.clone();
        let start = appender.append(EventPayload::SpanModelRequestStart { model: model.clone() }).await?;
        let request = ModelRequest {
            model: model.clone(),
            system: self.agent.system.clone(),
            messages,
            tools,
            max_tokens: MODEL_OUTPUT_TOKENS_MAX,
        };
        let response = match self.brain.models.provider(&model) {
            Ok(provider) => provider.complete(request).await,
            Err(error) => Err(error),
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(session = %self.session.session_id, %error, "model call failed");
                appender
                    .append(EventPayload::SpanModelRequestEnd {
                        model_request_start_id: start,
                        is_error: true,
                        model_usage: ModelUsage::default(),
                    })
                    .await?;
                appender
                    .append(EventPayload::SessionError { kind: error.kind().into(), message: error.to_string() })
                    .await?;
                let stop_reason = StopReason::RetriesExhausted;
                appender.append(EventPayload::SessionStatusIdle { stop_reason }).await?;
                return Ok(());
            }
        };
        let texts: Vec<ContentBlock> = response
            .content
            .iter()
            .filter_map(|block| match block {
                Block::Text { text } => Some(ContentBlock::text(text.clone())),
                _ => None,
            })
            .collect();
        let tool_uses: Vec<(String, String)> = response
            .content
            .into_iter()
            .filter_map(|block| match block {
                Block::ToolUse { name, input_json, .. } => Some((name, input_json)),
                _ => None,
            })
            .collect();
        // An empty answer still ends the model's part, so the turn can end.
        if !texts.is_empty() || tool_uses.is_empty() {
            appender.append(EventPayload::AgentMessage { content: texts }).await?;
        }
        // Read once the model asks for a tool; a policy that cannot be read
        // fails the step (to be retried), never lets a use through unflagged.
        let policy = match tool_uses.is_empty() {
            true => ApprovalPolicy::empty(agentd_protocol::tenancy::DEFAULT_WORKSPACE),
            false => self.brain.log.approval_policy(&self.session).await?,
        };
        for (name, input_json) in tool_uses {
            // Input that is not JSON is kept (as a JSON string) so that the
            // tool answers it with an error and the model can correct itself.
            let input = JsonText::parse(input_json.clone())
                .or_else(|_| JsonText::parse(serde_json::Value::String(input_json).to_string()))?;
            appender.append(self.tool_use_event(&policy, name, input)).await?;
        }
        let model_usage = response.usage;
        appender
            .append(EventPayload::SpanModelRequestEnd { model_request_start_id: start, is_error: false, model_usage })
            .await?;
        Ok(())
    }
}

/// Appends one step's events. Event ids derive from the session, the epoch,
/// the log position the step was planned at and the event's place in the
/// step, so an append retried after a lost acknowledgement is recognised
/// and never written twice.
struct Appender<'run, 'brain> {
    run: &'run Run<'brain>,
    after_seq: u64,
    ordinal: u32,
}

impl Appender<'_, '_> {
    async fn append(&mut self, payload: EventPayload) -> Result<EventId, BrainError> {
        let session_id = self.run.session.session_id;
        let mut hasher = Sha256::new();
        hasher.update(session_id.0);
        hasher.update(self.run.epoch.to_be_bytes());
        hasher.update(self.after_seq.to_be_bytes());
        hasher.update(self.ordinal.to_be_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let event_id = EventId(bytes);
        self.ordinal += 1;
        match self.run.brain.log.append(session_id, event_id, payload, self.run.epoch).await {
            Ok(_) => Ok(event_id),
            Err(error @ ApiError::StaleEpoch { .. }) => Err(BrainError::Fenced(error)),
            Err(error) => Err(BrainError::Api(error)),
        }
    }

    async fn tool_result(&mut self, tool_use_id: EventId, content: String, is_error: bool) -> Result<(), BrainError> {
        let payload =
            EventPayload::AgentToolResult { tool_use_id, content: vec![ContentBlock::text(content)], is_error };
        self.append(payload).await.map(|_| ())
    }

    async fn mcp_tool_result(
        &mut self,
        mcp_tool_use_id: EventId,
        content: String,
        is_error: bool,
    ) -> Result<(), BrainError> {
        let content = vec![ContentBlock::text(content)];
        self.append(EventPayload::AgentMcpToolResult { mcp_tool_use_id, content, is_error }).await.map(|_| ())
    }

    /// `session.error` naming the MCP server that failed, and how.
    async fn mcp_error(&mut self, server: &str, error: &McpError) -> Result<(), BrainError> {
        let payload = EventPayload::SessionMcpError {
            kind: error.error_type().into(),
            message: error.to_string(),
            mcp_server_name: server.to_string(),
        };
        self.append(payload).await.map(|_| ())
    }
}

/// `sha256(session_id:seq:tool_name)`: the key under which a sandbox records
/// a tool call's effect, so a call re-sent after a crash runs at most once.
pub fn idempotency_key(session_id: SessionId, seq: u64, tool_name: &str) -> String {
    let digest = Sha256::digest(format!("{session_id}:{seq}:{tool_name}").as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}
