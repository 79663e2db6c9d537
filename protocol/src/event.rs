//! The session log's event vocabulary, after the Managed Agents API.
//!
//! Free-form JSON (tool input) is carried as [`JsonText`]: bincode cannot
//! encode `serde_json::Value`, and storing text keeps the log byte-exact.

use serde::{Deserialize, Serialize};

use crate::approval::{ApprovalGate, Decider};
use crate::ids::{EventId, SessionId};
use crate::limits;
use crate::ApiError;

/// One committed event of a session log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub session_id: SessionId,
    /// Assigned at commit: 1 for the first event, no gaps, no duplicates.
    pub seq: u64,
    pub id: EventId,
    /// Milliseconds since the Unix epoch, stamped by the node that proposed it.
    pub processed_at_ms: u64,
    pub payload: EventPayload,
}

/// JSON stored as text. Always holds a syntactically valid JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonText(String);

impl JsonText {
    pub fn parse(text: impl Into<String>) -> Result<Self, ApiError> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|error| ApiError::InvalidRequest { message: format!("invalid JSON: {error}") })?;
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentBlock {
    Text { text: String },
}

impl ContentBlock {
    pub fn text(text: impl Into<String>) -> Self {
        ContentBlock::Text { text: text.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Confirmation {
    Allow,
    Deny,
}

/// Why a session went idle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    EndTurn,
    /// Waiting for the client to answer these events (tool confirmations or
    /// custom tool results).
    RequiresAction {
        event_ids: Vec<EventId>,
    },
    RetriesExhausted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventPayload {
    UserMessage {
        content: Vec<ContentBlock>,
    },
    UserInterrupt,
    UserToolConfirmation {
        tool_use_id: EventId,
        result: Confirmation,
        deny_message: Option<String>,
    },
    UserCustomToolResult {
        custom_tool_use_id: EventId,
        content: Vec<ContentBlock>,
        is_error: bool,
    },
    AgentMessage {
        content: Vec<ContentBlock>,
    },
    AgentToolUse {
        name: String,
        input: JsonText,
    },
    AgentToolResult {
        tool_use_id: EventId,
        content: Vec<ContentBlock>,
        is_error: bool,
    },
    AgentCustomToolUse {
        name: String,
        input: JsonText,
    },
    SessionStatusRunning,
    SessionStatusIdle {
        stop_reason: StopReason,
    },
    SessionStatusRescheduled,
    SessionStatusTerminated,
    SessionError {
        kind: String,
        message: String,
    },
    SpanModelRequestStart {
        model: String,
    },
    /// `span.model_request_end` as written before the log recorded each
    /// request's usage (then in a `session.usage` event after it). Read,
    /// never written.
    SpanModelRequestEndWithoutUsage {
        model_request_start_id: EventId,
        is_error: bool,
    },
    SessionUsage {
        input_tokens: u64,
        output_tokens: u64,
    },
    /// The session was deleted: the last event of its log, which ends every
    /// stream that follows it.
    SessionDeleted,
    /// The end of one model request, with the tokens it used.
    SpanModelRequestEnd {
        model_request_start_id: EventId,
        is_error: bool,
        model_usage: ModelUsage,
    },
    /// The model asked for tool `name` of MCP server `mcp_server_name`; `gate`
    /// is what the workspace's approval policy decided about it.
    AgentMcpToolUse {
        mcp_server_name: String,
        name: String,
        input: JsonText,
        gate: Option<ApprovalGate>,
    },
    AgentMcpToolResult {
        mcp_tool_use_id: EventId,
        content: Vec<ContentBlock>,
        is_error: bool,
    },
    /// The node is about to send the MCP `tools/call` for this tool use:
    /// recorded before it is sent, so a call cut off by a crash is reported
    /// as interrupted and never sent again (an agentd extension,
    /// `span.mcp_tool_call_start`).
    SpanMcpToolCallStart {
        mcp_tool_use_id: EventId,
    },
    /// A built-in (`custom: false`) or custom tool use that the workspace's
    /// approval policy flagged: it waits for a confirmation whatever the
    /// agent's own policy says. Shown as `agent.tool_use` or
    /// `agent.custom_tool_use`.
    AgentGatedToolUse {
        name: String,
        input: JsonText,
        custom: bool,
        gate: ApprovalGate,
    },
    /// A `user.tool_confirmation` as recorded: who decided (the key, `None`
    /// for a node's own caller) and the version of the workspace policy that
    /// gated the tool use (`None` when none did). Clients send
    /// `UserToolConfirmation`; the node records this in its place.
    UserToolDecision {
        tool_use_id: EventId,
        result: Confirmation,
        deny_message: Option<String>,
        decided_by: Option<Decider>,
        policy_version: Option<u64>,
    },
    /// `session.error` about one MCP server (`mcp_connection_failed_error`,
    /// `mcp_authentication_failed_error`), naming it.
    SessionMcpError {
        kind: String,
        message: String,
        mcp_server_name: String,
    },
}

/// The tokens one model request used, as the provider reported them (zero
/// where it reported nothing, and for a request that failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl EventPayload {
    /// The Managed Agents API name of this event type.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventPayload::UserMessage { .. } => "user.message",
            EventPayload::UserInterrupt => "user.interrupt",
            EventPayload::UserToolConfirmation { .. } => "user.tool_confirmation",
            EventPayload::UserCustomToolResult { .. } => "user.custom_tool_result",
            EventPayload::AgentMessage { .. } => "agent.message",
            EventPayload::AgentToolUse { .. } => "agent.tool_use",
            EventPayload::AgentToolResult { .. } => "agent.tool_result",
            EventPayload::AgentCustomToolUse { .. } => "agent.custom_tool_use",
            EventPayload::SessionStatusRunning => "session.status_running",
            EventPayload::SessionStatusIdle { .. } => "session.status_idle",
            EventPayload::SessionStatusRescheduled => "session.status_rescheduled",
            EventPayload::SessionStatusTerminated => "session.status_terminated",
            EventPayload::SessionError { .. } => "session.error",
            EventPayload::SpanModelRequestStart { .. } => "span.model_request_start",
            EventPayload::SpanModelRequestEnd { .. } | EventPayload::SpanModelRequestEndWithoutUsage { .. } => {
                "span.model_request_end"
            }
            EventPayload::SessionUsage { .. } => "session.usage",
            EventPayload::SessionDeleted => "session.deleted",
            EventPayload::AgentMcpToolUse { .. } => "agent.mcp_tool_use",
            EventPayload::AgentMcpToolResult { .. } => "agent.mcp_tool_result",
            EventPayload::SpanMcpToolCallStart { .. } => "span.mcp_tool_call_start",
            EventPayload::AgentGatedToolUse { custom: false, .. } => "agent.tool_use",
            EventPayload::AgentGatedToolUse { custom: true, .. } => "agent.custom_tool_use",
            EventPayload::UserToolDecision { .. } => "user.tool_confirmation",
            EventPayload::SessionMcpError { .. } => "session.error",
        }
    }

    /// The tool use a confirmation answers, for either form of it.
    pub fn confirmation(&self) -> Option<(EventId, Confirmation, Option<&String>)> {
        match self {
            EventPayload::UserToolConfirmation { tool_use_id, result, deny_message }
            | EventPayload::UserToolDecision { tool_use_id, result, deny_message, .. } => {
                Some((*tool_use_id, *result, deny_message.as_ref()))
            }
            _ => None,
        }
    }

    /// Whether a client may append this event directly. Agent, session and
    /// span events are written by the runtime only.
    pub fn is_user_event(&self) -> bool {
        matches!(
            self,
            EventPayload::UserMessage { .. }
                | EventPayload::UserInterrupt
                | EventPayload::UserToolConfirmation { .. }
                | EventPayload::UserCustomToolResult { .. }
                | EventPayload::UserToolDecision { .. }
        )
    }

    /// A user message with one text block.
    pub fn user_text(text: impl Into<String>) -> Self {
        EventPayload::UserMessage { content: vec![ContentBlock::text(text)] }
    }

    /// Checks what a client sent before it is proposed to the log.
    pub fn validate_from_client(&self) -> Result<(), ApiError> {
        if !self.is_user_event() {
            return Err(ApiError::InvalidRequest {
                message: format!("clients may only send user.* events, not {}", self.type_name()),
            });
        }
        let (field, text_bytes) = match self {
            EventPayload::UserMessage { content } => ("the text of a user.message", text_len(content)),
            EventPayload::UserCustomToolResult { content, .. } => {
                ("the text of a user.custom_tool_result", text_len(content))
            }
            EventPayload::UserToolConfirmation { deny_message, .. }
            | EventPayload::UserToolDecision { deny_message, .. } => {
                ("deny_message", deny_message.as_ref().map_or(0, String::len))
            }
            _ => ("", 0),
        };
        if text_bytes > limits::TEXT_BYTES_MAX {
            return Err(ApiError::InvalidRequest {
                message: format!("{field} is {text_bytes} bytes; the limit is {} bytes", limits::TEXT_BYTES_MAX),
            });
        }
        let encoded = crate::frame::encoded_len(self)?;
        if encoded > limits::EVENT_PAYLOAD_BYTES_MAX {
            return Err(ApiError::PayloadTooLarge {
                bytes: encoded as u64,
                max_bytes: limits::EVENT_PAYLOAD_BYTES_MAX as u64,
            });
        }
        Ok(())
    }
}

/// Bytes of text in `content`, all blocks together.
fn text_len(content: &[ContentBlock]) -> usize {
    content.iter().map(|ContentBlock::Text { text }| text.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_rejects_invalid_json() {
        assert!(JsonText::parse(r#"{"command":"ls"}"#).is_ok());
        assert!(matches!(JsonText::parse("{not json"), Err(ApiError::InvalidRequest { .. })));
    }

    #[test]
    fn clients_cannot_forge_agent_events() {
        let forged = EventPayload::AgentMessage { content: vec![ContentBlock::text("hi")] };
        assert!(matches!(forged.validate_from_client(), Err(ApiError::InvalidRequest { .. })));
        assert!(EventPayload::user_text("hello").validate_from_client().is_ok());
    }

    #[test]
    fn text_past_the_limit_is_refused_at_its_edge() {
        let at_limit = "x".repeat(limits::TEXT_BYTES_MAX);
        let past = "x".repeat(limits::TEXT_BYTES_MAX + 1);
        assert!(EventPayload::user_text(at_limit.clone()).validate_from_client().is_ok());
        assert!(matches!(
            EventPayload::user_text(past.clone()).validate_from_client(),
            Err(ApiError::InvalidRequest { message }) if message.contains("user.message")
        ));
        // The limit is on the message, not on each block.
        let half = "x".repeat(limits::TEXT_BYTES_MAX / 2 + 1);
        let split = EventPayload::UserMessage { content: vec![ContentBlock::text(&half), ContentBlock::text(&half)] };
        assert!(matches!(split.validate_from_client(), Err(ApiError::InvalidRequest { .. })));
        let result = |text: &str| EventPayload::UserCustomToolResult {
            custom_tool_use_id: EventId::from_random(1),
            content: vec![ContentBlock::text(text)],
            is_error: false,
        };
        assert!(result(&at_limit).validate_from_client().is_ok());
        assert!(matches!(result(&past).validate_from_client(), Err(ApiError::InvalidRequest { .. })));
        let deny = |text: &str| EventPayload::UserToolConfirmation {
            tool_use_id: EventId::from_random(1),
            result: Confirmation::Deny,
            deny_message: Some(text.to_owned()),
        };
        assert!(deny(&at_limit).validate_from_client().is_ok());
        assert!(matches!(deny(&past).validate_from_client(), Err(ApiError::InvalidRequest { .. })));
    }

    #[test]
    fn oversized_payloads_are_refused() {
        // Within the text limit, past the payload limit by the number of blocks.
        let blocks = vec![ContentBlock::text(""); limits::EVENT_PAYLOAD_BYTES_MAX / 2 + 1];
        let big = EventPayload::UserMessage { content: blocks };
        assert!(matches!(big.validate_from_client(), Err(ApiError::PayloadTooLarge { .. })));
    }
}
