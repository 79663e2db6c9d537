//! `/v1/vaults` and their credentials, resources of the key's workspace.
//! Secret values are write-only: sealed by the metadata leader before they
//! are replicated, never shown again.
//!
//! agentd has `environment_variable` credentials: the tools of a session
//! that names the vault (`vault_ids`) get `secret_name` set to the value,
//! which is scrubbed from every result before it is recorded. Until secrets
//! are injected at egress, such a credential reaches every host its tools
//! reach: `networking` must be `unrestricted`, and `injection_location` (a
//! placeholder substituted at egress) is refused unless it asks for nothing.
//!
//! MCP credentials (`static_bearer`: `token`, `mcp_server_url`; `mcp_oauth`:
//! `access_token`, `mcp_server_url`, `expires_at`, `refresh`) are presented by
//! the node to the MCP server whose URL is `mcp_server_url`, for sessions
//! that name the vault; tools never see them. An `mcp_oauth` token past its
//! `expires_at` (or refused by the server) is refreshed at the refresh's
//! `token_endpoint` and the new one stored, sealed.

use agentd_protocol::api::{ClientRequest, CredentialChange, McpCredentialChange, OAuthChange, OAuthRefreshChange};
use agentd_protocol::ids::{CredentialId, VaultId};
use agentd_protocol::resource::{
    Credential, McpAuth, Order, Resource, ResourceBody, ResourceId, ResourceKind, ResourceQuery, ResourceVersion,
    TokenEndpointAuth, VaultBody,
};
use agentd_protocol::tenancy::Caller;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::error::HttpError;
use super::util::{
    encode_cursor, list_body, metadata_from, metadata_json, metadata_patch, page_cursor, parse_body, parse_time,
    rfc3339, rfc3339_or_null, Query,
};
use super::AppState;

type Answer = Result<Json<Value>, HttpError>;

fn parse_vault_id(text: &str) -> Result<VaultId, HttpError> {
    text.parse().map_err(|_| HttpError::not_found(format!("vault {text:?} not found")))
}

fn parse_credential_id(text: &str) -> Result<CredentialId, HttpError> {
    text.parse().map_err(|_| HttpError::not_found(format!("credential {text:?} not found")))
}

fn only(field: &str, map: &Map<String, Value>, known: &[&str]) -> Result<(), HttpError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(HttpError::invalid(format!("unknown field `{field}{key}`"))),
        None => Ok(()),
    }
}

fn vault_json(resource: &Resource) -> Option<Value> {
    let version = resource.latest()?;
    let vault = resource.vault_body()?;
    Some(json!({
        "id": resource.id.to_string(),
        "type": "vault",
        "display_name": vault.display_name,
        "metadata": metadata_json(&version.metadata),
        "created_at": rfc3339(resource.created_at_ms),
        "updated_at": rfc3339(resource.updated_at_ms),
        "archived_at": rfc3339_or_null(resource.archived_at_ms),
    }))
}

/// What a credential's `auth` shows: never a secret.
fn auth_json(credential: &Credential) -> Value {
    let Some(mcp) = &credential.mcp else {
        return json!({
            "type": "environment_variable",
            "secret_name": credential.secret_name,
            "networking": {"type": "unrestricted"},
            // The tools see the value itself; nothing substitutes a placeholder.
            "injection_location": {"header": false, "body": false},
        });
    };
    match &mcp.auth {
        McpAuth::StaticBearer => json!({"type": "static_bearer", "mcp_server_url": mcp.server_url}),
        McpAuth::OAuth { expires_at_ms, refresh } => json!({
            "type": "mcp_oauth",
            "mcp_server_url": mcp.server_url,
            "expires_at": rfc3339_or_null(*expires_at_ms),
            "refresh": refresh.as_ref().map(|refresh| json!({
                "client_id": refresh.client_id,
                "token_endpoint": refresh.token_endpoint,
                "token_endpoint_auth": {"type": refresh.endpoint_auth.name()},
                "scope": refresh.scope,
                "resource": refresh.resource,
            })),
        }),
    }
}

fn credential_json(vault_id: VaultId, credential: &Credential) -> Value {
    json!({
        "id": credential.id.to_string(),
        "type": "vault_credential",
        "vault_id": vault_id.to_string(),
        "display_name": credential.display_name,
        "metadata": metadata_json(&credential.metadata),
        "auth": auth_json(credential),
        "created_at": rfc3339(credential.created_at_ms),
        "updated_at": rfc3339(credential.updated_at_ms),
        "archived_at": rfc3339_or_null(credential.archived_at_ms),
    })
}

fn answer(resource: &Resource) -> Answer {
    vault_json(resource).map(Json).ok_or_else(|| HttpError::not_found(format!("vault {} not found", resource.id)))
}

async fn get(state: &AppState, caller: &Caller, id: VaultId) -> Result<Resource, HttpError> {
    let request = ClientRequest::GetResource { id: ResourceId::Vault(id) };
    Ok(state.service.call(caller, request).await?.into_resource()?)
}

fn credential_of(resource: &Resource, id: CredentialId) -> Result<&Credential, HttpError> {
    resource
        .vault_body()
        .and_then(|vault| vault.credentials.iter().find(|credential| credential.id == id))
        .ok_or_else(|| HttpError::not_found(format!("credential {id} not found")))
}

fn random_bits() -> u128 {
    rand::random()
}

pub async fn create(State(state): State<AppState>, Extension(caller): Extension<Caller>, body: Bytes) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    only("", &map, &["display_name", "metadata"])?;
    let display_name = map
        .get("display_name")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::invalid("display_name is required"))?;
    let version = ResourceVersion {
        body: ResourceBody::Vault(VaultBody { display_name: display_name.to_string(), credentials: Vec::new() }),
        description: None,
        metadata: metadata_from("metadata", map.get("metadata").and_then(Value::as_object))?,
        created_at_ms: 0,
    };
    let id = ResourceId::Vault(VaultId::from_random(random_bits()));
    let request = ClientRequest::PutResource { id, version, expected_revision: Some(0) };
    answer(&state.service.call(&caller, request).await?.into_resource()?)
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vault_id): Path<String>,
) -> Answer {
    answer(&get(&state, &caller, parse_vault_id(&vault_id)?).await?)
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vault_id): Path<String>,
    body: Bytes,
) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    only("", &map, &["display_name", "metadata"])?;
    let id = parse_vault_id(&vault_id)?;
    let current = get(&state, &caller, id).await?;
    let mut next = current.latest().cloned().ok_or_else(|| HttpError::not_found(format!("vault {id} not found")))?;
    if let (Some(name), ResourceBody::Vault(vault)) = (map.get("display_name"), &mut next.body) {
        vault.display_name =
            name.as_str().ok_or_else(|| HttpError::invalid("display_name must be a string"))?.to_string();
    }
    if let Some(patch) = map.get("metadata").filter(|value| !value.is_null()) {
        let patch = patch.as_object().ok_or_else(|| HttpError::invalid("metadata must be an object"))?;
        next.metadata = agentd_protocol::resource::patch_metadata(&next.metadata, &metadata_patch("metadata", patch)?);
    }
    let request = ClientRequest::PutResource {
        id: ResourceId::Vault(id),
        version: next,
        expected_revision: Some(current.revision),
    };
    answer(&state.service.call(&caller, request).await?.into_resource()?)
}

pub async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vault_id): Path<String>,
) -> Answer {
    let request = ClientRequest::ArchiveResource { id: ResourceId::Vault(parse_vault_id(&vault_id)?) };
    answer(&state.service.call(&caller, request).await?.into_resource()?)
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vault_id): Path<String>,
) -> Answer {
    let id = parse_vault_id(&vault_id)?;
    state.service.call(&caller, ClientRequest::DeleteResource { id: ResourceId::Vault(id) }).await?.into_done()?;
    Ok(Json(json!({"id": id.to_string(), "type": "vault_deleted"})))
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
        kind: ResourceKind::Vault,
        include_archived: query.bool("include_archived")?,
        created: Default::default(),
        order,
        after: page_cursor(&query, order)?,
        limit: query.list_limit()?,
    };
    let page =
        state.service.call(&caller, ClientRequest::ListResources { query: resource_query }).await?.into_resources()?;
    let data = page.resources.iter().filter_map(vault_json).collect();
    Ok(Json(list_body(data, page.next.map(|next| encode_cursor(order, next)))))
}

/// The secret, name and hosts an `auth` object sets. `current` is the
/// credential an update changes (`None` when creating: then what a new
/// credential needs is required).
fn auth_change(auth: &Value, change: &mut CredentialChange, current: Option<&Credential>) -> Result<(), HttpError> {
    let create = current.is_none();
    let map = auth.as_object().ok_or_else(|| HttpError::invalid("auth must be an object"))?;
    let kind = map.get("type").and_then(Value::as_str);
    let current_kind = current.map(|credential| match credential.mcp.as_ref().map(|mcp| &mcp.auth) {
        None => "environment_variable",
        Some(McpAuth::StaticBearer) => "static_bearer",
        Some(McpAuth::OAuth { .. }) => "mcp_oauth",
    });
    if let (Some(kind), Some(current_kind)) = (kind, current_kind) {
        if kind != current_kind {
            return Err(HttpError::invalid(format!("auth.type is {current_kind}; it cannot become {kind}"))
                .with_code("invalid_config_type_change"));
        }
    }
    match kind {
        Some("environment_variable") => {}
        Some("static_bearer" | "mcp_oauth") => return mcp_auth_change(map, change, current),
        other => return Err(HttpError::invalid(format!("auth.type: unknown credential type {other:?}"))),
    }
    only("auth.", map, &["type", "secret_name", "secret_value", "networking", "injection_location"])?;
    let substitutes = |location: &Value| location.as_object().is_none_or(|map| map.values().any(|on| on != false));
    if map.get("injection_location").is_some_and(|value| !value.is_null() && substitutes(value)) {
        return Err(HttpError::unsupported(
            "auth.injection_location",
            "secrets are injected at egress in a later release",
        ));
    }
    if let Some(networking) = map.get("networking").filter(|value| !value.is_null()) {
        if networking.get("type").and_then(Value::as_str) != Some("unrestricted") {
            return Err(HttpError::unsupported(
                "auth.networking",
                "a credential reaches every host its tools reach until secrets are injected at egress; use unrestricted",
            ));
        }
    } else if create {
        return Err(HttpError::invalid("auth.networking is required"));
    }
    change.secret_name = map.get("secret_name").and_then(Value::as_str).map(str::to_string);
    change.secret_value = map.get("secret_value").and_then(Value::as_str).map(str::to_string);
    if create && (change.secret_name.is_none() || change.secret_value.is_none()) {
        return Err(HttpError::invalid("auth.secret_name and auth.secret_value are required"));
    }
    Ok(())
}

/// An MCP credential's `auth`: the token, the server, and for `mcp_oauth`
/// the expiry and refresh settings.
fn mcp_auth_change(
    map: &Map<String, Value>,
    change: &mut CredentialChange,
    current: Option<&Credential>,
) -> Result<(), HttpError> {
    let oauth = map.get("type").and_then(Value::as_str) == Some("mcp_oauth");
    let token_field = if oauth { "access_token" } else { "token" };
    let known: &[&str] = if oauth {
        &["type", "access_token", "mcp_server_url", "expires_at", "refresh"]
    } else {
        &["type", "token", "mcp_server_url"]
    };
    only("auth.", map, known)?;
    let text = |field: &str| map.get(field).and_then(Value::as_str).map(str::to_string);
    change.secret_value = text(token_field);
    let current_url = current.and_then(|credential| credential.mcp.as_ref()).map(|mcp| mcp.server_url.clone());
    let server_url = text("mcp_server_url").or(current_url);
    let (Some(server_url), true) = (server_url, current.is_some() || change.secret_value.is_some()) else {
        return Err(HttpError::invalid(format!("auth.{token_field} and auth.mcp_server_url are required")));
    };
    let oauth = match oauth {
        false => None,
        true => Some(OAuthChange {
            expires_at_ms: match map.get("expires_at").and_then(Value::as_str) {
                Some(at) => Some(parse_time("auth.expires_at", at)?),
                None => None,
            },
            refresh: map.get("refresh").filter(|value| !value.is_null()).map(parse_refresh).transpose()?,
        }),
    };
    change.mcp = Some(McpCredentialChange { server_url, oauth });
    Ok(())
}

/// `auth.refresh` of an `mcp_oauth` credential.
fn parse_refresh(value: &Value) -> Result<OAuthRefreshChange, HttpError> {
    let map = value.as_object().ok_or_else(|| HttpError::invalid("auth.refresh must be an object"))?;
    only(
        "auth.refresh.",
        map,
        &["client_id", "refresh_token", "token_endpoint", "token_endpoint_auth", "scope", "resource"],
    )?;
    let required = |field: &str| {
        map.get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| HttpError::invalid(format!("auth.refresh.{field} is required")))
    };
    let endpoint_auth = map.get("token_endpoint_auth").and_then(Value::as_object);
    let (endpoint_auth, client_secret) = match endpoint_auth.and_then(|auth| auth.get("type")).and_then(Value::as_str) {
        None | Some("none") => (TokenEndpointAuth::None, None),
        Some(kind @ ("client_secret_basic" | "client_secret_post")) => {
            let secret = endpoint_auth.and_then(|auth| auth.get("client_secret")).and_then(Value::as_str);
            let secret = secret
                .ok_or_else(|| HttpError::invalid("auth.refresh.token_endpoint_auth.client_secret is required"))?;
            let kind = if kind == "client_secret_basic" {
                TokenEndpointAuth::ClientSecretBasic
            } else {
                TokenEndpointAuth::ClientSecretPost
            };
            (kind, Some(secret.to_string()))
        }
        Some(other) => {
            return Err(HttpError::invalid(format!("auth.refresh.token_endpoint_auth.type {other:?} is unknown")))
        }
    };
    let optional = |field: &str| map.get(field).and_then(Value::as_str).map(str::to_string);
    Ok(OAuthRefreshChange {
        client_id: required("client_id")?,
        token_endpoint: required("token_endpoint")?,
        endpoint_auth,
        client_secret,
        refresh_token: required("refresh_token")?,
        scope: optional("scope"),
        resource: optional("resource"),
    })
}

fn empty_change() -> CredentialChange {
    CredentialChange {
        display_name: None,
        metadata: Vec::new(),
        secret_name: None,
        secret_value: None,
        allowed_hosts: None,
        archive: false,
        mcp: None,
    }
}

async fn put_credential(
    state: &AppState,
    caller: &Caller,
    vault_id: VaultId,
    credential_id: CredentialId,
    change: CredentialChange,
) -> Answer {
    let request = ClientRequest::PutCredential { vault_id, credential_id, change };
    let resource = state.service.call(caller, request).await?.into_resource()?;
    Ok(Json(credential_json(vault_id, credential_of(&resource, credential_id)?)))
}

pub async fn create_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vault_id): Path<String>,
    body: Bytes,
) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    only("", &map, &["auth", "display_name", "metadata"])?;
    let mut change = empty_change();
    auth_change(map.get("auth").ok_or_else(|| HttpError::invalid("auth is required"))?, &mut change, None)?;
    change.display_name = Some(map.get("display_name").and_then(Value::as_str).map(str::to_string));
    let metadata = metadata_from("metadata", map.get("metadata").and_then(Value::as_object))?;
    change.metadata = metadata.into_iter().map(|(key, value)| (key, Some(value))).collect();
    let credential_id = CredentialId::from_random(random_bits());
    put_credential(&state, &caller, parse_vault_id(&vault_id)?, credential_id, change).await
}

pub async fn retrieve_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vault_id, credential_id)): Path<(String, String)>,
) -> Answer {
    let vault_id = parse_vault_id(&vault_id)?;
    let resource = get(&state, &caller, vault_id).await?;
    Ok(Json(credential_json(vault_id, credential_of(&resource, parse_credential_id(&credential_id)?)?)))
}

pub async fn update_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vault_id, credential_id)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let map: Map<String, Value> = parse_body(&body)?;
    only("", &map, &["auth", "display_name", "metadata"])?;
    let vault_id = parse_vault_id(&vault_id)?;
    let credential_id = parse_credential_id(&credential_id)?;
    // The credential must exist: an update never creates one.
    let vault = get(&state, &caller, vault_id).await?;
    let current = credential_of(&vault, credential_id)?;
    let mut change = empty_change();
    if let Some(auth) = map.get("auth").filter(|value| !value.is_null()) {
        auth_change(auth, &mut change, Some(current))?;
    }
    if let Some(name) = map.get("display_name") {
        change.display_name = Some(name.as_str().map(str::to_string));
    }
    if let Some(patch) = map.get("metadata").filter(|value| !value.is_null()) {
        let patch = patch.as_object().ok_or_else(|| HttpError::invalid("metadata must be an object"))?;
        change.metadata = metadata_patch("metadata", patch)?;
    }
    put_credential(&state, &caller, vault_id, credential_id, change).await
}

pub async fn archive_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vault_id, credential_id)): Path<(String, String)>,
) -> Answer {
    let vault_id = parse_vault_id(&vault_id)?;
    let credential_id = parse_credential_id(&credential_id)?;
    credential_of(&get(&state, &caller, vault_id).await?, credential_id)?;
    put_credential(&state, &caller, vault_id, credential_id, CredentialChange { archive: true, ..empty_change() }).await
}

pub async fn delete_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((vault_id, credential_id)): Path<(String, String)>,
) -> Answer {
    let vault_id = parse_vault_id(&vault_id)?;
    let credential_id = parse_credential_id(&credential_id)?;
    let request = ClientRequest::DeleteCredential { vault_id, credential_id };
    state.service.call(&caller, request).await?.into_resource()?;
    Ok(Json(json!({"id": credential_id.to_string(), "type": "vault_credential_deleted"})))
}

/// Credentials of a vault, in creation order; `page` is the last id a page held.
pub async fn list_credentials(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(vault_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    query.only(&["include_archived", "limit", "page"])?;
    let include_archived = query.bool("include_archived")?;
    let limit = query.list_limit()? as usize;
    let vault_id = parse_vault_id(&vault_id)?;
    let resource = get(&state, &caller, vault_id).await?;
    let credentials: Vec<&Credential> = resource
        .vault_body()
        .map(|vault| {
            vault
                .credentials
                .iter()
                .filter(|credential| include_archived || credential.archived_at_ms.is_none())
                .collect()
        })
        .unwrap_or_default();
    let start = match query.get("page") {
        Some(page) => {
            let after = parse_credential_id(page)
                .map_err(|_| HttpError::invalid(format!("page {page:?} is not a cursor this API returned")))?;
            credentials
                .iter()
                .position(|credential| credential.id == after)
                .map_or(credentials.len(), |index| index + 1)
        }
        None => 0,
    };
    let shown: Vec<&Credential> = credentials.iter().skip(start).take(limit).copied().collect();
    let next = (start + shown.len() < credentials.len())
        .then(|| shown.last().map(|credential| credential.id.to_string()))
        .flatten();
    Ok(Json(list_body(shown.iter().map(|credential| credential_json(vault_id, credential)).collect(), next)))
}
