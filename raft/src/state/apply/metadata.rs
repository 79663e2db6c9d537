//! Metadata commands: the cluster's configuration, nodes and placement;
//! agents, environments and vaults as resources of a workspace; API keys.
//!
//! **Invariant:** a command about an existing resource names the resource's
//! workspace, or it is refused as "not found": one workspace can neither
//! read nor change another's objects, on any replica.

use std::collections::BTreeMap;

use agentd_protocol::agent::{AgentSpec, EnvironmentSpec, PermissionPolicy};
use agentd_protocol::approval::{ApprovalPolicy, ApprovalRule};
use agentd_protocol::command::CommandResponse;
use agentd_protocol::ids::{ApiKeyId, CredentialId, NodeId, ShardId, VaultId};
use agentd_protocol::limits::VAULT_CREDENTIALS_MAX;
use agentd_protocol::resource::{
    AgentBody, CreationCursor, Credential, Resource, ResourceBody, ResourceId, ResourceVersion, VaultBody,
};
use agentd_protocol::tenancy::{ApiKeyRecord, DEFAULT_WORKSPACE};
use agentd_protocol::ApiError;

use super::ApplyBatch;
use crate::state::group_state::{legacy_credential_id, ClusterConfig};
use crate::store::keys::{self, Index, STATE_CF};
use crate::Error;

/// The answer to a command naming a node that was removed.
fn removed_error(node_id: NodeId) -> ApiError {
    ApiError::NodeRemoved { node: node_id }
}

fn rejected(error: ApiError) -> Result<CommandResponse, Error> {
    Ok(CommandResponse::Rejected(error))
}

fn not_found(id: ResourceId) -> ApiError {
    ApiError::NotFound { what: format!("{} {id}", id.kind().name()) }
}

impl ApplyBatch<'_> {
    pub(super) fn resource(&self, id: ResourceId) -> Result<Option<Resource>, Error> {
        match self.resources.get(&id) {
            Some(resource) => Ok(resource.clone()),
            None => self.state.resource(id),
        }
    }

    fn write_resource(&mut self, resource: Resource) -> Result<(), Error> {
        self.put(keys::resource_key(self.state.group(), resource.id), &resource)?;
        self.resources.insert(resource.id, Some(resource));
        Ok(())
    }

    /// The resource if it exists in `workspace`, or the refusal to give.
    fn owned_resource(&self, id: ResourceId, workspace: &str) -> Result<Result<Resource, ApiError>, Error> {
        Ok(match self.resource(id)? {
            Some(resource) if resource.workspace == workspace => Ok(resource),
            _ => Err(not_found(id)),
        })
    }

    pub(super) fn put_resource(
        &mut self,
        id: ResourceId,
        workspace: String,
        version: ResourceVersion,
        expected_revision: Option<u64>,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        if version.body.kind() != id.kind() {
            return rejected(ApiError::InvalidRequest {
                message: format!("{id} cannot hold a {}", version.body.kind().name()),
            });
        }
        let Some(mut resource) = self.resource(id)? else {
            if expected_revision.is_some_and(|revision| revision != 0) {
                return rejected(not_found(id));
            }
            return self.create_resource(id, workspace, version, at_ms);
        };
        if resource.workspace != workspace {
            return rejected(not_found(id));
        }
        if resource.archived_at_ms.is_some() {
            return rejected(ApiError::InvalidRequest { message: format!("{id} is archived and read-only") });
        }
        if expected_revision.is_some_and(|revision| revision != resource.revision) {
            return rejected(ApiError::Conflict {
                message: format!("{id} changed meanwhile (revision {}); read it again", resource.revision),
            });
        }
        // Re-proposing the current version (a retried request) adds nothing.
        if resource.latest().is_some_and(|latest| same_content(latest, &version)) {
            return Ok(CommandResponse::Resource(resource));
        }
        if id.kind().keeps_versions() {
            resource.versions.push(version);
        } else {
            resource.versions = vec![version];
        }
        resource.revision += 1;
        resource.updated_at_ms = at_ms;
        self.write_resource(resource.clone())?;
        Ok(CommandResponse::Resource(resource))
    }

    fn create_resource(
        &mut self,
        id: ResourceId,
        workspace: String,
        version: ResourceVersion,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let position = CreationCursor { created_at_ms: at_ms, id: id.bytes() };
        let index_key = Index::resources(id.kind()).key(self.state.group(), &workspace, position);
        self.put(index_key, &())?;
        let resource = Resource {
            id,
            workspace,
            versions: vec![version],
            revision: 1,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            archived_at_ms: None,
        };
        self.write_resource(resource.clone())?;
        Ok(CommandResponse::Resource(resource))
    }

    pub(super) fn archive_resource(
        &mut self,
        id: ResourceId,
        workspace: &str,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let mut resource = match self.owned_resource(id, workspace)? {
            Ok(resource) => resource,
            Err(error) => return rejected(error),
        };
        if resource.archived_at_ms.is_none() {
            resource.archived_at_ms = Some(at_ms);
            resource.updated_at_ms = at_ms;
            resource.revision += 1;
            self.write_resource(resource.clone())?;
        }
        Ok(CommandResponse::Resource(resource))
    }

    pub(super) fn delete_resource(&mut self, id: ResourceId, workspace: &str) -> Result<CommandResponse, Error> {
        if matches!(id, ResourceId::Agent(_)) {
            return rejected(ApiError::InvalidRequest { message: "agents are archived, not deleted".into() });
        }
        let resource = match self.owned_resource(id, workspace)? {
            Ok(resource) => resource,
            Err(error) => return rejected(error),
        };
        let group = self.state.group();
        let position = CreationCursor { created_at_ms: resource.created_at_ms, id: id.bytes() };
        self.batch.delete(keys::STATE_CF, Index::resources(id.kind()).key(group, workspace, position));
        self.batch.delete(keys::STATE_CF, keys::resource_key(group, id));
        self.resources.insert(id, None);
        Ok(CommandResponse::Done)
    }

    /// Sets (or, with `None`, removes) one credential of a vault.
    pub(super) fn put_credential(
        &mut self,
        vault_id: VaultId,
        workspace: &str,
        credential_id: CredentialId,
        credential: Option<Credential>,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let id = ResourceId::Vault(vault_id);
        let mut resource = match self.owned_resource(id, workspace)? {
            Ok(resource) if resource.archived_at_ms.is_some() => {
                return rejected(ApiError::InvalidRequest { message: format!("{id} is archived and read-only") })
            }
            Ok(resource) => resource,
            Err(error) => return rejected(error),
        };
        let Some(ResourceBody::Vault(vault)) = resource.versions.last_mut().map(|version| &mut version.body) else {
            return rejected(not_found(id));
        };
        if let Err(error) = set_credential(vault, credential_id, credential) {
            return rejected(error);
        }
        resource.revision += 1;
        resource.updated_at_ms = at_ms;
        self.write_resource(resource.clone())?;
        Ok(CommandResponse::Resource(resource))
    }

    /// The command of the native client before workspaces: creates an agent
    /// of workspace `default`, or adds a version.
    pub(super) fn put_agent(
        &mut self,
        agent_id: agentd_protocol::ids::AgentId,
        spec: AgentSpec,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let body = ResourceBody::Agent(AgentBody {
            spec,
            default_enabled: false,
            default_policy: PermissionPolicy::AlwaysAllow,
        });
        let version = ResourceVersion { body, description: None, metadata: Vec::new(), created_at_ms: at_ms };
        let response =
            self.put_resource(ResourceId::Agent(agent_id), DEFAULT_WORKSPACE.into(), version, None, at_ms)?;
        Ok(match response {
            CommandResponse::Resource(resource) => {
                resource.to_agent().map_or(CommandResponse::Done, CommandResponse::Agent)
            }
            other => other,
        })
    }

    /// The same for environments.
    pub(super) fn put_environment(
        &mut self,
        environment_id: agentd_protocol::ids::EnvironmentId,
        spec: EnvironmentSpec,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let version = ResourceVersion {
            body: ResourceBody::Environment(spec),
            description: None,
            metadata: Vec::new(),
            created_at_ms: at_ms,
        };
        let id = ResourceId::Environment(environment_id);
        let response = self.put_resource(id, DEFAULT_WORKSPACE.into(), version, None, at_ms)?;
        Ok(match response {
            CommandResponse::Resource(resource) => {
                resource.to_environment().map_or(CommandResponse::Done, CommandResponse::Environment)
            }
            other => other,
        })
    }

    /// The same for one secret of a vault: creates the vault if needed, and
    /// sets the credential that holds `secret_name`.
    pub(super) fn put_secret(
        &mut self,
        vault_id: VaultId,
        vault_name: String,
        secret_name: String,
        sealed: Vec<u8>,
    ) -> Result<CommandResponse, Error> {
        let id = ResourceId::Vault(vault_id);
        if self.resource(id)?.is_none() {
            let body = ResourceBody::Vault(VaultBody { display_name: vault_name, credentials: Vec::new() });
            let version = ResourceVersion { body, description: None, metadata: Vec::new(), created_at_ms: 0 };
            if let CommandResponse::Rejected(error) =
                self.put_resource(id, DEFAULT_WORKSPACE.into(), version, None, 0)?
            {
                return rejected(error);
            }
        }
        let credential_id = legacy_credential_id(vault_id, &secret_name);
        let credential = Credential {
            id: credential_id,
            display_name: None,
            metadata: Vec::new(),
            secret_name,
            sealed,
            allowed_hosts: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            archived_at_ms: None,
            mcp: None,
        };
        match self.put_credential(vault_id, DEFAULT_WORKSPACE, credential_id, Some(credential), 0)? {
            CommandResponse::Resource(resource) => {
                Ok(resource.to_vault_info().map_or(CommandResponse::Done, CommandResponse::Vault))
            }
            other => Ok(other),
        }
    }

    pub(super) fn put_api_key(&mut self, record: ApiKeyRecord) -> Result<CommandResponse, Error> {
        let key = keys::api_key_key(self.state.group(), record.id);
        match self.api_key(record.id)? {
            // A retried request.
            Some(existing) if existing == record => return Ok(CommandResponse::ApiKey(existing.info())),
            Some(_) => return rejected(ApiError::Conflict { message: format!("API key {} exists", record.id) }),
            None => {}
        }
        self.put(key, &record)?;
        let info = record.info();
        self.api_keys.insert(record.id, record);
        Ok(CommandResponse::ApiKey(info))
    }

    pub(super) fn revoke_api_key(&mut self, key_id: ApiKeyId, at_ms: u64) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.api_key(key_id)? else {
            return rejected(ApiError::NotFound { what: format!("API key {key_id}") });
        };
        if record.revoked_at_ms.is_none() {
            record.revoked_at_ms = Some(at_ms);
            self.put(keys::api_key_key(self.state.group(), key_id), &record)?;
            self.api_keys.insert(key_id, record.clone());
        }
        Ok(CommandResponse::ApiKey(record.info()))
    }

    pub(super) fn put_approval_policy(
        &mut self,
        workspace: String,
        rules: Vec<ApprovalRule>,
        expected_version: Option<u64>,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let current = match self.approval_policies.get(&workspace) {
            Some(policy) => policy.clone(),
            None => self.state.approval_policy(&workspace)?,
        };
        if expected_version.is_some_and(|expected| expected != current.version) {
            return rejected(ApiError::Conflict {
                message: format!(
                    "the approval policy of {workspace} is at version {}, not {}",
                    current.version,
                    expected_version.unwrap_or_default()
                ),
            });
        }
        if let Err(error) = ApprovalPolicy::validate_rules(&rules) {
            return rejected(error);
        }
        let policy =
            ApprovalPolicy { workspace: workspace.clone(), version: current.version + 1, rules, updated_at_ms: at_ms };
        self.put(keys::approval_policy_key(self.state.group(), &workspace), &policy)?;
        self.approval_policies.insert(workspace, policy.clone());
        Ok(CommandResponse::ApprovalPolicy(policy))
    }

    fn api_key(&self, key_id: ApiKeyId) -> Result<Option<ApiKeyRecord>, Error> {
        match self.api_keys.get(&key_id) {
            Some(record) => Ok(Some(record.clone())),
            None => self.state.api_key(key_id),
        }
    }

    pub(super) fn init_cluster(&mut self, config: ClusterConfig) -> Result<CommandResponse, Error> {
        let existing = match self.cluster_config {
            Some(config) => Some(config),
            None => self.state.cluster_config()?,
        };
        if let Some(existing) = existing {
            return Ok(CommandResponse::Rejected(ApiError::InvalidRequest {
                message: format!(
                    "the cluster is already initialised with {} shards and replication factor {}",
                    existing.shards, existing.replication_factor
                ),
            }));
        }
        self.put(keys::cluster_key(self.state.group()), &config)?;
        self.cluster_config = Some(config);
        Ok(CommandResponse::Done)
    }

    pub(super) fn add_node(&mut self, node_id: NodeId, addr: String) -> Result<CommandResponse, Error> {
        if self.is_removed(node_id)? {
            return rejected(removed_error(node_id));
        }
        self.put(keys::node_key(self.state.group(), node_id), &addr)?;
        self.nodes.insert(node_id, Some(addr));
        Ok(CommandResponse::Done)
    }

    /// Forgets `node_id` for good, once no placement names it.
    pub(super) fn remove_node(&mut self, node_id: NodeId) -> Result<CommandResponse, Error> {
        if self.is_removed(node_id)? {
            return Ok(CommandResponse::Done);
        }
        let registered = match self.nodes.get(&node_id) {
            Some(addr) => addr.is_some(),
            None => self.state.nodes()?.iter().any(|(node, _)| *node == node_id),
        };
        if !registered {
            return rejected(ApiError::NotFound { what: format!("node {node_id}") });
        }
        let mut placements: BTreeMap<ShardId, Vec<NodeId>> = self.state.placements()?.into_iter().collect();
        placements.extend(self.placements.iter().map(|(shard, replicas)| (*shard, replicas.clone())));
        if let Err(placed) = crate::placement::check_unplaced(&placements, node_id) {
            return rejected(placed);
        }
        let group = self.state.group();
        self.batch.delete(STATE_CF, keys::node_key(group, node_id));
        self.put(keys::removed_node_key(group, node_id), &true)?;
        self.nodes.insert(node_id, None);
        self.removed_nodes.insert(node_id);
        Ok(CommandResponse::Done)
    }

    fn is_removed(&self, node_id: NodeId) -> Result<bool, Error> {
        Ok(self.removed_nodes.contains(&node_id) || self.state.is_removed(node_id)?)
    }

    pub(super) fn set_placement(&mut self, shard: ShardId, replicas: Vec<NodeId>) -> Result<CommandResponse, Error> {
        for node in &replicas {
            if self.is_removed(*node)? {
                return rejected(removed_error(*node));
            }
        }
        self.put(keys::placement_key(self.state.group(), shard), &replicas)?;
        self.placements.insert(shard, replicas);
        Ok(CommandResponse::Done)
    }
}

/// Whether two versions say the same (when they were written aside).
fn same_content(current: &ResourceVersion, proposed: &ResourceVersion) -> bool {
    current.body == proposed.body
        && current.description == proposed.description
        && current.metadata == proposed.metadata
}

/// Sets or removes a credential of `vault`. A secret name belongs to one
/// credential of a vault, and never changes.
fn set_credential(vault: &mut VaultBody, id: CredentialId, credential: Option<Credential>) -> Result<(), ApiError> {
    let Some(credential) = credential else {
        let before = vault.credentials.len();
        vault.credentials.retain(|existing| existing.id != id);
        if vault.credentials.len() == before {
            return Err(ApiError::NotFound { what: format!("credential {id}") });
        }
        return Ok(());
    };
    if vault.credentials.iter().any(|existing| existing.id != id && existing.secret_name == credential.secret_name) {
        return Err(ApiError::InvalidRequest {
            message: format!("another credential of the vault holds secret {:?}", credential.secret_name),
        });
    }
    let count = vault.credentials.len();
    match vault.credentials.iter_mut().find(|existing| existing.id == id) {
        Some(existing) if existing.secret_name != credential.secret_name => {
            Err(ApiError::InvalidRequest { message: format!("secret_name of credential {id} cannot change") })
        }
        Some(existing) => {
            *existing = credential;
            Ok(())
        }
        None if count >= VAULT_CREDENTIALS_MAX => Err(ApiError::InvalidRequest {
            message: format!("a vault holds at most {VAULT_CREDENTIALS_MAX} credentials"),
        }),
        None => {
            vault.credentials.push(credential);
            Ok(())
        }
    }
}
