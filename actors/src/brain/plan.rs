//! The agent loop's decisions, as a pure function of the session log.
//!
//! The orchestrator keeps no state of its own: after every step it reads the
//! log again and asks [`plan`] what to do next. Whatever was interrupted by
//! a crash (a model call with no recorded end, a tool use with no result) is
//! simply what the log says is still to do, so a new orchestrator on another
//! node carries on where the old one stopped.

use agentd_protocol::agent::{mcp_tool_name, AgentSpec, McpServer, PermissionPolicy};
use agentd_protocol::approval::ApprovalGate;
use agentd_protocol::event::{Confirmation, ContentBlock, Event, EventPayload, StopReason};
use agentd_protocol::ids::EventId;
use agentd_protocol::limits::STUCK_REPEATS_MAX;

use crate::model::{Block, Message, Role};

/// What the orchestrator should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until the client sends something.
    Wait,
    /// A turn begins: record `session.status_running`.
    Start,
    /// Ask the model, with the whole conversation so far.
    CallModel { messages: Vec<Message> },
    /// Run an allowed built-in tool use in the sandbox. `seq` is the tool
    /// use's sequence number, part of its idempotency key.
    RunTool { tool_use_id: EventId, seq: u64, name: String, input_json: String },
    /// Answer a tool use with an error without running it.
    RejectTool { tool_use_id: EventId, message: String },
    /// Call an allowed MCP tool use: record the call's start, send
    /// `tools/call`, record the result.
    CallMcpTool { tool_use_id: EventId, server: McpServer, tool: String, input_json: String },
    /// Answer an MCP tool use with an error without calling it (not
    /// available, denied, or cut off by a crash after its start was recorded).
    RejectMcpTool { tool_use_id: EventId, message: String },
    /// Go idle until the client answers these tool uses.
    AwaitClient { event_ids: Vec<EventId> },
    /// End the turn; `error` is recorded as `session.error` first.
    Stop { stop_reason: StopReason, error: Option<(String, String)> },
}

/// A tool use the log has not answered yet.
struct OpenToolUse {
    seq: u64,
    /// The tool's name (for an MCP tool, its name on the server).
    name: String,
    input_json: String,
    kind: UseKind,
    /// What the workspace's approval policy decided about it.
    gate: Option<ApprovalGate>,
    /// For an MCP tool: its call's start is recorded, so it may have been sent.
    started: bool,
    confirmation: Option<(Confirmation, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UseKind {
    BuiltIn,
    Custom,
    Mcp { server: String },
}

/// What the model was told when an MCP call was cut off.
pub const MCP_INTERRUPTED_MESSAGE: &str = "the MCP call was interrupted (the node running it stopped) and was not \
                                           sent again: whether it took effect is unknown";

/// Decides the next step for a session running `agent`.
pub fn plan(agent: &AgentSpec, events: &[Event]) -> Step {
    let turn = match current_turn(events) {
        Ok(turn) => turn,
        Err(step) => return step,
    };
    if let Some(step) = tool_step(agent, events) {
        return step;
    }
    model_step(agent, events, turn)
}

/// The events of the turn in progress, from its `session.status_running`
/// on; or the step to take when no turn runs (wait, start one) or the
/// client interrupted it.
fn current_turn(events: &[Event]) -> Result<&[Event], Step> {
    let turn_start = events.iter().rposition(|event| matches!(event.payload, EventPayload::SessionStatusIdle { .. }));
    let since_idle = &events[turn_start.map_or(0, |index| index + 1)..];
    let wakes =
        |event: &Event| event.payload.is_user_event() || event.payload == EventPayload::SessionStatusRescheduled;
    if !since_idle.iter().any(wakes) {
        return Err(Step::Wait);
    }
    let Some(running) = since_idle.iter().position(|event| event.payload == EventPayload::SessionStatusRunning) else {
        return Err(Step::Start);
    };
    let turn = &since_idle[running..];
    if turn.iter().any(|event| event.payload == EventPayload::UserInterrupt) {
        return Err(Step::Stop { stop_reason: StopReason::EndTurn, error: None });
    }
    Ok(turn)
}

/// What the open tool uses call for: run or reject the first one that can
/// go, else wait for the client's answers; `None` when none is open.
fn tool_step(agent: &AgentSpec, events: &[Event]) -> Option<Step> {
    let mut waiting = Vec::new();
    for (tool_use_id, tool_use) in &open_tool_uses(events) {
        let tool_use_id = *tool_use_id;
        if tool_use.started {
            return Some(Step::RejectMcpTool { tool_use_id, message: MCP_INTERRUPTED_MESSAGE.into() });
        }
        // A use the workspace flagged waits for its confirmation first,
        // whatever the agent's own policy says.
        let confirmed = match (&tool_use.gate, &tool_use.confirmation) {
            (_, Some((Confirmation::Deny, message))) => {
                let reason = message.clone().unwrap_or_else(|| "no reason given".into());
                return Some(reject(tool_use_id, tool_use, format!("the user denied this tool call: {reason}")));
            }
            (Some(_), None) => {
                waiting.push(tool_use_id);
                continue;
            }
            (_, Some((Confirmation::Allow, _))) => true,
            (None, None) => false,
        };
        if tool_use.kind == UseKind::Custom {
            // The client runs it and answers with its result.
            waiting.push(tool_use_id);
            continue;
        }
        let Some(policy) = policy_of(agent, tool_use) else {
            return Some(reject(
                tool_use_id,
                tool_use,
                format!("tool {:?} is not available to this agent", tool_use.name),
            ));
        };
        // `auto` decides to ask, always: the safe choice.
        if confirmed || policy == PermissionPolicy::AlwaysAllow {
            return Some(run(agent, tool_use_id, tool_use));
        }
        waiting.push(tool_use_id);
    }
    (!waiting.is_empty()).then_some(Step::AwaitClient { event_ids: waiting })
}

/// The agent's policy for an open tool use; `None` when the tool is not
/// available to it.
fn policy_of(agent: &AgentSpec, tool_use: &OpenToolUse) -> Option<PermissionPolicy> {
    match &tool_use.kind {
        UseKind::BuiltIn => agent.tool_policy(&tool_use.name),
        UseKind::Custom => Some(PermissionPolicy::AlwaysAsk),
        UseKind::Mcp { server } => agent.mcp_toolset(server).and_then(|toolset| toolset.policy(&tool_use.name)),
    }
}

fn run(agent: &AgentSpec, tool_use_id: EventId, tool_use: &OpenToolUse) -> Step {
    match &tool_use.kind {
        UseKind::Mcp { server } => match agent.mcp_server(server) {
            Some(server) => Step::CallMcpTool {
                tool_use_id,
                server: server.clone(),
                tool: tool_use.name.clone(),
                input_json: tool_use.input_json.clone(),
            },
            None => Step::RejectMcpTool { tool_use_id, message: format!("MCP server {server:?} is not available") },
        },
        UseKind::BuiltIn | UseKind::Custom => Step::RunTool {
            tool_use_id,
            seq: tool_use.seq,
            name: tool_use.name.clone(),
            input_json: tool_use.input_json.clone(),
        },
    }
}

fn reject(tool_use_id: EventId, tool_use: &OpenToolUse, message: String) -> Step {
    match tool_use.kind {
        UseKind::Mcp { .. } => Step::RejectMcpTool { tool_use_id, message },
        UseKind::BuiltIn | UseKind::Custom => Step::RejectTool { tool_use_id, message },
    }
}

/// With no tool use open: call the model, unless the model spoke last (the
/// turn is over) or a stop condition holds (the turn cap, the stuck detector).
fn model_step(agent: &AgentSpec, events: &[Event], turn: &[Event]) -> Step {
    let model_calls =
        turn.iter().filter(|event| matches!(event.payload, EventPayload::SpanModelRequestStart { .. })).count();
    let last_said = events.iter().rev().find_map(|event| match &event.payload {
        EventPayload::UserMessage { .. }
        | EventPayload::AgentToolResult { .. }
        | EventPayload::AgentMcpToolResult { .. }
        | EventPayload::UserCustomToolResult { .. } => Some(true),
        EventPayload::AgentMessage { .. }
        | EventPayload::AgentToolUse { .. }
        | EventPayload::AgentMcpToolUse { .. }
        | EventPayload::AgentGatedToolUse { .. }
        | EventPayload::AgentCustomToolUse { .. } => Some(false),
        _ => None,
    });
    if last_said != Some(true) {
        // The model spoke last and asked for no tool: the turn is over.
        return Step::Stop { stop_reason: StopReason::EndTurn, error: None };
    }
    if model_calls >= agent.max_model_calls_per_turn as usize {
        return Step::Stop {
            stop_reason: StopReason::EndTurn,
            error: Some((
                "max_model_calls".into(),
                format!("stopped after {model_calls} model calls in one turn (the agent's limit)"),
            )),
        };
    }
    if let Some(repeated) = stuck_on(turn) {
        return Step::Stop {
            stop_reason: StopReason::EndTurn,
            error: Some((
                "stuck".into(),
                format!("stopped: the model called {repeated} with the same input {STUCK_REPEATS_MAX} times in a row"),
            )),
        };
    }
    Step::CallModel { messages: conversation(events) }
}

/// Tool uses without a result, in log order, with any confirmation given.
fn open_tool_uses(events: &[Event]) -> Vec<(EventId, OpenToolUse)> {
    let mut open: Vec<(EventId, OpenToolUse)> = Vec::new();
    for event in events {
        if let Some(tool_use) = opened(event) {
            open.push((event.id, tool_use));
            continue;
        }
        if let Some((tool_use_id, result, deny_message)) = event.payload.confirmation() {
            if let Some((_, tool_use)) = open.iter_mut().find(|(id, _)| *id == tool_use_id) {
                tool_use.confirmation = Some((result, deny_message.cloned()));
            }
            continue;
        }
        match &event.payload {
            EventPayload::SpanMcpToolCallStart { mcp_tool_use_id } => {
                if let Some((_, tool_use)) = open.iter_mut().find(|(id, _)| id == mcp_tool_use_id) {
                    tool_use.started = true;
                }
            }
            EventPayload::AgentToolResult { tool_use_id: answered, .. }
            | EventPayload::AgentMcpToolResult { mcp_tool_use_id: answered, .. }
            | EventPayload::UserCustomToolResult { custom_tool_use_id: answered, .. } => {
                open.retain(|(id, _)| id != answered);
            }
            _ => {}
        }
    }
    open
}

/// The tool use `event` opens, if it is one.
fn opened(event: &Event) -> Option<OpenToolUse> {
    let (name, input, kind, gate) = match &event.payload {
        EventPayload::AgentToolUse { name, input } => (name, input, UseKind::BuiltIn, None),
        EventPayload::AgentCustomToolUse { name, input } => (name, input, UseKind::Custom, None),
        EventPayload::AgentGatedToolUse { name, input, custom, gate } => {
            let kind = if *custom { UseKind::Custom } else { UseKind::BuiltIn };
            (name, input, kind, Some(gate.clone()))
        }
        EventPayload::AgentMcpToolUse { mcp_server_name, name, input, gate } => {
            (name, input, UseKind::Mcp { server: mcp_server_name.clone() }, gate.clone())
        }
        _ => return None,
    };
    Some(OpenToolUse {
        seq: event.seq,
        name: name.clone(),
        input_json: input.as_str().to_string(),
        kind,
        gate,
        started: false,
        confirmation: None,
    })
}

/// The name the model knows a tool use by, and its input, if `payload` is one.
fn model_tool_use(payload: &EventPayload) -> Option<(String, &str)> {
    match payload {
        EventPayload::AgentToolUse { name, input }
        | EventPayload::AgentCustomToolUse { name, input }
        | EventPayload::AgentGatedToolUse { name, input, .. } => Some((name.clone(), input.as_str())),
        EventPayload::AgentMcpToolUse { mcp_server_name, name, input, .. } => {
            Some((mcp_tool_name(mcp_server_name, name), input.as_str()))
        }
        _ => None,
    }
}

/// The tool name if the model's last [`STUCK_REPEATS_MAX`] responses in this
/// turn each asked for exactly the same single tool call.
fn stuck_on(turn: &[Event]) -> Option<String> {
    // Each model response is the run of agent events between two span ends.
    let mut responses: Vec<Vec<(String, String)>> = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for event in turn {
        match &event.payload {
            EventPayload::SpanModelRequestStart { .. } => current.clear(),
            payload if model_tool_use(payload).is_some() => {
                if let Some((name, input)) = model_tool_use(payload) {
                    current.push((name, input.to_string()));
                }
            }
            EventPayload::SpanModelRequestEnd { is_error: false, .. }
            | EventPayload::SpanModelRequestEndWithoutUsage { is_error: false, .. } => {
                responses.push(std::mem::take(&mut current))
            }
            _ => {}
        }
    }
    let last = responses.last()?;
    if last.is_empty() || responses.len() < STUCK_REPEATS_MAX {
        return None;
    }
    let repeated = responses[responses.len() - STUCK_REPEATS_MAX..].iter().all(|response| response == last);
    repeated.then(|| last[0].0.clone())
}

/// The conversation as the model sees it, with tool use ids taken from the
/// events that recorded them. Consecutive messages of one role are merged,
/// since model APIs want the roles to alternate.
pub fn conversation(events: &[Event]) -> Vec<Message> {
    let mut messages: Vec<Message> = Vec::new();
    let mut push = |role: Role, block: Block| match messages.last_mut() {
        Some(last) if last.role == role => last.content.push(block),
        _ => messages.push(Message { role, content: vec![block] }),
    };
    let text_of = |content: &[ContentBlock]| {
        content.iter().map(|ContentBlock::Text { text }| text.as_str()).collect::<Vec<_>>().join("\n")
    };
    for event in events {
        match &event.payload {
            EventPayload::UserMessage { content } => push(Role::User, Block::Text { text: text_of(content) }),
            EventPayload::AgentMessage { content } => push(Role::Assistant, Block::Text { text: text_of(content) }),
            payload if model_tool_use(payload).is_some() => {
                if let Some((name, input)) = model_tool_use(payload) {
                    let id = event.id.to_string();
                    push(Role::Assistant, Block::ToolUse { id, name, input_json: input.to_string() });
                }
            }
            EventPayload::AgentToolResult { tool_use_id, content, is_error }
            | EventPayload::AgentMcpToolResult { mcp_tool_use_id: tool_use_id, content, is_error } => push(
                Role::User,
                Block::ToolResult {
                    tool_use_id: tool_use_id.to_string(),
                    content: text_of(content),
                    is_error: *is_error,
                },
            ),
            EventPayload::UserCustomToolResult { custom_tool_use_id, content, is_error } => push(
                Role::User,
                Block::ToolResult {
                    tool_use_id: custom_tool_use_id.to_string(),
                    content: text_of(content),
                    is_error: *is_error,
                },
            ),
            _ => {}
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use agentd_protocol::agent::{BuiltInTool, CustomTool, McpToolConfig, McpToolset};
    use agentd_protocol::event::{JsonText, ModelUsage};
    use agentd_protocol::ids::SessionId;

    use super::*;

    fn agent(max_calls: u32) -> AgentSpec {
        AgentSpec {
            name: "test".into(),
            model: "scripted:echo".into(),
            system: None,
            tools: vec![
                BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow },
                BuiltInTool { name: "write".into(), policy: PermissionPolicy::AlwaysAsk },
            ],
            custom_tools: vec![CustomTool {
                name: "lookup".into(),
                description: "asks the client".into(),
                input_schema: JsonText::parse("{}").unwrap(),
            }],
            max_model_calls_per_turn: max_calls,
            mcp_servers: vec![McpServer { name: "docs".into(), url: "http://127.0.0.1:9/mcp".into() }],
            mcp_toolsets: vec![McpToolset {
                server_name: "docs".into(),
                default_enabled: true,
                default_policy: PermissionPolicy::AlwaysAsk,
                configs: vec![McpToolConfig {
                    name: "search".into(),
                    enabled: true,
                    policy: PermissionPolicy::AlwaysAllow,
                }],
            }],
        }
    }

    fn mcp_use(name: &str, gate: Option<ApprovalGate>) -> EventPayload {
        EventPayload::AgentMcpToolUse {
            mcp_server_name: "docs".into(),
            name: name.into(),
            input: JsonText::parse(r#"{"q":"x"}"#).unwrap(),
            gate,
        }
    }

    fn gate(approver_only: bool) -> ApprovalGate {
        ApprovalGate { policy_version: 2, rule: "bash".into(), approver_only }
    }

    #[test]
    fn allowed_mcp_tools_are_called_and_asked_ones_wait() {
        let mut log = Log::new();
        log.user("search");
        log.push(EventPayload::SessionStatusRunning);
        let ids = log.model_turn(vec![mcp_use("search", None), mcp_use("fetch", None)]);
        let Step::CallMcpTool { tool_use_id, server, tool, input_json } = plan(&agent(10), &log.0) else {
            panic!("expected an MCP call")
        };
        assert_eq!((tool_use_id, server.name.as_str(), tool.as_str()), (ids[0], "docs", "search"));
        assert_eq!(input_json, r#"{"q":"x"}"#);
        log.push(EventPayload::AgentMcpToolResult {
            mcp_tool_use_id: ids[0],
            content: vec![ContentBlock::text("found")],
            is_error: false,
        });
        // `fetch` follows the toolset's default: always ask.
        assert_eq!(plan(&agent(10), &log.0), Step::AwaitClient { event_ids: vec![ids[1]] });
        let messages = conversation(&log.0);
        assert!(messages
            .iter()
            .flat_map(|message| &message.content)
            .any(|block| matches!(block, Block::ToolUse { name, .. } if name == "mcp__docs__search")));
    }

    #[test]
    fn an_mcp_call_whose_start_is_recorded_is_never_sent_again() {
        let mut log = Log::new();
        log.user("search");
        log.push(EventPayload::SessionStatusRunning);
        let ids = log.model_turn(vec![mcp_use("search", None)]);
        log.push(EventPayload::SpanMcpToolCallStart { mcp_tool_use_id: ids[0] });
        assert_eq!(
            plan(&agent(10), &log.0),
            Step::RejectMcpTool { tool_use_id: ids[0], message: MCP_INTERRUPTED_MESSAGE.into() }
        );
    }

    #[test]
    fn a_use_the_workspace_flags_waits_whatever_the_agents_policy() {
        let mut log = Log::new();
        log.user("go");
        log.push(EventPayload::SessionStatusRunning);
        let bash = EventPayload::AgentGatedToolUse {
            name: "bash".into(),
            input: JsonText::parse(r#"{"command":"ls"}"#).unwrap(),
            custom: false,
            gate: gate(true),
        };
        let ids = log.model_turn(vec![bash, mcp_use("search", Some(gate(false)))]);
        // Both are always_allow for the agent; the workspace asks.
        assert_eq!(plan(&agent(10), &log.0), Step::AwaitClient { event_ids: vec![ids[0], ids[1]] });
        log.push(EventPayload::UserToolDecision {
            tool_use_id: ids[0],
            result: Confirmation::Allow,
            deny_message: None,
            decided_by: None,
            policy_version: Some(2),
        });
        assert!(matches!(plan(&agent(10), &log.0), Step::RunTool { tool_use_id, .. } if tool_use_id == ids[0]));
        log.result(ids[0]);
        assert_eq!(plan(&agent(10), &log.0), Step::AwaitClient { event_ids: vec![ids[1]] });
        log.push(EventPayload::UserToolConfirmation {
            tool_use_id: ids[1],
            result: Confirmation::Deny,
            deny_message: None,
        });
        assert!(matches!(plan(&agent(10), &log.0), Step::RejectMcpTool { tool_use_id, .. } if tool_use_id == ids[1]));
    }

    /// A log built one payload at a time; ids are the sequence numbers.
    struct Log(Vec<Event>);

    impl Log {
        fn new() -> Self {
            Log(Vec::new())
        }

        fn push(&mut self, payload: EventPayload) -> EventId {
            let seq = self.0.len() as u64 + 1;
            let id = EventId::from_random(u128::from(seq));
            self.0.push(Event { session_id: SessionId::from_random(1), seq, id, processed_at_ms: seq, payload });
            id
        }

        fn user(&mut self, text: &str) -> EventId {
            self.push(EventPayload::user_text(text))
        }

        fn model_turn(&mut self, payloads: Vec<EventPayload>) -> Vec<EventId> {
            let start = self.push(EventPayload::SpanModelRequestStart { model: "m".into() });
            let ids = payloads.into_iter().map(|payload| self.push(payload)).collect();
            let model_usage = ModelUsage::default();
            self.push(EventPayload::SpanModelRequestEnd {
                model_request_start_id: start,
                is_error: false,
                model_usage,
            });
            ids
        }

        fn tool_use(name: &str, input: &str) -> EventPayload {
            EventPayload::AgentToolUse { name: name.into(), input: JsonText::parse(input).unwrap() }
        }

        fn result(&mut self, tool_use_id: EventId) {
            self.push(EventPayload::AgentToolResult {
                tool_use_id,
                content: vec![ContentBlock::text("done")],
                is_error: false,
            });
        }
    }

    #[test]
    fn a_turn_starts_calls_the_model_and_ends_when_the_model_stops() {
        let mut log = Log::new();
        assert_eq!(plan(&agent(10), &log.0), Step::Wait);
        log.user("hello");
        assert_eq!(plan(&agent(10), &log.0), Step::Start);
        log.push(EventPayload::SessionStatusRunning);
        let Step::CallModel { messages } = plan(&agent(10), &log.0) else { panic!("expected a model call") };
        assert_eq!(messages, vec![Message { role: Role::User, content: vec![Block::Text { text: "hello".into() }] }]);
        log.model_turn(vec![EventPayload::AgentMessage { content: vec![ContentBlock::text("hi!")] }]);
        assert_eq!(plan(&agent(10), &log.0), Step::Stop { stop_reason: StopReason::EndTurn, error: None });
        log.push(EventPayload::SessionStatusIdle { stop_reason: StopReason::EndTurn });
        assert_eq!(plan(&agent(10), &log.0), Step::Wait);
    }

    #[test]
    fn a_model_call_cut_off_by_a_crash_is_made_again() {
        let mut log = Log::new();
        log.user("hello");
        log.push(EventPayload::SessionStatusRunning);
        log.push(EventPayload::SpanModelRequestStart { model: "m".into() });
        assert!(matches!(plan(&agent(10), &log.0), Step::CallModel { .. }));
    }

    #[test]
    fn allowed_tools_run_and_their_results_go_back_to_the_model() {
        let mut log = Log::new();
        log.user("list files");
        log.push(EventPayload::SessionStatusRunning);
        let ids = log.model_turn(vec![Log::tool_use("bash", r#"{"command":"ls"}"#)]);
        assert_eq!(
            plan(&agent(10), &log.0),
            Step::RunTool {
                tool_use_id: ids[0],
                seq: 4,
                name: "bash".into(),
                input_json: r#"{"command":"ls"}"#.into()
            }
        );
        log.result(ids[0]);
        let Step::CallModel { messages } = plan(&agent(10), &log.0) else { panic!("expected a model call") };
        assert_eq!(messages.len(), 3);
        assert!(
            matches!(&messages[2].content[0], Block::ToolResult { tool_use_id, .. } if *tool_use_id == ids[0].to_string())
        );
    }

    #[test]
    fn asked_tools_wait_for_confirmation_and_follow_it() {
        let mut log = Log::new();
        log.user("write a file");
        log.push(EventPayload::SessionStatusRunning);
        let ids = log.model_turn(vec![Log::tool_use("write", r#"{"file_path":"a","content":"b"}"#)]);
        assert_eq!(plan(&agent(10), &log.0), Step::AwaitClient { event_ids: vec![ids[0]] });
        log.push(EventPayload::SessionStatusIdle {
            stop_reason: StopReason::RequiresAction { event_ids: vec![ids[0]] },
        });
        assert_eq!(plan(&agent(10), &log.0), Step::Wait);

        let mut denied = Log(log.0.clone());
        denied.push(EventPayload::UserToolConfirmation {
            tool_use_id: ids[0],
            result: Confirmation::Deny,
            deny_message: Some("not now".into()),
        });
        assert_eq!(plan(&agent(10), &denied.0), Step::Start);
        denied.push(EventPayload::SessionStatusRunning);
        assert!(matches!(plan(&agent(10), &denied.0), Step::RejectTool { message, .. } if message.contains("not now")));

        log.push(EventPayload::UserToolConfirmation {
            tool_use_id: ids[0],
            result: Confirmation::Allow,
            deny_message: None,
        });
        log.push(EventPayload::SessionStatusRunning);
        assert!(matches!(plan(&agent(10), &log.0), Step::RunTool { name, .. } if name == "write"));
    }

    #[test]
    fn custom_tools_wait_for_the_client_result() {
        let mut log = Log::new();
        log.user("look it up");
        log.push(EventPayload::SessionStatusRunning);
        let custom = EventPayload::AgentCustomToolUse { name: "lookup".into(), input: JsonText::parse("{}").unwrap() };
        let ids = log.model_turn(vec![custom]);
        assert_eq!(plan(&agent(10), &log.0), Step::AwaitClient { event_ids: vec![ids[0]] });
        log.push(EventPayload::SessionStatusIdle {
            stop_reason: StopReason::RequiresAction { event_ids: vec![ids[0]] },
        });
        log.push(EventPayload::UserCustomToolResult {
            custom_tool_use_id: ids[0],
            content: vec![ContentBlock::text("42")],
            is_error: false,
        });
        log.push(EventPayload::SessionStatusRunning);
        assert!(matches!(plan(&agent(10), &log.0), Step::CallModel { .. }));
    }

    #[test]
    fn unknown_tools_are_rejected_and_interrupts_stop_the_turn() {
        let mut log = Log::new();
        log.user("go");
        log.push(EventPayload::SessionStatusRunning);
        let ids = log.model_turn(vec![Log::tool_use("rm", "{}")]);
        assert!(matches!(plan(&agent(10), &log.0), Step::RejectTool { tool_use_id, .. } if tool_use_id == ids[0]));
        log.push(EventPayload::UserInterrupt);
        assert_eq!(plan(&agent(10), &log.0), Step::Stop { stop_reason: StopReason::EndTurn, error: None });
    }

    #[test]
    fn the_turn_cap_and_the_stuck_detector_stop_the_agent() {
        let mut log = Log::new();
        log.user("loop");
        log.push(EventPayload::SessionStatusRunning);
        for _ in 0..3 {
            let ids = log.model_turn(vec![Log::tool_use("bash", r#"{"command":"true"}"#)]);
            log.result(ids[0]);
        }
        let stuck = plan(&agent(10), &log.0);
        assert!(matches!(&stuck, Step::Stop { error: Some((kind, _)), .. } if kind == "stuck"), "{stuck:?}");
        let capped = plan(&agent(3), &log.0);
        assert!(
            matches!(&capped, Step::Stop { error: Some((kind, _)), .. } if kind == "max_model_calls"),
            "{capped:?}"
        );

        // Different inputs are progress, not a loop.
        let mut varied = Log::new();
        varied.user("count");
        varied.push(EventPayload::SessionStatusRunning);
        for number in 0..3 {
            let ids = varied.model_turn(vec![Log::tool_use("bash", &format!(r#"{{"command":"echo {number}"}}"#))]);
            varied.result(ids[0]);
        }
        assert!(matches!(plan(&agent(10), &varied.0), Step::CallModel { .. }));
    }
}
