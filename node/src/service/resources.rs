//! Agents, environments and vaults as resources of a workspace, their
//! credentials, and API keys: run on the metadata group's leader. What a
//! client sees of a resource never holds a sealed secret.

use agentd_protocol::agent::is_secret_name;
use agentd_protocol::api::{ClientRequest, ClientResponse, CredentialChange, McpCredentialChange};
use agentd_protocol::approval::ApprovalPolicy;
use agentd_protocol::command::Command;
use agentd_protocol::ids::{ApiKeyId, CredentialId, VaultId};
use agentd_protocol::limits::{API_KEY_NAME_BYTES_MAX, DESCRIPTION_BYTES_MAX, TEXT_BYTES_MAX};
use agentd_protocol::resource::{
    patch_metadata, validate_metadata, Credential, McpAuth, McpCredential, OAuthRefresh, Resource, ResourceBody,
    ResourceId, ResourceVersion,
};
use agentd_protocol::tenancy::{validate_workspace, ApiKeyRecord, Caller};
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::propose;

use super::metadata::not_found;
use super::session::ensure_linearizable;
use super::Service;

impl Service {
    pub(super) async fn execute_resource_request(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        let resource = |resource: Resource| Ok(ClientResponse::Resource(for_client(caller, resource)));
        match request {
            ClientRequest::PutResource { id, version, expected_revision } => {
                resource(self.put_resource_here(caller, metadata, id, version, expected_revision).await?)
            }
            ClientRequest::GetResource { id } => resource(self.get_resource_here(caller, metadata, id).await?),
            ClientRequest::ListResources { mut query } => {
                ensure_linearizable(metadata).await?;
                query.limit = query.limit.clamp(1, agentd_protocol::limits::LIST_LIMIT_MAX);
                let mut page = metadata.state.resources_page(caller.owning_workspace(), &query)?;
                page.resources = page.resources.into_iter().map(|resource| for_client(caller, resource)).collect();
                Ok(ClientResponse::Resources(page))
            }
            ClientRequest::ArchiveResource { id } => {
                let workspace = self.get_resource_here(caller, metadata, id).await?.workspace;
                let command = Command::ArchiveResource { id, workspace, at_ms: self.now_ms() };
                resource(propose(metadata, command).await?.into_resource()?)
            }
            ClientRequest::DeleteResource { id } => {
                let workspace = self.get_resource_here(caller, metadata, id).await?.workspace;
                propose(metadata, Command::DeleteResource { id, workspace }).await?.into_done()?;
                Ok(ClientResponse::Done)
            }
            ClientRequest::PutCredential { vault_id, credential_id, change } => {
                resource(self.put_credential_here(caller, metadata, vault_id, credential_id, change).await?)
            }
            ClientRequest::DeleteCredential { vault_id, credential_id } => {
                let workspace = self.get_resource_here(caller, metadata, ResourceId::Vault(vault_id)).await?.workspace;
                let command = Command::PutCredential {
                    vault_id,
                    workspace,
                    credential_id,
                    credential: None,
                    at_ms: self.now_ms(),
                };
                resource(propose(metadata, command).await?.into_resource()?)
            }
            other => self.execute_api_key_request(caller, metadata, other).await,
        }
    }

    /// A resource the caller may see, after this leader confirmed its leadership.
    pub(super) async fn get_resource_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        id: ResourceId,
    ) -> Result<Resource, ApiError> {
        ensure_linearizable(metadata).await?;
        match metadata.state.resource(id)? {
            Some(resource) if caller.sees(&resource.workspace) => Ok(resource),
            _ => Err(not_found(id)),
        }
    }

    /// Creates a resource of the caller's workspace or adds a version. A
    /// vault's credentials change only through `PutCredential`: a new version
    /// keeps the current ones, whatever the request carried.
    pub(super) async fn put_resource_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        id: ResourceId,
        mut version: ResourceVersion,
        expected_revision: Option<u64>,
    ) -> Result<Resource, ApiError> {
        version.body.validate()?;
        validate_metadata(&version.metadata)?;
        if version.description.as_ref().is_some_and(|description| description.len() > DESCRIPTION_BYTES_MAX) {
            return Err(ApiError::InvalidRequest {
                message: format!("description exceeds {DESCRIPTION_BYTES_MAX} bytes"),
            });
        }
        version.created_at_ms = self.now_ms();
        if let ResourceBody::Vault(vault) = &mut version.body {
            ensure_linearizable(metadata).await?;
            let current = metadata.state.resource(id)?;
            vault.credentials = current
                .as_ref()
                .and_then(Resource::vault_body)
                .map(|body| body.credentials.clone())
                .unwrap_or_default();
        }
        let workspace = caller.owning_workspace().to_string();
        let command = Command::PutResource { id, workspace, version, expected_revision, at_ms: self.now_ms() };
        propose(metadata, command).await?.into_resource()
    }

    /// Creates or changes a credential of a vault the caller may see; the
    /// value is sealed here, so the Raft log and every store hold only
    /// ciphertext.
    pub(super) async fn put_credential_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        vault_id: VaultId,
        credential_id: CredentialId,
        change: CredentialChange,
    ) -> Result<Resource, ApiError> {
        let vault = self.get_resource_here(caller, metadata, ResourceId::Vault(vault_id)).await?;
        let current = vault
            .vault_body()
            .and_then(|body| body.credentials.iter().find(|credential| credential.id == credential_id))
            .cloned();
        let credential = self.changed_credential(vault_id, credential_id, current, change)?;
        let command = Command::PutCredential {
            vault_id,
            workspace: vault.workspace,
            credential_id,
            credential: Some(credential),
            at_ms: self.now_ms(),
        };
        propose(metadata, command).await?.into_resource()
    }

    /// The credential `change` makes of `current` (or creates).
    fn changed_credential(
        &self,
        vault_id: VaultId,
        id: CredentialId,
        current: Option<Credential>,
        change: CredentialChange,
    ) -> Result<Credential, ApiError> {
        let invalid = |message: String| Err(ApiError::InvalidRequest { message });
        let now = self.now_ms();
        let is_mcp = match (&current, &change.mcp) {
            (Some(current), Some(_)) if current.mcp.is_none() => {
                return invalid(format!("credential {id} is an environment_variable one; its type cannot change"))
            }
            (Some(current), None) => current.mcp.is_some(),
            (_, Some(_)) => true,
            (None, None) => false,
        };
        let secret_name = match (&current, change.secret_name) {
            // An MCP credential's token is sealed under the credential's own id.
            _ if is_mcp => id.to_string(),
            (Some(current), Some(name)) if name != current.secret_name => {
                return invalid(format!("secret_name of credential {id} cannot change"))
            }
            (Some(current), _) => current.secret_name.clone(),
            (None, Some(name)) => name,
            (None, None) => return invalid("a new credential needs a secret_name".into()),
        };
        if !is_mcp && !is_secret_name(&secret_name) {
            return invalid(format!("secret_name {secret_name:?} must be an environment variable name"));
        }
        let sealed = match (change.secret_value, &current) {
            (Some(value), _) => self.seal_value(&vault_id, &secret_name, &value)?,
            (None, Some(current)) => current.sealed.clone(),
            (None, None) => return invalid("a new credential needs a secret value (or token)".into()),
        };
        let mcp = match change.mcp {
            Some(mcp) => Some(self.mcp_credential(vault_id, id, current.as_ref().and_then(|c| c.mcp.clone()), mcp)?),
            None => current.as_ref().and_then(|current| current.mcp.clone()),
        };
        let mut credential = current.unwrap_or(Credential {
            id,
            display_name: None,
            metadata: Vec::new(),
            secret_name: secret_name.clone(),
            sealed: Vec::new(),
            allowed_hosts: None,
            created_at_ms: now,
            updated_at_ms: now,
            archived_at_ms: None,
            mcp: None,
        });
        credential.sealed = sealed;
        credential.mcp = mcp;
        if let Some(display_name) = change.display_name {
            credential.display_name = display_name;
        }
        credential.metadata = patch_metadata(&credential.metadata, &change.metadata);
        validate_metadata(&credential.metadata)?;
        if let Some(allowed_hosts) = change.allowed_hosts {
            credential.allowed_hosts = allowed_hosts;
        }
        if change.archive && credential.archived_at_ms.is_none() {
            credential.archived_at_ms = Some(now);
        }
        credential.updated_at_ms = now;
        Ok(credential)
    }

    /// `value` sealed under the vault and `name`.
    fn seal_value(&self, vault_id: &VaultId, name: &str, value: &str) -> Result<Vec<u8>, ApiError> {
        if value.is_empty() || value.len() > TEXT_BYTES_MAX {
            return Err(ApiError::InvalidRequest { message: format!("a secret value is 1 to {TEXT_BYTES_MAX} bytes") });
        }
        let context = crate::vault::seal_context(vault_id, name);
        self.secrets_key().seal(&context, value).map_err(|error| ApiError::Internal { message: error.to_string() })
    }

    /// The MCP side of a credential: its server, and for `mcp_oauth` the
    /// expiry and the refresh settings, secrets sealed. A refresh the change
    /// leaves out keeps the current one.
    fn mcp_credential(
        &self,
        vault_id: VaultId,
        id: CredentialId,
        current: Option<McpCredential>,
        change: McpCredentialChange,
    ) -> Result<McpCredential, ApiError> {
        if !(change.server_url.starts_with("http://") || change.server_url.starts_with("https://")) {
            return Err(ApiError::InvalidRequest {
                message: format!("mcp_server_url {:?} must be an http:// or https:// URL", change.server_url),
            });
        }
        let Some(oauth) = change.oauth else {
            return Ok(McpCredential { server_url: change.server_url, auth: McpAuth::StaticBearer });
        };
        let current_refresh = match current.map(|current| current.auth) {
            Some(McpAuth::OAuth { refresh, .. }) => refresh,
            _ => None,
        };
        let refresh = match oauth.refresh {
            Some(refresh) => Some(OAuthRefresh {
                sealed_refresh_token: self.seal_value(
                    &vault_id,
                    &format!("{id}/refresh_token"),
                    &refresh.refresh_token,
                )?,
                sealed_client_secret: refresh
                    .client_secret
                    .map(|secret| self.seal_value(&vault_id, &format!("{id}/client_secret"), &secret))
                    .transpose()?,
                client_id: refresh.client_id,
                token_endpoint: refresh.token_endpoint,
                endpoint_auth: refresh.endpoint_auth,
                scope: refresh.scope,
                resource: refresh.resource,
            }),
            None => current_refresh,
        };
        Ok(McpCredential {
            server_url: change.server_url,
            auth: McpAuth::OAuth { expires_at_ms: oauth.expires_at_ms, refresh },
        })
    }

    async fn execute_api_key_request(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match request {
            ClientRequest::GetApiKeyRecord { key_id } => {
                if *caller != Caller::Node {
                    return Err(ApiError::PermissionDenied { message: "only nodes read key records".into() });
                }
                ensure_linearizable(metadata).await?;
                let record = self.local_api_key(key_id)?;
                record.map(ClientResponse::ApiKeyRecord).ok_or_else(|| key_not_found(key_id))
            }
            ClientRequest::PutApiKey { record } => {
                require_admin(caller)?;
                validate_workspace(&record.workspace)?;
                if record.name.is_empty() || record.name.len() > API_KEY_NAME_BYTES_MAX {
                    return Err(ApiError::InvalidRequest {
                        message: format!("a key name is 1 to {API_KEY_NAME_BYTES_MAX} bytes"),
                    });
                }
                let info = propose(metadata, Command::PutApiKey(record)).await?.into_api_key()?;
                Ok(ClientResponse::ApiKey(info))
            }
            ClientRequest::ListApiKeys { workspace } => {
                require_admin(caller)?;
                ensure_linearizable(metadata).await?;
                let keys = metadata.state.api_keys()?;
                let keys = keys
                    .iter()
                    .filter(|record| workspace.as_ref().is_none_or(|workspace| *workspace == record.workspace))
                    .map(ApiKeyRecord::info)
                    .collect();
                Ok(ClientResponse::ApiKeys(keys))
            }
            ClientRequest::RevokeApiKey { key_id } => {
                require_admin(caller)?;
                let command = Command::RevokeApiKey { key_id, at_ms: self.now_ms() };
                Ok(ClientResponse::ApiKey(propose(metadata, command).await?.into_api_key()?))
            }
            ClientRequest::PutApprovalPolicy { workspace, rules, expected_version } => {
                require_admin(caller)?;
                let workspace = workspace.unwrap_or_else(|| caller.owning_workspace().to_string());
                validate_workspace(&workspace)?;
                ApprovalPolicy::validate_rules(&rules)?;
                let command = Command::PutApprovalPolicy { workspace, rules, expected_version, at_ms: self.now_ms() };
                Ok(ClientResponse::ApprovalPolicy(propose(metadata, command).await?.into_approval_policy()?))
            }
            ClientRequest::GetApprovalPolicy { workspace } => {
                let workspace = workspace.unwrap_or_else(|| caller.owning_workspace().to_string());
                if !caller.is_admin() && !caller.sees(&workspace) {
                    return Err(ApiError::NotFound { what: format!("workspace {workspace}") });
                }
                ensure_linearizable(metadata).await?;
                Ok(ClientResponse::ApprovalPolicy(metadata.state.approval_policy(&workspace)?))
            }
            other => Err(ApiError::InvalidRequest { message: format!("{} is not a metadata request", other.kind()) }),
        }
    }
}

/// A resource as a client may see it: a vault's sealed secrets left out
/// (nodes, which inject them, see them).
fn for_client(caller: &Caller, mut resource: Resource) -> Resource {
    if *caller == Caller::Node {
        return resource;
    }
    for version in &mut resource.versions {
        if let ResourceBody::Vault(vault) = &mut version.body {
            for credential in &mut vault.credentials {
                credential.sealed.clear();
                if let Some(McpCredential { auth: McpAuth::OAuth { refresh: Some(refresh), .. }, .. }) =
                    &mut credential.mcp
                {
                    refresh.sealed_refresh_token.clear();
                    refresh.sealed_client_secret = refresh.sealed_client_secret.as_ref().map(|_| Vec::new());
                }
            }
        }
    }
    resource
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied { message: "managing API keys needs an admin key".into() })
    }
}

fn key_not_found(key_id: ApiKeyId) -> ApiError {
    ApiError::NotFound { what: format!("API key {key_id}") }
}
