//! Agents, environments and vaults as the metadata group holds them, and
//! what the Managed Agents API shows of sessions beyond their log: one
//! record per object with its workspace, its versions and its life
//! (created, updated, archived), plus the queries and pages that list them.
//!
//! The spec each object carries is the one the runtime uses
//! ([`AgentSpec`], [`EnvironmentSpec`], a vault's sealed secrets); the rest
//! (descriptions, metadata, display names) is what clients see of it.

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentSpec, Environment, EnvironmentSpec, PermissionPolicy, SealedVault, VaultInfo};
use crate::api::{SessionInfo, SessionStatus};
use crate::event::Event;
use crate::ids::{AgentId, CredentialId, EnvironmentId, VaultId};
use crate::{limits, ApiError};

/// An agent, an environment or a vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceId {
    Agent(AgentId),
    Environment(EnvironmentId),
    Vault(VaultId),
}

/// What kind of resource an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    Agent,
    Environment,
    Vault,
}

impl ResourceKind {
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Agent => "agent",
            ResourceKind::Environment => "environment",
            ResourceKind::Vault => "vault",
        }
    }

    /// Whether an update adds a version (agents and environments, whose
    /// versions sessions pin or run) or replaces the only one (vaults: an
    /// old version would keep a deleted secret).
    pub fn keeps_versions(self) -> bool {
        !matches!(self, ResourceKind::Vault)
    }
}

impl ResourceId {
    pub fn kind(self) -> ResourceKind {
        match self {
            ResourceId::Agent(_) => ResourceKind::Agent,
            ResourceId::Environment(_) => ResourceKind::Environment,
            ResourceId::Vault(_) => ResourceKind::Vault,
        }
    }

    /// The id's 16 bytes, whatever its kind.
    pub fn bytes(self) -> [u8; 16] {
        match self {
            ResourceId::Agent(id) => id.0,
            ResourceId::Environment(id) => id.0,
            ResourceId::Vault(id) => id.0,
        }
    }

    /// The id of kind `kind` with these bytes.
    pub fn from_parts(kind: ResourceKind, bytes: [u8; 16]) -> ResourceId {
        match kind {
            ResourceKind::Agent => ResourceId::Agent(AgentId(bytes)),
            ResourceKind::Environment => ResourceId::Environment(EnvironmentId(bytes)),
            ResourceKind::Vault => ResourceId::Vault(VaultId(bytes)),
        }
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceId::Agent(id) => id.fmt(f),
            ResourceId::Environment(id) => id.fmt(f),
            ResourceId::Vault(id) => id.fmt(f),
        }
    }
}

/// An agent's spec and the defaults of its built-in toolset, so that what a
/// client configured can be shown back resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBody {
    pub spec: AgentSpec,
    /// The toolset's `default_config`: whether a built-in tool with no config
    /// of its own is enabled, and its permission policy.
    pub default_enabled: bool,
    pub default_policy: PermissionPolicy,
}

/// A vault: a display name and credentials whose secrets are sealed with the
/// cluster's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultBody {
    pub display_name: String,
    pub credentials: Vec<Credential>,
}

/// An `environment_variable` credential: tools of sessions that use the
/// vault get `secret_name` set to the secret, which is scrubbed from every
/// result before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: CredentialId,
    pub display_name: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub secret_name: String,
    /// Nonce and ciphertext of the value (never sent to clients).
    pub sealed: Vec<u8>,
    /// The hosts the credential is meant for (`networking: limited`), or
    /// `None` for any host (`unrestricted`).
    pub allowed_hosts: Option<Vec<String>>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub archived_at_ms: Option<u64>,
    /// Set for an MCP credential (`static_bearer`, `mcp_oauth`): `sealed` is
    /// then the token the node sends to the server, never a tool's variable.
    pub mcp: Option<McpCredential>,
}

/// A credential the node presents to the MCP server at `server_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpCredential {
    pub server_url: String,
    pub auth: McpAuth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum McpAuth {
    /// A bearer token that does not expire.
    StaticBearer,
    /// An OAuth access token, refreshed at `refresh.token_endpoint` once
    /// `expires_at_ms` has passed (or the server refuses it).
    OAuth { expires_at_ms: Option<u64>, refresh: Option<OAuthRefresh> },
}

/// How an `mcp_oauth` credential's access token is refreshed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthRefresh {
    pub client_id: String,
    pub token_endpoint: String,
    pub endpoint_auth: TokenEndpointAuth,
    pub scope: Option<String>,
    pub resource: Option<String>,
    /// Nonce and ciphertext of the refresh token.
    pub sealed_refresh_token: Vec<u8>,
    /// Nonce and ciphertext of the client secret (`client_secret_*` only).
    pub sealed_client_secret: Option<Vec<u8>>,
}

/// How the client authenticates to the token endpoint (RFC 6749 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenEndpointAuth {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl TokenEndpointAuth {
    pub fn name(self) -> &'static str {
        match self {
            TokenEndpointAuth::None => "none",
            TokenEndpointAuth::ClientSecretBasic => "client_secret_basic",
            TokenEndpointAuth::ClientSecretPost => "client_secret_post",
        }
    }
}

/// Whether two MCP server URLs name the same endpoint: equal but for case in
/// the scheme and host and a trailing slash.
pub fn same_mcp_url(a: &str, b: &str) -> bool {
    let normal = |url: &str| {
        let url = url.trim().trim_end_matches('/');
        match url.find("://") {
            Some(scheme_end) => {
                let host_end = url[scheme_end + 3..].find('/').map_or(url.len(), |end| scheme_end + 3 + end);
                format!("{}{}", url[..host_end].to_ascii_lowercase(), &url[host_end..])
            }
            None => url.to_string(),
        }
    };
    normal(a) == normal(b)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceBody {
    Agent(AgentBody),
    Environment(EnvironmentSpec),
    Vault(VaultBody),
}

impl ResourceBody {
    pub fn kind(&self) -> ResourceKind {
        match self {
            ResourceBody::Agent(_) => ResourceKind::Agent,
            ResourceBody::Environment(_) => ResourceKind::Environment,
            ResourceBody::Vault(_) => ResourceKind::Vault,
        }
    }

    /// Checks what a client may not get wrong: the spec's own rules and the
    /// bounds of every field.
    pub fn validate(&self) -> Result<(), ApiError> {
        match self {
            ResourceBody::Agent(agent) => agent.spec.validate(),
            ResourceBody::Environment(spec) => spec.validate(),
            ResourceBody::Vault(vault) => {
                if vault.display_name.is_empty() || vault.display_name.len() > limits::NAME_BYTES_MAX {
                    return Err(ApiError::InvalidRequest {
                        message: format!("display_name is 1 to {} bytes", limits::NAME_BYTES_MAX),
                    });
                }
                Ok(())
            }
        }
    }
}

/// One version of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceVersion {
    pub body: ResourceBody,
    pub description: Option<String>,
    /// Client-chosen labels, sorted by key.
    pub metadata: Vec<(String, String)>,
    pub created_at_ms: u64,
}

/// An agent, environment or vault with every version it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub id: ResourceId,
    pub workspace: String,
    /// Agents and environments keep every version (the first is version 1);
    /// a vault keeps its latest only.
    pub versions: Vec<ResourceVersion>,
    /// Goes up by one with every change (a version, an archive, a
    /// credential): what a conditional update names.
    pub revision: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub archived_at_ms: Option<u64>,
}

impl Resource {
    pub fn latest(&self) -> Option<&ResourceVersion> {
        self.versions.last()
    }

    /// The version number clients see: 1 for the first.
    pub fn version_number(&self) -> u32 {
        self.versions.len() as u32
    }

    /// Version `number` (1-based) of the resource.
    pub fn version(&self, number: u32) -> Option<&ResourceVersion> {
        self.versions.get((number as usize).checked_sub(1)?)
    }

    /// The agent the runtime sees: every version's spec.
    pub fn to_agent(&self) -> Option<Agent> {
        let ResourceId::Agent(id) = self.id else { return None };
        let versions = self
            .versions
            .iter()
            .filter_map(|version| match &version.body {
                ResourceBody::Agent(agent) => Some(agent.spec.clone()),
                _ => None,
            })
            .collect();
        Some(Agent { id, versions, created_at_ms: self.created_at_ms })
    }

    /// The environment the runtime sees: every version's spec.
    pub fn to_environment(&self) -> Option<Environment> {
        let ResourceId::Environment(id) = self.id else { return None };
        let versions = self
            .versions
            .iter()
            .filter_map(|version| match &version.body {
                ResourceBody::Environment(spec) => Some(spec.clone()),
                _ => None,
            })
            .collect();
        Some(Environment { id, versions, created_at_ms: self.created_at_ms })
    }

    /// The vault's body, if this is a vault.
    pub fn vault_body(&self) -> Option<&VaultBody> {
        match self.latest().map(|version| &version.body) {
            Some(ResourceBody::Vault(vault)) => Some(vault),
            _ => None,
        }
    }

    /// The vault's secrets the runtime injects: every credential not archived.
    pub fn to_sealed_vault(&self) -> Option<SealedVault> {
        let ResourceId::Vault(id) = self.id else { return None };
        let vault = self.vault_body()?;
        let secrets = vault
            .credentials
            .iter()
            .filter(|credential| credential.archived_at_ms.is_none() && credential.mcp.is_none())
            .map(|credential| (credential.secret_name.clone(), credential.sealed.clone()))
            .collect();
        Some(SealedVault { id, name: vault.display_name.clone(), secrets })
    }

    /// The vault's live MCP credential for the server at `url`, if any.
    pub fn mcp_credential(&self, url: &str) -> Option<&Credential> {
        self.vault_body()?.credentials.iter().find(|credential| {
            credential.archived_at_ms.is_none()
                && credential.mcp.as_ref().is_some_and(|mcp| same_mcp_url(&mcp.server_url, url))
        })
    }

    /// What the native client sees of a vault.
    pub fn to_vault_info(&self) -> Option<VaultInfo> {
        self.to_sealed_vault().map(|vault| vault.info())
    }
}

/// The order of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Order {
    Ascending,
    #[default]
    Descending,
}

/// Where a list of objects ordered by creation resumes: after (or before)
/// this object, whatever was created since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreationCursor {
    pub created_at_ms: u64,
    pub id: [u8; 16],
}

/// Bounds on when an object was created, in milliseconds, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedWithin {
    pub from_ms: u64,
    pub to_ms: u64,
}

impl Default for CreatedWithin {
    fn default() -> Self {
        CreatedWithin { from_ms: 0, to_ms: u64::MAX }
    }
}

impl CreatedWithin {
    pub fn contains(&self, at_ms: u64) -> bool {
        (self.from_ms..=self.to_ms).contains(&at_ms)
    }
}

/// A page of agents, environments or vaults of the caller's workspace,
/// newest first or oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceQuery {
    pub kind: ResourceKind,
    pub include_archived: bool,
    pub created: CreatedWithin,
    pub order: Order,
    pub after: Option<CreationCursor>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcePage {
    pub resources: Vec<Resource>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<CreationCursor>,
}

/// What the API shows of a session besides its log state: whose it is, its
/// title and labels, the vaults its tools use, and its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDetails {
    pub workspace: String,
    pub title: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub vault_ids: Vec<VaultId>,
    /// The agent the session runs instead of its pinned version's spec
    /// (`agent_with_overrides`).
    pub agent_override: Option<AgentBody>,
    pub updated_at_ms: u64,
    pub archived_at_ms: Option<u64>,
    pub deleted_at_ms: Option<u64>,
}

impl SessionDetails {
    /// The details of a session created without any (by the native client
    /// before workspaces existed, or with `CreateSession`).
    pub fn default_for(created_at_ms: u64) -> SessionDetails {
        SessionDetails {
            workspace: crate::tenancy::DEFAULT_WORKSPACE.to_string(),
            title: None,
            metadata: Vec::new(),
            vault_ids: Vec::new(),
            agent_override: None,
            updated_at_ms: created_at_ms,
            archived_at_ms: None,
            deleted_at_ms: None,
        }
    }
}

/// Tokens a session's model calls used, summed from the `model_usage` of
/// its `span.model_request_end` events (and, in logs written before that,
/// its `session.usage` events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionUsageTotals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model_requests: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// A session as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub info: SessionInfo,
    pub details: SessionDetails,
    pub usage: SessionUsageTotals,
}

/// How a session is created: the agent whose version it pins (`None`: a
/// plain event log), the version (`None`: the latest), an override of its
/// spec, the environment its tools run in, and the details.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionCreate {
    pub agent: Option<AgentId>,
    pub agent_version: Option<u32>,
    pub agent_override: Option<AgentBody>,
    pub environment: Option<EnvironmentId>,
    pub title: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub vault_ids: Vec<VaultId>,
}

/// A change to a session's details; `None` keeps a field.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionUpdate {
    /// `Some(None)` clears the title.
    pub title: Option<Option<String>>,
    /// Keys to set (`Some`) or delete (`None`).
    pub metadata: Vec<(String, Option<String>)>,
}

/// A page of the sessions of the caller's workspace, across every shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionQuery {
    pub agent: Option<AgentId>,
    pub agent_version: Option<u32>,
    /// Only sessions in one of these statuses (all when empty).
    pub statuses: Vec<SessionStatus>,
    pub include_archived: bool,
    pub created: CreatedWithin,
    pub order: Order,
    pub after: Option<CreationCursor>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    pub sessions: Vec<SessionView>,
    pub next: Option<CreationCursor>,
}

/// A page of one session's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuery {
    /// Only these event types (`agent.message`, ...); all when empty.
    pub types: Vec<String>,
    pub order: Order,
    /// Events after this sequence number (ascending) or before it
    /// (descending); `None` starts at the first (or the last) event.
    pub after_seq: Option<u64>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The sequence number to resume from; `None` on the last page.
    pub next_seq: Option<u64>,
}

/// Checks client-chosen labels: at most [`limits::METADATA_PAIRS_MAX`] pairs,
/// keys of 1 to [`limits::METADATA_KEY_BYTES_MAX`] bytes, values of at most
/// [`limits::METADATA_VALUE_BYTES_MAX`].
pub fn validate_metadata(metadata: &[(String, String)]) -> Result<(), ApiError> {
    let invalid = |message: String| Err(ApiError::InvalidRequest { message });
    if metadata.len() > limits::METADATA_PAIRS_MAX {
        return invalid(format!("metadata holds at most {} pairs", limits::METADATA_PAIRS_MAX));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > limits::METADATA_KEY_BYTES_MAX {
            return invalid(format!("metadata keys are 1 to {} bytes", limits::METADATA_KEY_BYTES_MAX));
        }
        if value.len() > limits::METADATA_VALUE_BYTES_MAX {
            return invalid(format!("metadata value of {key:?} exceeds {} bytes", limits::METADATA_VALUE_BYTES_MAX));
        }
    }
    Ok(())
}

/// Applies a metadata patch: `Some` sets a key, `None` deletes it. The
/// result is sorted by key.
pub fn patch_metadata(current: &[(String, String)], patch: &[(String, Option<String>)]) -> Vec<(String, String)> {
    let mut merged: std::collections::BTreeMap<String, String> = current.iter().cloned().collect();
    for (key, value) in patch {
        match value {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }
    merged.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_urls_compare_without_case_in_the_host_or_a_trailing_slash() {
        assert!(same_mcp_url("http://Example.com:80/mcp/", "http://example.com:80/mcp"));
        assert!(!same_mcp_url("http://example.com/MCP", "http://example.com/mcp"));
        assert!(!same_mcp_url("http://example.com/mcp", "https://example.com/mcp"));
    }

    #[test]
    fn metadata_patches_set_and_delete_keys() {
        let current = vec![("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())];
        let patched = patch_metadata(&current, &[("b".into(), None), ("c".into(), Some("3".into()))]);
        assert_eq!(patched, vec![("a".to_string(), "1".to_string()), ("c".to_string(), "3".to_string())]);
    }

    #[test]
    fn metadata_bounds_are_checked() {
        let too_many: Vec<(String, String)> =
            (0..=limits::METADATA_PAIRS_MAX).map(|index| (format!("k{index}"), String::new())).collect();
        assert!(validate_metadata(&too_many).is_err());
        assert!(validate_metadata(&[("k".repeat(limits::METADATA_KEY_BYTES_MAX + 1), String::new())]).is_err());
        assert!(validate_metadata(&[("k".into(), "v".repeat(limits::METADATA_VALUE_BYTES_MAX + 1))]).is_err());
        assert!(validate_metadata(&[("k".into(), "v".into())]).is_ok());
    }
}
