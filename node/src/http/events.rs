//! `/v1/sessions/{id}/events`: sending a session's user events, listing its
//! log, and every event's JSON as the API shows it (also what the stream sends).
//!
//! Each event carries the API's `id`, `type` and `processed_at`, and, as an
//! agentd extension, `seq`: its sequence number in the session's log (what a
//! stream's `Last-Event-ID` names).

use agentd_protocol::agent::PermissionPolicy;
use agentd_protocol::api::ClientRequest;
use agentd_protocol::approval::ApprovalGate;
use agentd_protocol::event::{Confirmation, ContentBlock, Event, EventPayload, JsonText};
use agentd_protocol::ids::EventId;
use agentd_protocol::limits::{EVENTS_PER_PAGE_MAX, EVENTS_PER_SEND_MAX};
use agentd_protocol::resource::{EventQuery, Order};
use agentd_protocol::tenancy::Caller;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::error::HttpError;
use super::sessions::{parse_id, stop_reason_json, text_blocks, view, AgentSnapshot, Agents};
use super::util::{list_body, parse_body, rfc3339, Query};
use super::AppState;

type Answer = Result<Json<Value>, HttpError>;

/// Every event type the API knows that agentd writes.
const EVENT_TYPES: [&str; 20] = [
    "user.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "agent.message",
    "agent.tool_use",
    "agent.tool_result",
    "agent.custom_tool_use",
    "session.status_running",
    "session.status_idle",
    "session.status_rescheduled",
    "session.status_terminated",
    "session.error",
    "span.model_request_start",
    "span.model_request_end",
    "session.usage",
    "session.deleted",
    "agent.mcp_tool_use",
    "agent.mcp_tool_result",
    "span.mcp_tool_call_start",
];

fn blocks_json(blocks: &[ContentBlock]) -> Value {
    blocks.iter().map(|ContentBlock::Text { text }| json!({"type": "text", "text": text})).collect()
}

fn input_json(input: &JsonText) -> Value {
    serde_json::from_str(input.as_str()).unwrap_or_else(|_| json!({}))
}

/// How the agent's policy evaluated a built-in tool's use.
fn evaluation(agent: Option<&AgentSnapshot>, name: &str) -> (Value, Value) {
    policy_evaluation(agent.and_then(|agent| agent.body.spec.tool_policy(name)))
}

fn policy_evaluation(policy: Option<PermissionPolicy>) -> (Value, Value) {
    match policy {
        Some(PermissionPolicy::AlwaysAllow) => (json!("allow"), json!({"type": "always_allow"})),
        Some(PermissionPolicy::AlwaysAsk) => (json!("ask"), json!({"type": "always_ask"})),
        Some(PermissionPolicy::Auto) => (
            json!("ask"),
            json!({"type": "auto", "evaluated_permission": {"type": "ask", "reason_code": "agentd_asks"}}),
        ),
        None => (json!("deny"), Value::Null),
    }
}

/// What a workspace's approval policy decided about a tool use (an agentd
/// extension beside `evaluation`).
fn gate_json(gate: &ApprovalGate) -> Value {
    json!({"policy_version": gate.policy_version, "rule": gate.rule, "approver_only": gate.approver_only})
}

fn confirmation_json(tool_use_id: &EventId, result: &Confirmation, deny_message: &Option<String>) -> Value {
    json!({
        "tool_use_id": tool_use_id.to_string(),
        "result": match result { Confirmation::Allow => "allow", Confirmation::Deny => "deny" },
        "deny_message": deny_message,
    })
}

/// The fields of the events MCP and approval policies added.
fn governed_fields(payload: &EventPayload, agent: Option<&AgentSnapshot>) -> Option<Value> {
    Some(match payload {
        EventPayload::AgentMcpToolUse { mcp_server_name, name, input, gate } => {
            let policy = agent
                .and_then(|agent| agent.body.spec.mcp_toolset(mcp_server_name))
                .and_then(|toolset| toolset.policy(name));
            let (mut permission, evaluation) = policy_evaluation(policy);
            if gate.is_some() {
                permission = json!("ask");
            }
            json!({
                "name": name, "mcp_server_name": mcp_server_name, "input": input_json(input),
                "evaluated_permission": permission, "evaluation": evaluation,
                "approval_policy": gate.as_ref().map(gate_json),
            })
        }
        EventPayload::AgentMcpToolResult { mcp_tool_use_id, content, is_error } => json!({
            "mcp_tool_use_id": mcp_tool_use_id.to_string(), "content": blocks_json(content), "is_error": is_error,
        }),
        EventPayload::SpanMcpToolCallStart { mcp_tool_use_id } => {
            json!({"mcp_tool_use_id": mcp_tool_use_id.to_string()})
        }
        EventPayload::AgentGatedToolUse { name, input, custom: true, gate } => {
            json!({"name": name, "input": input_json(input), "approval_policy": gate_json(gate)})
        }
        EventPayload::AgentGatedToolUse { name, input, custom: false, gate } => {
            let (_, evaluation) = evaluation(agent, name);
            json!({
                "name": name, "input": input_json(input), "evaluated_permission": "ask", "evaluation": evaluation,
                "approval_policy": gate_json(gate),
            })
        }
        EventPayload::UserToolDecision { tool_use_id, result, deny_message, decided_by, policy_version } => {
            let mut fields = confirmation_json(tool_use_id, result, deny_message);
            fields["decided_by"] = decided_by.as_ref().map_or(Value::Null, |decider| {
                json!({"key_id": decider.key_id.to_string(), "key_name": decider.key_name, "role": decider.role.name()})
            });
            fields["policy_version"] = json!(policy_version);
            fields
        }
        EventPayload::SessionMcpError { kind, message, mcp_server_name } => json!({
            "error": {"type": kind, "message": message, "mcp_server_name": mcp_server_name,
                      "retry_status": {"type": "exhausted"}},
        }),
        _ => return None,
    })
}

/// An event of a session's log as the API shows it.
pub(super) fn event_json(event: &Event, agent: Option<&AgentSnapshot>) -> Value {
    let mut fields = match &event.payload {
        payload if governed_fields(payload, agent).is_some() => governed_fields(payload, agent).unwrap_or_default(),
        EventPayload::UserMessage { content } | EventPayload::AgentMessage { content } => {
            json!({"content": blocks_json(content)})
        }
        EventPayload::UserToolConfirmation { tool_use_id, result, deny_message } => {
            confirmation_json(tool_use_id, result, deny_message)
        }
        EventPayload::UserCustomToolResult { custom_tool_use_id, content, is_error } => json!({
            "custom_tool_use_id": custom_tool_use_id.to_string(), "content": blocks_json(content), "is_error": is_error,
        }),
        EventPayload::AgentToolUse { name, input } => {
            let (permission, evaluation) = evaluation(agent, name);
            json!({"name": name, "input": input_json(input), "evaluated_permission": permission, "evaluation": evaluation})
        }
        EventPayload::AgentCustomToolUse { name, input } => json!({"name": name, "input": input_json(input)}),
        EventPayload::AgentToolResult { tool_use_id, content, is_error } => json!({
            "tool_use_id": tool_use_id.to_string(), "content": blocks_json(content), "is_error": is_error,
        }),
        EventPayload::SessionStatusIdle { stop_reason } => json!({"stop_reason": stop_reason_json(stop_reason)}),
        EventPayload::SessionError { kind, message } => json!({
            "error": {"type": kind, "message": message, "retry_status": {"type": "exhausted"}},
        }),
        EventPayload::SpanModelRequestEnd { model_request_start_id, is_error, model_usage } => json!({
            "model_request_start_id": model_request_start_id.to_string(), "is_error": is_error,
            "model_usage": model_usage,
        }),
        // Its usage is in the `session.usage` event that follows it.
        EventPayload::SpanModelRequestEndWithoutUsage { model_request_start_id, is_error } => json!({
            "model_request_start_id": model_request_start_id.to_string(), "is_error": is_error,
        }),
        EventPayload::SpanModelRequestStart { model } => json!({"model": model}),
        EventPayload::SessionUsage { input_tokens, output_tokens } => {
            json!({"usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})
        }
        EventPayload::UserInterrupt
        | EventPayload::SessionStatusRunning
        | EventPayload::SessionStatusRescheduled
        | EventPayload::SessionStatusTerminated
        | EventPayload::SessionDeleted
        | EventPayload::AgentMcpToolUse { .. }
        | EventPayload::AgentMcpToolResult { .. }
        | EventPayload::SpanMcpToolCallStart { .. }
        | EventPayload::AgentGatedToolUse { .. }
        | EventPayload::UserToolDecision { .. }
        | EventPayload::SessionMcpError { .. } => json!({}),
    };
    fields["id"] = json!(event.id.to_string());
    fields["type"] = json!(event.payload.type_name());
    fields["processed_at"] = json!(rfc3339(event.processed_at_ms));
    fields["seq"] = json!(event.seq);
    fields
}

fn object<'a>(field: &str, value: &'a Value) -> Result<&'a Map<String, Value>, HttpError> {
    value.as_object().ok_or_else(|| HttpError::invalid(format!("{field} must be an object")))
}

fn event_id(field: &str, value: Option<&Value>) -> Result<EventId, HttpError> {
    let text = value.and_then(Value::as_str).ok_or_else(|| HttpError::invalid(format!("{field} is required")))?;
    text.parse().map_err(|_| HttpError::invalid(format!("{field}: {text:?} is not an event id")))
}

fn only(field: &str, map: &Map<String, Value>, known: &[&str]) -> Result<(), HttpError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(HttpError::invalid(format!("unknown field `{field}.{key}`"))),
        None => Ok(()),
    }
}

/// A user event a client sends.
pub(super) fn user_event(field: &str, value: &Value) -> Result<EventPayload, HttpError> {
    let map = object(field, value)?;
    match map.get("type").and_then(Value::as_str) {
        Some("user.message") => {
            only(field, map, &["type", "content"])?;
            let content = text_blocks(&format!("{field}.content"), map.get("content"))?;
            if content.is_empty() {
                return Err(HttpError::invalid(format!("{field}.content needs at least one block")));
            }
            Ok(EventPayload::UserMessage { content })
        }
        Some("user.interrupt") => {
            only(field, map, &["type", "session_thread_id"])?;
            Ok(EventPayload::UserInterrupt)
        }
        Some("user.tool_confirmation") => {
            only(field, map, &["type", "tool_use_id", "result", "deny_message", "session_thread_id"])?;
            let result = match map.get("result").and_then(Value::as_str) {
                Some("allow") => Confirmation::Allow,
                Some("deny") => Confirmation::Deny,
                _ => return Err(HttpError::invalid(format!("{field}.result must be allow or deny"))),
            };
            let deny_message = map.get("deny_message").and_then(Value::as_str).map(str::to_string);
            Ok(EventPayload::UserToolConfirmation {
                tool_use_id: event_id(&format!("{field}.tool_use_id"), map.get("tool_use_id"))?,
                result,
                deny_message,
            })
        }
        Some("user.custom_tool_result") => {
            only(field, map, &["type", "custom_tool_use_id", "content", "is_error", "session_thread_id"])?;
            Ok(EventPayload::UserCustomToolResult {
                custom_tool_use_id: event_id(&format!("{field}.custom_tool_use_id"), map.get("custom_tool_use_id"))?,
                content: text_blocks(&format!("{field}.content"), map.get("content"))?,
                is_error: map.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        Some(kind @ ("user.tool_result" | "user.define_outcome" | "system.message")) => Err(HttpError::unsupported(
            &format!("{field} ({kind})"),
            "self-hosted tools, outcomes and system messages come later",
        )),
        other => Err(HttpError::invalid(format!("{field}.type: {other:?} is not an event a client sends"))),
    }
}

fn event_bits() -> u128 {
    rand::random()
}

/// Sends user events in order; each is committed before the next. The
/// answer echoes them as committed.
pub async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
    body: Bytes,
) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    only("body", &map, &["events"])?;
    let events =
        map.get("events").and_then(Value::as_array).ok_or_else(|| HttpError::invalid("events must be an array"))?;
    if events.is_empty() || events.len() > EVENTS_PER_SEND_MAX {
        return Err(HttpError::invalid(format!(
            "a send carries 1 to {EVENTS_PER_SEND_MAX} events, not {}",
            events.len()
        )));
    }
    let payloads: Vec<EventPayload> = events
        .iter()
        .enumerate()
        .map(|(index, event)| user_event(&format!("events[{index}]"), event))
        .collect::<Result<_, _>>()?;
    let session_id = parse_id(&session_id)?;
    let bits = event_bits();
    let mut echoed = Vec::with_capacity(payloads.len());
    for (index, payload) in payloads.into_iter().enumerate() {
        let id = EventId::from_random(bits.wrapping_add(index as u128));
        let appended = state.service.append(&caller, session_id, id, payload.clone()).await?;
        let event = Event { session_id, seq: appended.seq, id, processed_at_ms: appended.processed_at_ms, payload };
        echoed.push(event_json(&event, None));
    }
    Ok(Json(json!({"data": echoed})))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    query.only(&[
        "limit",
        "order",
        "page",
        "types",
        "created_at[gte]",
        "created_at[gt]",
        "created_at[lte]",
        "created_at[lt]",
    ])?;
    if query
        .get("created_at[gte]")
        .or(query.get("created_at[gt]"))
        .or(query.get("created_at[lte]"))
        .or(query.get("created_at[lt]"))
        .is_some()
    {
        return Err(HttpError::unsupported("created_at", "page events by sequence number instead"));
    }
    let types: Vec<String> = query.all("types").into_iter().map(str::to_string).collect();
    if let Some(unknown) = types.iter().find(|kind| !EVENT_TYPES.contains(&kind.as_str())) {
        return Err(HttpError::invalid(format!("types[]: unknown event type {unknown:?}")));
    }
    let order = query.order(Order::Ascending)?;
    let after_seq = query
        .get("page")
        .map(|page| {
            page.strip_prefix("seq_")
                .and_then(|seq| seq.parse().ok())
                .ok_or_else(|| HttpError::invalid(format!("page {page:?} is not a cursor this API returned")))
        })
        .transpose()?;
    let session_id = parse_id(&session_id)?;
    let event_query =
        EventQuery { types, order, after_seq, limit: query.limit(EVENTS_PER_PAGE_MAX, EVENTS_PER_PAGE_MAX)? };
    let page = state
        .service
        .call(&caller, ClientRequest::ListEvents { session_id, query: event_query })
        .await?
        .into_event_page()?;
    let session = view(&state, &caller, session_id).await?;
    let agent = Agents::default().snapshot(&state, &session).await?;
    let data = page.events.iter().map(|event| event_json(event, agent.as_ref())).collect();
    Ok(Json(list_body(data, page.next_seq.map(|seq| format!("seq_{seq}")))))
}
