//! `/v1/sessions`: sessions of the key's workspace, listed across every
//! shard. A session shows the agent it runs (its pinned version, with the
//! overrides it was created with), its status, usage and details.
//! `resources`, `budget` and the session-local agent update are refused
//! until agentd has them.

use std::collections::HashMap;

use agentd_protocol::api::{ClientRequest, SessionStatus};
use agentd_protocol::event::{ContentBlock, EventPayload, StopReason};
use agentd_protocol::ids::{AgentId, EventId, SessionId, VaultId};
use agentd_protocol::limits::EVENTS_PER_SEND_MAX;
use agentd_protocol::resource::{
    AgentBody, Order, ResourceId, SessionCreate, SessionQuery, SessionUpdate, SessionView,
};
use agentd_protocol::tenancy::Caller;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::agents::{agent_body, parse_mcp_servers, parse_model, refuse_unsupported, spec_fields};
use super::error::HttpError;
use super::events::user_event;
use super::tools::parse_tools;
use super::util::{
    encode_cursor, list_body, metadata_from, metadata_json, metadata_patch, page_cursor, parse_body, rfc3339,
    rfc3339_or_null, Query,
};
use super::AppState;

type Answer = Result<Json<Value>, HttpError>;

pub(super) fn parse_id(text: &str) -> Result<SessionId, HttpError> {
    text.parse().map_err(|_| HttpError::not_found(format!("session {text:?} not found")))
}

/// The agent a session runs, as of its pinned version (or its override).
pub(super) struct AgentSnapshot {
    pub body: AgentBody,
    pub json: Value,
}

/// An agent's version as a session shows it: its body and description.
type AgentVersionRead = Option<(AgentBody, Option<String>)>;

/// Agents' versions read for one request, so a page of sessions reads each once.
#[derive(Default)]
pub(super) struct Agents {
    read: HashMap<(AgentId, u32), AgentVersionRead>,
}

impl Agents {
    /// The snapshot of the agent `view`'s session runs, if it has one.
    pub async fn snapshot(&mut self, state: &AppState, view: &SessionView) -> Result<Option<AgentSnapshot>, HttpError> {
        let Some(pinned) = view.info.agent else { return Ok(None) };
        let key = (pinned.id, pinned.version);
        let read = match self.read.get(&key) {
            Some(read) => read.clone(),
            None => {
                let read = read_agent_version(state, pinned.id, pinned.version).await?;
                self.read.insert(key, read.clone());
                read
            }
        };
        let Some((body, description)) = read else { return Ok(None) };
        let body = view.details.agent_override.clone().unwrap_or(body);
        let mut fields = spec_fields(&body, description.as_ref());
        fields.insert("type".into(), json!("agent"));
        fields.insert("id".into(), json!(pinned.id.to_string()));
        fields.insert("version".into(), json!(pinned.version));
        Ok(Some(AgentSnapshot { body, json: Value::Object(fields) }))
    }
}

/// An agent's version, read for a session of the agent's own workspace
/// (so as the node); `None` when it is gone.
async fn read_agent_version(state: &AppState, id: AgentId, number: u32) -> Result<AgentVersionRead, HttpError> {
    let request = ClientRequest::GetResource { id: ResourceId::Agent(id) };
    match state.service.call(&Caller::Node, request).await {
        Ok(response) => {
            let resource = response.into_resource()?;
            Ok(resource
                .version(number)
                .and_then(|version| agent_body(version).map(|body| (body.clone(), version.description.clone()))))
        }
        Err(agentd_protocol::ApiError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn status_name(status: SessionStatus) -> &'static str {
    match status {
        SessionStatus::Idle => "idle",
        SessionStatus::Running => "running",
        SessionStatus::Terminated => "terminated",
    }
}

pub(super) fn session_json(view: &SessionView, agent: Option<&AgentSnapshot>) -> Value {
    let info = &view.info;
    let details = &view.details;
    let usage = &view.usage;
    json!({
        "id": info.session_id.to_string(),
        "type": "session",
        "status": status_name(info.status),
        "agent": agent.map(|agent| agent.json.clone()),
        "environment_id": info.environment.map(|environment| environment.to_string()),
        "title": details.title,
        "metadata": metadata_json(&details.metadata),
        "resources": [],
        "vault_ids": details.vault_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
        },
        "stats": {},
        "outcome_evaluations": [],
        "stop_reason": info.stop_reason.as_ref().map(stop_reason_json),
        "created_at": rfc3339(info.created_at_ms),
        "updated_at": rfc3339(details.updated_at_ms.max(info.created_at_ms)),
        "archived_at": rfc3339_or_null(details.archived_at_ms),
    })
}

pub(super) fn stop_reason_json(reason: &StopReason) -> Value {
    match reason {
        StopReason::EndTurn => json!({"type": "end_turn"}),
        StopReason::RequiresAction { event_ids } => {
            json!({"type": "requires_action", "event_ids": event_ids.iter().map(ToString::to_string).collect::<Vec<_>>()})
        }
        StopReason::RetriesExhausted => json!({"type": "retries_exhausted"}),
    }
}

pub(super) async fn view(state: &AppState, caller: &Caller, session_id: SessionId) -> Result<SessionView, HttpError> {
    Ok(state.service.call(caller, ClientRequest::GetSessionView { session_id }).await?.into_session_view()?)
}

async fn answer(state: &AppState, view: &SessionView) -> Answer {
    let agent = Agents::default().snapshot(state, view).await?;
    Ok(Json(session_json(view, agent.as_ref())))
}

/// The agent a create request names: an id, `{type: "agent", id, version?}`,
/// or `{type: "agent_with_overrides", id, version?, model?, system?, tools?}`.
async fn parse_agent(
    state: &AppState,
    caller: &Caller,
    value: &Value,
) -> Result<(AgentId, Option<u32>, Option<AgentBody>), HttpError> {
    let id_of =
        |text: &str| text.parse::<AgentId>().map_err(|_| HttpError::not_found(format!("agent {text:?} not found")));
    let map = match value {
        Value::String(id) => return Ok((id_of(id)?, None, None)),
        Value::Object(map) => map,
        _ => return Err(HttpError::invalid("agent must be an id or an object")),
    };
    let id = id_of(map.get("id").and_then(Value::as_str).ok_or_else(|| HttpError::invalid("agent.id is required"))?)?;
    let version = map.get("version").and_then(Value::as_u64).map(|version| version as u32);
    match map.get("type").and_then(Value::as_str) {
        Some("agent") | None => {
            if let Some(key) = map.keys().find(|key| !["type", "id", "version"].contains(&key.as_str())) {
                return Err(HttpError::invalid(format!("unknown field `agent.{key}`")));
            }
            Ok((id, version, None))
        }
        Some("agent_with_overrides") => Ok((id, version, Some(overridden(state, caller, id, version, map).await?))),
        Some(other) => {
            Err(HttpError::invalid(format!("agent.type must be agent or agent_with_overrides, not {other:?}")))
        }
    }
}

/// The spec of `id`'s version with a request's overrides applied.
async fn overridden(
    state: &AppState,
    caller: &Caller,
    id: AgentId,
    version: Option<u32>,
    map: &Map<String, Value>,
) -> Result<AgentBody, HttpError> {
    let known = ["type", "id", "version", "model", "system", "tools", "mcp_servers", "skills"];
    if let Some(key) = map.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(HttpError::invalid(format!("unknown field `agent.{key}`")));
    }
    refuse_unsupported(map)?;
    let resource =
        state.service.call(caller, ClientRequest::GetResource { id: ResourceId::Agent(id) }).await?.into_resource()?;
    let number = version.unwrap_or(resource.version_number());
    let mut body = resource
        .version(number)
        .and_then(agent_body)
        .cloned()
        .ok_or_else(|| HttpError::not_found(format!("version {number} of agent {id} not found")))?;
    if let Some(model) = map.get("model") {
        body.spec.model = parse_model(model)?;
    }
    if let Some(system) = map.get("system") {
        body.spec.system = system.as_str().filter(|text| !text.is_empty()).map(str::to_string);
    }
    if let Some(tools) = map.get("tools").filter(|value| !value.is_null()) {
        let tools = parse_tools(tools)?;
        body.spec.tools = tools.built_in;
        body.spec.custom_tools = tools.custom;
        body.spec.mcp_toolsets = tools.mcp_toolsets;
        body.default_enabled = tools.default_enabled;
        body.default_policy = tools.default_policy;
    }
    if let Some(servers) = map.get("mcp_servers") {
        body.spec.mcp_servers = if servers.is_null() { Vec::new() } else { parse_mcp_servers(servers)? };
    }
    body.spec.validate()?;
    Ok(body)
}

fn parse_vault_ids(value: Option<&Value>) -> Result<Vec<VaultId>, HttpError> {
    let Some(value) = value.filter(|value| !value.is_null()) else { return Ok(Vec::new()) };
    let ids = value.as_array().ok_or_else(|| HttpError::invalid("vault_ids must be an array"))?;
    if ids.len() > agentd_protocol::limits::SESSION_VAULTS_MAX {
        return Err(HttpError::invalid(format!(
            "a session uses at most {} vaults",
            agentd_protocol::limits::SESSION_VAULTS_MAX
        )));
    }
    ids.iter()
        .map(|id| {
            let text = id.as_str().unwrap_or_default();
            text.parse().map_err(|_| HttpError::not_found(format!("vault {text:?} not found")))
        })
        .collect()
}

const CREATE_FIELDS: [&str; 8] =
    ["agent", "environment_id", "title", "metadata", "resources", "vault_ids", "initial_events", "budget"];

fn new_ids() -> (SessionId, u128) {
    (SessionId::from_random(rand::random()), rand::random())
}

pub async fn create(State(state): State<AppState>, Extension(caller): Extension<Caller>, body: Bytes) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    if let Some(key) = map.keys().find(|key| !CREATE_FIELDS.contains(&key.as_str())) {
        return Err(HttpError::invalid(format!("unknown field `{key}`")));
    }
    if map.get("resources").and_then(Value::as_array).is_some_and(|resources| !resources.is_empty()) {
        return Err(HttpError::unsupported("resources", "files, repositories and memory stores come later"));
    }
    if map.get("budget").is_some_and(|budget| !budget.is_null()) {
        return Err(HttpError::unsupported("budget", "budgets come with the governance release"));
    }
    let initial = initial_events(map.get("initial_events"))?;
    let (agent, agent_version, agent_override) =
        parse_agent(&state, &caller, map.get("agent").ok_or_else(|| HttpError::invalid("agent is required"))?).await?;
    let environment_text = map
        .get("environment_id")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::invalid("environment_id is required"))?;
    let environment = super::environments::parse_id(environment_text)?;
    let create = SessionCreate {
        agent: Some(agent),
        agent_version,
        agent_override,
        environment: Some(environment),
        title: map.get("title").and_then(Value::as_str).map(str::to_string),
        metadata: metadata_from("metadata", map.get("metadata").and_then(Value::as_object))?,
        vault_ids: parse_vault_ids(map.get("vault_ids"))?,
    };
    let (session_id, event_bits) = new_ids();
    let view = state
        .service
        .call(&caller, ClientRequest::CreateSessionIn { session_id, create })
        .await?
        .into_session_view()?;
    for (index, payload) in initial.into_iter().enumerate() {
        let event_id = EventId::from_random(event_bits.wrapping_add(index as u128));
        state.service.append(&caller, session_id, event_id, payload).await?;
    }
    answer(&state, &view).await
}

/// `initial_events`: user messages to start the session with.
fn initial_events(value: Option<&Value>) -> Result<Vec<EventPayload>, HttpError> {
    let Some(events) = value.filter(|value| !value.is_null()) else { return Ok(Vec::new()) };
    let events = events.as_array().ok_or_else(|| HttpError::invalid("initial_events must be an array"))?;
    if events.len() > EVENTS_PER_SEND_MAX {
        return Err(HttpError::invalid(format!("initial_events holds at most {EVENTS_PER_SEND_MAX} events")));
    }
    events
        .iter()
        .enumerate()
        .map(|(index, event)| match user_event(&format!("initial_events[{index}]"), event)? {
            payload @ EventPayload::UserMessage { .. } => Ok(payload),
            _ => Err(HttpError::invalid(format!("initial_events[{index}] must be a user.message"))),
        })
        .collect()
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
) -> Answer {
    let view = view(&state, &caller, parse_id(&session_id)?).await?;
    answer(&state, &view).await
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
    body: Bytes,
) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    for (field, why) in [
        ("budget", "budgets come with the governance release"),
        ("agent", "a session's own tools cannot change yet"),
        ("vault_ids", "a session's vaults are fixed when it is created"),
    ] {
        if map.get(field).is_some_and(|value| !value.is_null()) {
            return Err(HttpError::unsupported(field, why));
        }
    }
    if let Some(key) =
        map.keys().find(|key| !["title", "metadata", "budget", "agent", "vault_ids"].contains(&key.as_str()))
    {
        return Err(HttpError::invalid(format!("unknown field `{key}`")));
    }
    let mut update = SessionUpdate::default();
    match map.get("title") {
        None => {}
        Some(Value::Null) => update.title = Some(None),
        Some(Value::String(title)) => update.title = Some((!title.is_empty()).then(|| title.clone())),
        Some(_) => return Err(HttpError::invalid("title must be a string or null")),
    }
    if let Some(patch) = map.get("metadata").filter(|value| !value.is_null()) {
        let patch = patch.as_object().ok_or_else(|| HttpError::invalid("metadata must be an object"))?;
        update.metadata = metadata_patch("metadata", patch)?;
    }
    let request = ClientRequest::UpdateSession { session_id: parse_id(&session_id)?, update };
    let view = state.service.call(&caller, request).await?.into_session_view()?;
    answer(&state, &view).await
}

pub async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
) -> Answer {
    let request = ClientRequest::ArchiveSession { session_id: parse_id(&session_id)? };
    let view = state.service.call(&caller, request).await?.into_session_view()?;
    answer(&state, &view).await
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
) -> Answer {
    let session_id = parse_id(&session_id)?;
    state.service.call(&caller, ClientRequest::DeleteSession { session_id }).await?.into_done()?;
    Ok(Json(json!({"id": session_id.to_string(), "type": "session_deleted"})))
}

fn parse_status(text: &str) -> Result<Option<SessionStatus>, HttpError> {
    match text {
        "idle" => Ok(Some(SessionStatus::Idle)),
        "running" => Ok(Some(SessionStatus::Running)),
        "terminated" => Ok(Some(SessionStatus::Terminated)),
        // agentd never reschedules a session on its own: nothing is in that status.
        "rescheduling" => Ok(None),
        other => Err(HttpError::invalid(format!("statuses[]: unknown status {other:?}"))),
    }
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    query.only(&[
        "agent_id",
        "agent_version",
        "created_at[gte]",
        "created_at[gt]",
        "created_at[lte]",
        "created_at[lt]",
        "include_archived",
        "limit",
        "order",
        "page",
        "statuses",
        "deployment_id",
        "memory_store_id",
    ])?;
    for field in ["deployment_id", "memory_store_id"] {
        if query.get(field).is_some() {
            return Err(HttpError::unsupported(field, "agentd has no such objects yet"));
        }
    }
    let order = query.order(Order::Descending)?;
    let asked: Vec<&str> = query.all("statuses");
    let mut statuses = Vec::new();
    for text in &asked {
        statuses.extend(parse_status(text)?);
    }
    if !asked.is_empty() && statuses.is_empty() {
        return Ok(Json(list_body(Vec::new(), None)));
    }
    let agent = query
        .get("agent_id")
        .map(|text| text.parse::<AgentId>().map_err(|_| HttpError::invalid("agent_id is not an agent id")))
        .transpose()?;
    let session_query = SessionQuery {
        agent,
        agent_version: query.u32("agent_version")?,
        statuses,
        include_archived: query.bool("include_archived")?,
        created: query.created()?,
        order,
        after: page_cursor(&query, order)?,
        limit: query.list_limit()?,
    };
    let page =
        state.service.call(&caller, ClientRequest::ListSessions { query: session_query }).await?.into_sessions()?;
    let mut agents = Agents::default();
    let mut data = Vec::with_capacity(page.sessions.len());
    for view in &page.sessions {
        let agent = agents.snapshot(&state, view).await?;
        data.push(session_json(view, agent.as_ref()));
    }
    let next_page = page.next.map(|next| encode_cursor(order, next));
    Ok(Json(json!({"data": data, "next_page": next_page, "prev_page": null})))
}

/// Text content of a user event: text blocks only.
pub(super) fn text_blocks(field: &str, value: Option<&Value>) -> Result<Vec<ContentBlock>, HttpError> {
    let Some(blocks) = value.filter(|value| !value.is_null()) else { return Ok(Vec::new()) };
    let blocks = blocks.as_array().ok_or_else(|| HttpError::invalid(format!("{field} must be an array")))?;
    blocks
        .iter()
        .enumerate()
        .map(|(index, block)| match block.get("type").and_then(Value::as_str) {
            Some("text") => block
                .get("text")
                .and_then(Value::as_str)
                .map(ContentBlock::text)
                .ok_or_else(|| HttpError::invalid(format!("{field}[{index}].text must be a string"))),
            Some(kind @ ("image" | "document" | "search_result" | "redacted")) => {
                Err(HttpError::unsupported(&format!("{field}[{index}] ({kind})"), "agentd carries text content only"))
            }
            other => Err(HttpError::invalid(format!("{field}[{index}]: unknown content type {other:?}"))),
        })
        .collect()
}
