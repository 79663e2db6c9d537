//! `/v1/agents`: agents as versioned resources of the key's workspace.
//!
//! An update adds a version; `version` in an update is optimistic
//! concurrency (a stale one is a 409 the SDKs do not retry). Agents are
//! archived, never deleted. `mcp_servers` (`{type: "url", name, url}`) go
//! with one `mcp_toolset` each in `tools`. Fields agentd does not have yet
//! (`skills`, `multiagent`, an `aws_role` identity, model `effort`) are
//! refused with a 400 naming them.

use agentd_protocol::agent::{AgentSpec, McpServer};
use agentd_protocol::api::ClientRequest;
use agentd_protocol::ids::AgentId;
use agentd_protocol::limits::{MODEL_CALLS_PER_TURN_DEFAULT, NAME_BYTES_MAX};
use agentd_protocol::resource::{
    patch_metadata, AgentBody, Order, Resource, ResourceBody, ResourceId, ResourceKind, ResourceQuery, ResourceVersion,
};
use agentd_protocol::tenancy::Caller;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::HttpError;
use super::tools::{parse_tools, tools_json, ParsedTools};
use super::util::{
    encode_cursor, list_body, metadata_from, metadata_json, metadata_patch, page_cursor, parse_body, rfc3339,
    rfc3339_or_null, Query,
};
use super::AppState;

type Answer = Result<Json<Value>, HttpError>;

/// Conditional updates retried when another writer got in between and the
/// client did not name a version.
const UPDATE_ATTEMPTS: usize = 3;

pub(super) fn parse_id(text: &str) -> Result<AgentId, HttpError> {
    text.parse().map_err(|_| HttpError::not_found(format!("agent {text:?} not found")))
}

/// The body of one version of an agent.
pub(super) fn agent_body(version: &ResourceVersion) -> Option<&AgentBody> {
    match &version.body {
        ResourceBody::Agent(body) => Some(body),
        _ => None,
    }
}

/// What the API shows of an agent's spec, tools and model: shared by agents
/// and by the agent snapshot of a session.
pub(super) fn spec_fields(body: &AgentBody, description: Option<&String>) -> Map<String, Value> {
    let spec = &body.spec;
    let mut fields = Map::new();
    fields.insert("name".into(), json!(spec.name));
    fields.insert("description".into(), json!(description));
    fields.insert("system".into(), json!(spec.system));
    fields.insert("model".into(), json!({"id": spec.model, "speed": "standard"}));
    fields.insert("tools".into(), tools_json(body));
    let servers: Vec<Value> =
        spec.mcp_servers.iter().map(|server| json!({"type": "url", "name": server.name, "url": server.url})).collect();
    fields.insert("mcp_servers".into(), Value::Array(servers));
    fields.insert("skills".into(), json!([]));
    fields.insert("execution_identity".into(), json!({"type": "service_account"}));
    fields.insert("multiagent".into(), Value::Null);
    fields
}

/// An agent as of version `number` (1-based).
pub(super) fn agent_json(resource: &Resource, number: u32) -> Option<Value> {
    let version = resource.version(number)?;
    let body = agent_body(version)?;
    let mut fields = spec_fields(body, version.description.as_ref());
    fields.insert("id".into(), json!(resource.id.to_string()));
    fields.insert("type".into(), json!("agent"));
    fields.insert("metadata".into(), metadata_json(&version.metadata));
    fields.insert("version".into(), json!(number));
    fields.insert("created_at".into(), json!(rfc3339(resource.created_at_ms)));
    fields.insert("updated_at".into(), json!(rfc3339(version.created_at_ms)));
    fields.insert("archived_at".into(), rfc3339_or_null(resource.archived_at_ms));
    Some(Value::Object(fields))
}

fn latest_json(resource: &Resource) -> Result<Json<Value>, HttpError> {
    agent_json(resource, resource.version_number())
        .map(Json)
        .ok_or_else(|| HttpError::not_found(format!("agent {} not found", resource.id)))
}

/// The model a request names: a string, or `{id, speed?}`.
pub(super) fn parse_model(value: &Value) -> Result<String, HttpError> {
    let id = match value {
        Value::String(id) => id.clone(),
        Value::Object(model) => {
            for key in model.keys() {
                match key.as_str() {
                    "id" => {}
                    "speed" if model.get("speed").and_then(Value::as_str).is_none_or(|speed| speed == "standard") => {}
                    "speed" => {
                        return Err(HttpError::unsupported("model.speed", "only \"standard\" speed exists here"))
                    }
                    "effort" | "inference_geo" => {
                        return Err(HttpError::unsupported(&format!("model.{key}"), "agentd sends no such option"))
                    }
                    other => return Err(HttpError::invalid(format!("unknown field `model.{other}`"))),
                }
            }
            model.get("id").and_then(Value::as_str).unwrap_or_default().to_string()
        }
        _ => return Err(HttpError::invalid("model must be a string or {\"id\": ...}")),
    };
    if id.is_empty() || id.len() > NAME_BYTES_MAX {
        return Err(HttpError::invalid(format!("model is 1 to {NAME_BYTES_MAX} bytes")));
    }
    Ok(id)
}

/// Refuses the agent fields agentd does not have yet, unless empty.
pub(super) fn refuse_unsupported(map: &Map<String, Value>) -> Result<(), HttpError> {
    let empty = |value: &Value| value.is_null() || value.as_array().is_some_and(Vec::is_empty);
    for (field, why) in [
        ("skills", "skills come with a later release"),
        ("multiagent", "multi-agent sessions come with a later release"),
    ] {
        if map.get(field).is_some_and(|value| !empty(value)) {
            return Err(HttpError::unsupported(field, why));
        }
    }
    if let Some(identity) = map.get("execution_identity").filter(|value| !value.is_null()) {
        if identity.get("type").and_then(Value::as_str) != Some("service_account") {
            return Err(HttpError::unsupported("execution_identity", "only service_account exists here"));
        }
    }
    Ok(())
}

const AGENT_FIELDS: [&str; 10] = [
    "name",
    "model",
    "description",
    "system",
    "tools",
    "mcp_servers",
    "skills",
    "metadata",
    "multiagent",
    "execution_identity",
];

fn check_fields(map: &Map<String, Value>, extra: &[&str]) -> Result<(), HttpError> {
    match map.keys().find(|key| !AGENT_FIELDS.contains(&key.as_str()) && !extra.contains(&key.as_str())) {
        Some(key) => Err(HttpError::invalid(format!("unknown field `{key}`"))),
        None => refuse_unsupported(map),
    }
}

fn optional_text(map: &Map<String, Value>, field: &str) -> Result<Option<Option<String>>, HttpError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(text)) if text.is_empty() => Ok(Some(None)),
        Some(Value::String(text)) => Ok(Some(Some(text.clone()))),
        Some(_) => Err(HttpError::invalid(format!("{field} must be a string or null"))),
    }
}

/// An agent's `mcp_servers`: `[{type: "url", name, url}]`.
pub(super) fn parse_mcp_servers(value: &Value) -> Result<Vec<McpServer>, HttpError> {
    let Some(entries) = value.as_array() else { return Err(HttpError::invalid("mcp_servers must be an array")) };
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let field = format!("mcp_servers[{index}]");
            let map = entry.as_object().ok_or_else(|| HttpError::invalid(format!("{field} must be an object")))?;
            if let Some(key) = map.keys().find(|key| !["type", "name", "url"].contains(&key.as_str())) {
                return Err(HttpError::invalid(format!("unknown field `{field}.{key}`")));
            }
            if map.get("type").and_then(Value::as_str).is_some_and(|kind| kind != "url") {
                return Err(HttpError::invalid(format!("{field}.type must be \"url\"")));
            }
            let text = |name: &str| {
                map.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| HttpError::invalid(format!("{field}.{name} is required")))
            };
            Ok(McpServer { name: text("name")?, url: text("url")? })
        })
        .collect()
}

/// The version a create request describes.
fn version_from_create(map: &Map<String, Value>) -> Result<ResourceVersion, HttpError> {
    check_fields(map, &[])?;
    let name = map.get("name").and_then(Value::as_str).ok_or_else(|| HttpError::invalid("name is required"))?;
    let model = parse_model(map.get("model").ok_or_else(|| HttpError::invalid("model is required"))?)?;
    let tools = map.get("tools").filter(|value| !value.is_null()).map(parse_tools).transpose()?.unwrap_or_default();
    let spec = AgentSpec {
        name: name.to_string(),
        model,
        system: optional_text(map, "system")?.flatten(),
        tools: Vec::new(),
        custom_tools: Vec::new(),
        max_model_calls_per_turn: MODEL_CALLS_PER_TURN_DEFAULT,
        mcp_servers: match map.get("mcp_servers").filter(|value| !value.is_null()) {
            Some(servers) => parse_mcp_servers(servers)?,
            None => Vec::new(),
        },
        mcp_toolsets: Vec::new(),
    };
    Ok(ResourceVersion {
        body: ResourceBody::Agent(with_tools(spec, tools)),
        description: optional_text(map, "description")?.flatten(),
        metadata: metadata_from("metadata", map.get("metadata").and_then(Value::as_object))?,
        created_at_ms: 0,
    })
}

fn with_tools(mut spec: AgentSpec, tools: ParsedTools) -> AgentBody {
    spec.tools = tools.built_in;
    spec.custom_tools = tools.custom;
    spec.mcp_toolsets = tools.mcp_toolsets;
    AgentBody { spec, default_enabled: tools.default_enabled, default_policy: tools.default_policy }
}

/// The next version an update makes of `current`: omitted fields kept,
/// `tools` replaced, `metadata` patched.
fn version_from_update(map: &Map<String, Value>, current: &ResourceVersion) -> Result<ResourceVersion, HttpError> {
    check_fields(map, &["version"])?;
    let mut next = current.clone();
    let ResourceBody::Agent(body) = &mut next.body else { return Err(HttpError::invalid("not an agent")) };
    if let Some(name) = map.get("name") {
        body.spec.name = name.as_str().ok_or_else(|| HttpError::invalid("name must be a string"))?.to_string();
    }
    if let Some(model) = map.get("model") {
        body.spec.model = parse_model(model)?;
    }
    if let Some(system) = optional_text(map, "system")? {
        body.spec.system = system;
    }
    if let Some(servers) = map.get("mcp_servers") {
        body.spec.mcp_servers = if servers.is_null() { Vec::new() } else { parse_mcp_servers(servers)? };
    }
    if let Some(tools) = map.get("tools") {
        let tools = if tools.is_null() { ParsedTools::default() } else { parse_tools(tools)? };
        *body = with_tools(body.spec.clone(), tools);
    }
    if let Some(description) = optional_text(map, "description")? {
        next.description = description;
    }
    if let Some(patch) = map.get("metadata").filter(|value| !value.is_null()) {
        let patch = patch.as_object().ok_or_else(|| HttpError::invalid("metadata must be an object"))?;
        next.metadata = patch_metadata(&next.metadata, &metadata_patch("metadata", patch)?);
    }
    Ok(next)
}

async fn get(state: &AppState, caller: &Caller, id: AgentId) -> Result<Resource, HttpError> {
    let request = ClientRequest::GetResource { id: ResourceId::Agent(id) };
    Ok(state.service.call(caller, request).await?.into_resource()?)
}

async fn put(
    state: &AppState,
    caller: &Caller,
    id: AgentId,
    version: ResourceVersion,
    expected_revision: Option<u64>,
) -> Result<Resource, HttpError> {
    let request = ClientRequest::PutResource { id: ResourceId::Agent(id), version, expected_revision };
    Ok(state.service.call(caller, request).await?.into_resource()?)
}

fn new_id() -> AgentId {
    AgentId::from_random(rand::random())
}

pub async fn create(State(state): State<AppState>, Extension(caller): Extension<Caller>, body: Bytes) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    let version = version_from_create(&map)?;
    let resource = put(&state, &caller, new_id(), version, Some(0)).await?;
    latest_json(&resource)
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(agent_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    query.only(&["version"])?;
    let resource = get(&state, &caller, parse_id(&agent_id)?).await?;
    let number = query.u32("version")?.unwrap_or(resource.version_number());
    agent_json(&resource, number)
        .map(Json)
        .ok_or_else(|| HttpError::not_found(format!("version {number} of agent {agent_id} not found")))
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(agent_id): Path<String>,
    body: Bytes,
) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    let id = parse_id(&agent_id)?;
    let asked_version = match map.get("version") {
        None | Some(Value::Null) => None,
        Some(version) => Some(version.as_u64().ok_or_else(|| HttpError::invalid("version must be a whole number"))?),
    };
    for attempt in 1..=UPDATE_ATTEMPTS {
        let current = get(&state, &caller, id).await?;
        if asked_version.is_some_and(|version| version != u64::from(current.version_number())) {
            return Err(HttpError::from(agentd_protocol::ApiError::Conflict {
                message: format!(
                    "agent {id} is at version {}, not {}",
                    current.version_number(),
                    asked_version.unwrap_or(0)
                ),
            }));
        }
        let latest = current.latest().ok_or_else(|| HttpError::not_found(format!("agent {id} not found")))?;
        let next = version_from_update(&map, latest)?;
        match put(&state, &caller, id, next, Some(current.revision)).await {
            Ok(resource) => return latest_json(&resource),
            Err(error) if error.status.as_u16() == 409 && asked_version.is_none() && attempt < UPDATE_ATTEMPTS => {}
            Err(error) => return Err(error),
        }
    }
    Err(HttpError::invalid("the agent kept changing; try again"))
}

pub async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(agent_id): Path<String>,
) -> Answer {
    let request = ClientRequest::ArchiveResource { id: ResourceId::Agent(parse_id(&agent_id)?) };
    latest_json(&state.service.call(&caller, request).await?.into_resource()?)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    query.only(&[
        "created_at[gte]",
        "created_at[lte]",
        "created_at[gt]",
        "created_at[lt]",
        "include_archived",
        "limit",
        "page",
    ])?;
    let order = Order::Descending;
    let resource_query = ResourceQuery {
        kind: ResourceKind::Agent,
        include_archived: query.bool("include_archived")?,
        created: query.created()?,
        order,
        after: page_cursor(&query, order)?,
        limit: query.list_limit()?,
    };
    let page =
        state.service.call(&caller, ClientRequest::ListResources { query: resource_query }).await?.into_resources()?;
    let data = page.resources.iter().filter_map(|resource| agent_json(resource, resource.version_number())).collect();
    Ok(Json(list_body(data, page.next.map(|next| encode_cursor(order, next)))))
}

/// Every version of an agent, the first first; `page` is the last version a
/// page held.
pub async fn versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(agent_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    query.only(&["limit", "page"])?;
    let limit = query.list_limit()?;
    let after: u32 = match query.get("page") {
        Some(page) => page
            .strip_prefix("version_")
            .and_then(|number| number.parse().ok())
            .ok_or_else(|| HttpError::invalid(format!("page {page:?} is not a cursor this API returned")))?,
        None => 0,
    };
    let resource = get(&state, &caller, parse_id(&agent_id)?).await?;
    let last = resource.version_number();
    let data: Vec<Value> =
        (after + 1..=last).take(limit as usize).filter_map(|number| agent_json(&resource, number)).collect();
    let shown_to = after + data.len() as u32;
    let next = (shown_to < last).then(|| format!("version_{shown_to}"));
    Ok(Json(list_body(data, next)))
}
