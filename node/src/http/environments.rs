//! `/v1/environments`: where a session's tools run, as resources of the
//! key's workspace.
//!
//! `config` is `{"type": "cloud", "networking": ..., "packages": ...}`.
//! `networking` `unrestricted` gives tools the host's network; `limited`
//! gives them `allowed_hosts` only, through the sandbox's egress proxy (an
//! empty list: no network, agentd's default). `packages` must be empty:
//! agentd installs none yet, and says so rather than ignoring them.
//! agentd's own settings (sandbox driver and limits) are the extension
//! `config.agentd`: `{"driver", "memory_mib", "processes_max",
//! "cpu_millicores", "tool_timeout_ms", "eager_provisioning"}`.

use agentd_protocol::agent::{EnvironmentSpec, Network, Resources, SandboxDriver};
use agentd_protocol::api::ClientRequest;
use agentd_protocol::ids::EnvironmentId;
use agentd_protocol::limits::TOOL_TIMEOUT_MS_DEFAULT;
use agentd_protocol::resource::{
    patch_metadata, Order, Resource, ResourceBody, ResourceId, ResourceKind, ResourceQuery, ResourceVersion,
};
use agentd_protocol::tenancy::Caller;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::error::HttpError;
use super::util::{
    encode_cursor, list_body, metadata_from, metadata_json, metadata_patch, page_cursor, parse_body, rfc3339,
    rfc3339_or_null, Query,
};
use super::AppState;

type Answer = Result<Json<Value>, HttpError>;

const PACKAGE_MANAGERS: [&str; 6] = ["apt", "cargo", "gem", "go", "npm", "pip"];

pub(super) fn parse_id(text: &str) -> Result<EnvironmentId, HttpError> {
    text.parse()
        .map_err(|_| HttpError::not_found(format!("environment {text:?} not found")).with_code("environment_not_found"))
}

fn spec_of(version: &ResourceVersion) -> Option<&EnvironmentSpec> {
    match &version.body {
        ResourceBody::Environment(spec) => Some(spec),
        _ => None,
    }
}

fn networking_json(network: &Network) -> Value {
    match network {
        Network::Unrestricted => json!({"type": "unrestricted"}),
        Network::None => {
            json!({"type": "limited", "allowed_hosts": [], "allow_mcp_servers": false, "allow_package_managers": false})
        }
        Network::Allowlist(hosts) => {
            json!({"type": "limited", "allowed_hosts": hosts, "allow_mcp_servers": false, "allow_package_managers": false})
        }
    }
}

fn config_json(spec: &EnvironmentSpec) -> Value {
    let packages: Map<String, Value> = std::iter::once(("type".to_string(), json!("packages")))
        .chain(PACKAGE_MANAGERS.iter().map(|manager| (manager.to_string(), json!([]))))
        .collect();
    json!({
        "type": "cloud",
        "networking": networking_json(&spec.network),
        "packages": packages,
        "agentd": {
            "driver": spec.driver,
            "memory_mib": spec.resources.memory_mib,
            "processes_max": spec.resources.processes_max,
            "cpu_millicores": spec.resources.cpu_millicores,
            "tool_timeout_ms": spec.tool_timeout_ms,
            "eager_provisioning": spec.eager_provisioning,
        },
    })
}

pub(super) fn environment_json(resource: &Resource) -> Option<Value> {
    let version = resource.latest()?;
    let spec = spec_of(version)?;
    Some(json!({
        "id": resource.id.to_string(),
        "type": "environment",
        "name": spec.name,
        "description": version.description,
        "metadata": metadata_json(&version.metadata),
        "scope": null,
        "config": config_json(spec),
        "created_at": rfc3339(resource.created_at_ms),
        "updated_at": rfc3339(resource.updated_at_ms),
        "archived_at": rfc3339_or_null(resource.archived_at_ms),
    }))
}

fn answer(resource: &Resource) -> Answer {
    environment_json(resource)
        .map(Json)
        .ok_or_else(|| HttpError::not_found(format!("environment {} not found", resource.id)))
}

fn field_object<'a>(field: &str, value: &'a Value) -> Result<&'a Map<String, Value>, HttpError> {
    value.as_object().ok_or_else(|| HttpError::invalid(format!("{field} must be an object")))
}

fn only(field: &str, map: &Map<String, Value>, known: &[&str]) -> Result<(), HttpError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(HttpError::invalid(format!("unknown field `{field}{key}`"))),
        None => Ok(()),
    }
}

fn parse_networking(value: &Value) -> Result<Network, HttpError> {
    let map = field_object("config.networking", value)?;
    only("config.networking.", map, &["type", "allowed_hosts", "allow_mcp_servers", "allow_package_managers"])?;
    match map.get("type").and_then(Value::as_str) {
        Some("unrestricted") => Ok(Network::Unrestricted),
        Some("limited") => {
            for flag in ["allow_mcp_servers", "allow_package_managers"] {
                if map.get(flag).and_then(Value::as_bool) == Some(true) {
                    return Err(HttpError::unsupported(
                        &format!("config.networking.{flag}"),
                        "list the hosts in allowed_hosts instead",
                    ));
                }
            }
            let hosts: Vec<String> = match map.get("allowed_hosts") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(hosts)) => hosts
                    .iter()
                    .map(|host| host.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| HttpError::invalid("config.networking.allowed_hosts must be strings"))?,
                Some(_) => return Err(HttpError::invalid("config.networking.allowed_hosts must be an array")),
            };
            Ok(if hosts.is_empty() { Network::None } else { Network::Allowlist(hosts) })
        }
        other => {
            Err(HttpError::invalid(format!("config.networking.type must be unrestricted or limited, not {other:?}")))
        }
    }
}

fn refuse_packages(value: &Value) -> Result<(), HttpError> {
    let map = field_object("config.packages", value)?;
    for (key, list) in map {
        if key == "type" {
            continue;
        }
        if !PACKAGE_MANAGERS.contains(&key.as_str()) {
            return Err(HttpError::invalid(format!("unknown field `config.packages.{key}`")));
        }
        if list.as_array().is_some_and(|packages| !packages.is_empty()) {
            return Err(HttpError::unsupported(
                &format!("config.packages.{key}"),
                "agentd installs no packages yet; bake them into the sandbox image or install them from a tool",
            ));
        }
    }
    Ok(())
}

fn apply_agentd(value: &Value, spec: &mut EnvironmentSpec) -> Result<(), HttpError> {
    let map = field_object("config.agentd", value)?;
    only(
        "config.agentd.",
        map,
        &["driver", "memory_mib", "processes_max", "cpu_millicores", "tool_timeout_ms", "eager_provisioning"],
    )?;
    let number = |field: &str| -> Result<Option<u64>, HttpError> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| HttpError::invalid(format!("config.agentd.{field} must be a whole number"))),
        }
    };
    if let Some(driver) = map.get("driver").filter(|value| !value.is_null()) {
        let driver: SandboxDriver = driver
            .as_str()
            .ok_or_else(|| HttpError::invalid("config.agentd.driver must be a string"))?
            .parse()
            .map_err(HttpError::invalid)?;
        spec.driver = driver.name().to_string();
    }
    let resources = &mut spec.resources;
    resources.memory_mib = number("memory_mib")?.or(resources.memory_mib);
    resources.processes_max = number("processes_max")?.or(resources.processes_max);
    resources.cpu_millicores = number("cpu_millicores")?.or(resources.cpu_millicores);
    spec.tool_timeout_ms = number("tool_timeout_ms")?.unwrap_or(spec.tool_timeout_ms);
    if let Some(eager) = map.get("eager_provisioning").and_then(Value::as_bool) {
        spec.eager_provisioning = eager;
    }
    Ok(())
}

/// Applies a request's `config` to `spec`; omitted sub-fields keep their value.
fn apply_config(value: &Value, spec: &mut EnvironmentSpec) -> Result<(), HttpError> {
    let map = field_object("config", value)?;
    only("config.", map, &["type", "networking", "packages", "agentd"])?;
    match map.get("type").and_then(Value::as_str) {
        None | Some("cloud") => {}
        Some("self_hosted") => {
            return Err(HttpError::unsupported("config.type", "self-hosted environments come later"))
        }
        Some(other) => return Err(HttpError::invalid(format!("config.type must be cloud, not {other:?}"))),
    }
    if let Some(networking) = map.get("networking").filter(|value| !value.is_null()) {
        spec.network = parse_networking(networking)?;
    }
    if let Some(packages) = map.get("packages").filter(|value| !value.is_null()) {
        refuse_packages(packages)?;
    }
    if let Some(agentd) = map.get("agentd").filter(|value| !value.is_null()) {
        apply_agentd(agentd, spec)?;
    }
    Ok(())
}

fn check_fields(map: &Map<String, Value>) -> Result<(), HttpError> {
    only("", map, &["name", "description", "config", "metadata", "scope"])?;
    if map.get("scope").is_some_and(|scope| !scope.is_null()) {
        return Err(HttpError::unsupported("scope", "environments belong to the key's workspace"));
    }
    Ok(())
}

fn text(map: &Map<String, Value>, field: &str) -> Result<Option<Option<String>>, HttpError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(text)) => Ok(Some((!text.is_empty()).then(|| text.clone()))),
        Some(_) => Err(HttpError::invalid(format!("{field} must be a string"))),
    }
}

fn version_from_create(map: &Map<String, Value>) -> Result<ResourceVersion, HttpError> {
    check_fields(map)?;
    let name = map.get("name").and_then(Value::as_str).ok_or_else(|| HttpError::invalid("name is required"))?;
    let mut spec = EnvironmentSpec {
        name: name.to_string(),
        driver: SandboxDriver::default().name().to_string(),
        network: Network::None,
        tool_timeout_ms: TOOL_TIMEOUT_MS_DEFAULT,
        eager_provisioning: false,
        vaults: Vec::new(),
        resources: Resources::default(),
    };
    if let Some(config) = map.get("config").filter(|value| !value.is_null()) {
        apply_config(config, &mut spec)?;
    }
    Ok(ResourceVersion {
        body: ResourceBody::Environment(spec),
        description: text(map, "description")?.flatten(),
        metadata: metadata_from("metadata", map.get("metadata").and_then(Value::as_object))?,
        created_at_ms: 0,
    })
}

fn version_from_update(map: &Map<String, Value>, current: &ResourceVersion) -> Result<ResourceVersion, HttpError> {
    check_fields(map)?;
    let mut next = current.clone();
    let ResourceBody::Environment(spec) = &mut next.body else { return Err(HttpError::invalid("not an environment")) };
    if let Some(name) = map.get("name") {
        spec.name = name.as_str().ok_or_else(|| HttpError::invalid("name must be a string"))?.to_string();
    }
    if let Some(config) = map.get("config").filter(|value| !value.is_null()) {
        apply_config(config, spec)?;
    }
    if let Some(description) = text(map, "description")? {
        next.description = description;
    }
    if let Some(patch) = map.get("metadata").filter(|value| !value.is_null()) {
        let patch = patch.as_object().ok_or_else(|| HttpError::invalid("metadata must be an object"))?;
        next.metadata = patch_metadata(&next.metadata, &metadata_patch("metadata", patch)?);
    }
    Ok(next)
}

async fn get(state: &AppState, caller: &Caller, id: EnvironmentId) -> Result<Resource, HttpError> {
    let request = ClientRequest::GetResource { id: ResourceId::Environment(id) };
    state
        .service
        .call(caller, request)
        .await?
        .into_resource()
        .map_err(|error| HttpError::from(error).with_code("environment_not_found"))
}

async fn put(
    state: &AppState,
    caller: &Caller,
    id: EnvironmentId,
    version: ResourceVersion,
    expected_revision: u64,
) -> Result<Resource, HttpError> {
    let request = ClientRequest::PutResource {
        id: ResourceId::Environment(id),
        version,
        expected_revision: Some(expected_revision),
    };
    Ok(state.service.call(caller, request).await?.into_resource()?)
}

fn new_id() -> EnvironmentId {
    EnvironmentId::from_random(rand::random())
}

pub async fn create(State(state): State<AppState>, Extension(caller): Extension<Caller>, body: Bytes) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    let version = version_from_create(&map)?;
    answer(&put(&state, &caller, new_id(), version, 0).await?)
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(environment_id): Path<String>,
) -> Answer {
    answer(&get(&state, &caller, parse_id(&environment_id)?).await?)
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(environment_id): Path<String>,
    body: Bytes,
) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    let id = parse_id(&environment_id)?;
    let current = get(&state, &caller, id).await?;
    let latest = current.latest().ok_or_else(|| HttpError::not_found(format!("environment {id} not found")))?;
    if current.archived_at_ms.is_some() {
        return Err(HttpError::invalid(format!("environment {id} is archived")).with_code("environment_archived"));
    }
    let next = version_from_update(&map, latest)?;
    answer(&put(&state, &caller, id, next, current.revision).await?)
}

pub async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(environment_id): Path<String>,
) -> Answer {
    let request = ClientRequest::ArchiveResource { id: ResourceId::Environment(parse_id(&environment_id)?) };
    answer(&state.service.call(&caller, request).await?.into_resource()?)
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(environment_id): Path<String>,
) -> Answer {
    let id = parse_id(&environment_id)?;
    state
        .service
        .call(&caller, ClientRequest::DeleteResource { id: ResourceId::Environment(id) })
        .await?
        .into_done()?;
    Ok(Json(json!({"id": id.to_string(), "type": "environment_deleted"})))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    query.only(&["include_archived", "limit", "page"])?;
    let order = Order::Descending;
    let resource_query = ResourceQuery {
        kind: ResourceKind::Environment,
        include_archived: query.bool("include_archived")?,
        created: Default::default(),
        order,
        after: page_cursor(&query, order)?,
        limit: query.list_limit()?,
    };
    let page =
        state.service.call(&caller, ClientRequest::ListResources { query: resource_query }).await?.into_resources()?;
    let data = page.resources.iter().filter_map(environment_json).collect();
    Ok(Json(list_body(data, page.next.map(|next| encode_cursor(order, next)))))
}
