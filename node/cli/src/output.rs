//! JSON shapes of events for the CLI's `--json` output (the Managed Agents
//! API field names).

use agentd_protocol::approval::ApprovalGate;
use agentd_protocol::event::{Confirmation, ContentBlock, Event, EventPayload, StopReason};
use serde_json::{json, Value};

pub fn event(event: &Event) -> Value {
    let mut value = payload(&event.payload);
    if let Value::Object(fields) = &mut value {
        fields.insert("id".into(), json!(event.id.to_string()));
        fields.insert("seq".into(), json!(event.seq));
        fields.insert("session_id".into(), json!(event.session_id.to_string()));
        fields.insert("processed_at_ms".into(), json!(event.processed_at_ms));
        fields.insert("type".into(), json!(event.payload.type_name()));
    }
    value
}

fn content(blocks: &[ContentBlock]) -> Value {
    blocks.iter().map(|ContentBlock::Text { text }| json!({"type": "text", "text": text})).collect()
}

fn input(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!(text))
}

fn payload(payload: &EventPayload) -> Value {
    match payload {
        EventPayload::UserMessage { content: blocks } | EventPayload::AgentMessage { content: blocks } => {
            json!({"content": content(blocks)})
        }
        EventPayload::UserInterrupt
        | EventPayload::SessionStatusRunning
        | EventPayload::SessionStatusRescheduled
        | EventPayload::SessionStatusTerminated
        | EventPayload::SessionDeleted => json!({}),
        EventPayload::UserToolConfirmation { tool_use_id, result, deny_message } => json!({
            "tool_use_id": tool_use_id.to_string(),
            "result": match result { Confirmation::Allow => "allow", Confirmation::Deny => "deny" },
            "deny_message": deny_message,
        }),
        EventPayload::UserCustomToolResult { custom_tool_use_id, content: blocks, is_error } => json!({
            "custom_tool_use_id": custom_tool_use_id.to_string(), "content": content(blocks), "is_error": is_error,
        }),
        EventPayload::AgentToolUse { name, input: text } | EventPayload::AgentCustomToolUse { name, input: text } => {
            json!({"name": name, "input": input(text.as_str())})
        }
        EventPayload::AgentToolResult { tool_use_id, content: blocks, is_error } => json!({
            "tool_use_id": tool_use_id.to_string(), "content": content(blocks), "is_error": is_error,
        }),
        EventPayload::SessionStatusIdle { stop_reason } => json!({"stop_reason": match stop_reason {
            StopReason::EndTurn => json!({"type": "end_turn"}),
            StopReason::RequiresAction { event_ids } => json!({
                "type": "requires_action",
                "event_ids": event_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            StopReason::RetriesExhausted => json!({"type": "retries_exhausted"}),
        }}),
        EventPayload::SessionError { kind, message } => json!({"error": {"type": kind, "message": message}}),
        EventPayload::SpanModelRequestStart { model } => json!({"model": model}),
        EventPayload::SpanModelRequestEnd { model_request_start_id, is_error, model_usage } => json!({
            "model_request_start_id": model_request_start_id.to_string(), "is_error": is_error,
            "model_usage": model_usage,
        }),
        EventPayload::SpanModelRequestEndWithoutUsage { model_request_start_id, is_error } => json!({
            "model_request_start_id": model_request_start_id.to_string(), "is_error": is_error,
        }),
        EventPayload::SessionUsage { input_tokens, output_tokens } => {
            json!({"input_tokens": input_tokens, "output_tokens": output_tokens})
        }
        other => governed(other),
    }
}

fn gate(gate: &ApprovalGate) -> Value {
    json!({"policy_version": gate.policy_version, "rule": gate.rule, "approver_only": gate.approver_only})
}

/// The events of MCP tools and of workspace approval policies.
fn governed(payload: &EventPayload) -> Value {
    match payload {
        EventPayload::AgentMcpToolUse { mcp_server_name, name, input: text, gate: flagged } => json!({
            "name": name, "mcp_server_name": mcp_server_name, "input": input(text.as_str()),
            "approval_policy": flagged.as_ref().map(gate),
        }),
        EventPayload::AgentMcpToolResult { mcp_tool_use_id, content: blocks, is_error } => json!({
            "mcp_tool_use_id": mcp_tool_use_id.to_string(), "content": content(blocks), "is_error": is_error,
        }),
        EventPayload::SpanMcpToolCallStart { mcp_tool_use_id } => {
            json!({"mcp_tool_use_id": mcp_tool_use_id.to_string()})
        }
        EventPayload::AgentGatedToolUse { name, input: text, gate: flagged, .. } => {
            json!({"name": name, "input": input(text.as_str()), "approval_policy": gate(flagged)})
        }
        EventPayload::UserToolDecision { tool_use_id, result, deny_message, decided_by, policy_version } => json!({
            "tool_use_id": tool_use_id.to_string(),
            "result": match result { Confirmation::Allow => "allow", Confirmation::Deny => "deny" },
            "deny_message": deny_message,
            "decided_by": decided_by.as_ref().map(|decider| json!({
                "key_id": decider.key_id.to_string(), "key_name": decider.key_name, "role": decider.role.name(),
            })),
            "policy_version": policy_version,
        }),
        EventPayload::SessionMcpError { kind, message, mcp_server_name } => {
            json!({"error": {"type": kind, "message": message, "mcp_server_name": mcp_server_name}})
        }
        _ => json!({}),
    }
}

/// A one-line human summary of an event.
pub fn summary(event: &Event) -> String {
    let detail = match &event.payload {
        EventPayload::UserMessage { content: blocks } | EventPayload::AgentMessage { content: blocks } => {
            blocks.iter().map(|ContentBlock::Text { text }| text.as_str()).collect::<Vec<_>>().join(" ")
        }
        other => payload(other).to_string(),
    };
    format!("{:>6}  {:<26} {}", event.seq, event.payload.type_name(), detail)
}
