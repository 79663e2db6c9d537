//! The agent loop's decisions, as a pure function of the session log.
//!
//! The orchestrator keeps no state of its own: after every step it reads the
//! log again and asks [`plan`] what to do next. Whatever was interrupted by
//! a crash (a model call with no recorded end, a tool use with no result) is
//! simply what the log says is still to do, so a new orchestrator on another
//! node carries on where the old one stopped.

use agentd_protocol::agent::{AgentSpec, PermissionPolicy};
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
    /// Go idle until the client answers these tool uses.
    AwaitClient { event_ids: Vec<EventId> },
    /// End the turn; `error` is recorded as `session.error` first.
    Stop { stop_reason: StopReason, error: Option<(String, String)> },
}

/// A tool use the log has not answered yet.
struct OpenToolUse {
    seq: u64,
    name: String,
    input_json: String,
    custom: bool,
    confirmation: Option<(Confirmation, Option<String>)>,
}

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
        if tool_use.custom {
            waiting.push(*tool_use_id);
            continue;
        }
        let policy = agent.tool_policy(&tool_use.name);
        match (policy, &tool_use.confirmation) {
            (None, _) => {
                return Some(Step::RejectTool {
                    tool_use_id: *tool_use_id,
                    message: format!("tool {:?} is not available to this agent", tool_use.name),
                })
            }
            (Some(_), Some((Confirmation::Deny, message))) => {
                let reason = message.clone().unwrap_or_else(|| "no reason given".into());
                return Some(Step::RejectTool {
                    tool_use_id: *tool_use_id,
                    message: format!("the user denied this tool call: {reason}"),
                });
            }
            (Some(PermissionPolicy::AlwaysAllow), _)
            | (Some(PermissionPolicy::AlwaysAsk | PermissionPolicy::Auto), Some((Confirmation::Allow, _))) => {
                return Some(Step::RunTool {
                    tool_use_id: *tool_use_id,
                    seq: tool_use.seq,
                    name: tool_use.name.clone(),
                    input_json: tool_use.input_json.clone(),
                });
            }
            // `auto` decides to ask, always: the safe choice.
            (Some(PermissionPolicy::AlwaysAsk | PermissionPolicy::Auto), None) => waiting.push(*tool_use_id),
        }
    }
    (!waiting.is_empty()).then_some(Step::AwaitClient { event_ids: waiting })
}

/// With no tool use open: call the model, unless the model spoke last (the
/// turn is over) or a stop condition holds (the turn cap, the stuck detector).
fn model_step(agent: &AgentSpec, events: &[Event], turn: &[Event]) -> Step {
    let model_calls =
        turn.iter().filter(|event| matches!(event.payload, EventPayload::SpanModelRequestStart { .. })).count();
    let last_said = events.iter().rev().find_map(|event| match &event.payload {
        EventPayload::UserMessage { .. }
        | EventPayload::AgentToolResult { .. }
        | EventPayload::UserCustomToolResult { .. } => Some(true),
        EventPayload::AgentMessage { .. }
        | EventPayload::AgentToolUse { .. }
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
        match &event.payload {
            EventPayload::AgentToolUse { name, input } | EventPayload::AgentCustomToolUse { name, input } => {
                let custom = matches!(event.payload, EventPayload::AgentCustomToolUse { .. });
                let tool_use = OpenToolUse {
                    seq: event.seq,
                    name: name.clone(),
                    input_json: input.as_str().to_string(),
                    custom,
                    confirmation: None,
                };
                open.push((event.id, tool_use));
            }
            EventPayload::UserToolConfirmation { tool_use_id, result, deny_message } => {
                if let Some((_, tool_use)) = open.iter_mut().find(|(id, _)| id == tool_use_id) {
                    tool_use.confirmation = Some((*result, deny_message.clone()));
                }
            }
            EventPayload::AgentToolResult { tool_use_id: answered, .. }
            | EventPayload::UserCustomToolResult { custom_tool_use_id: answered, .. } => {
                open.retain(|(id, _)| id != answered);
            }
            _ => {}
        }
    }
    open
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
            EventPayload::AgentToolUse { name, input } | EventPayload::AgentCustomToolUse { name, input } => {
                current.push((name.clone(), input.as_str().to_string()));
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
            EventPayload::AgentToolUse { name, input } | EventPayload::AgentCustomToolUse { name, input } => push(
                Role::Assistant,
                Block::ToolUse { id: event.id.to_string(), name: name.clone(), input_json: input.as_str().to_string() },
            ),
            EventPayload::AgentToolResult { tool_use_id, content, is_error } => push(
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
    use agentd_protocol::agent::{BuiltInTool, CustomTool};
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
        }
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
