//! Requests about agents, environments, vaults and API keys, run on the
//! metadata group's leader; and the admission of new nodes. The native
//! client's requests (`PutAgent`, `GetAgent`, ...) are the same operations
//! on the caller's workspace as the API's resources.

use agentd_protocol::agent::{AgentSpec, EnvironmentSpec, PermissionPolicy};
use agentd_protocol::api::{ClientRequest, ClientResponse, CredentialChange};
use agentd_protocol::ids::{AgentId, EnvironmentId, NodeId, VaultId};
use agentd_protocol::resource::{AgentBody, ResourceBody, ResourceId, ResourceVersion, VaultBody};
use agentd_protocol::tenancy::Caller;
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::placement;
use agentd_raft::state::legacy_credential_id;

use super::Service;

impl Service {
    /// Runs a metadata request on `metadata`, the group this node leads.
    pub(super) async fn execute_metadata(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match request {
            ClientRequest::PutAgent { agent_id, spec } => self.put_agent_here(caller, metadata, agent_id, spec).await,
            ClientRequest::PutEnvironment { environment_id, spec } => {
                self.put_environment_here(caller, metadata, environment_id, spec).await
            }
            ClientRequest::GetAgent { agent_id } => {
                let resource = self.get_resource_here(caller, metadata, ResourceId::Agent(agent_id)).await?;
                resource.to_agent().map(ClientResponse::Agent).ok_or_else(|| not_found(ResourceId::Agent(agent_id)))
            }
            ClientRequest::GetEnvironment { environment_id } => {
                let id = ResourceId::Environment(environment_id);
                let resource = self.get_resource_here(caller, metadata, id).await?;
                resource.to_environment().map(ClientResponse::Environment).ok_or_else(|| not_found(id))
            }
            ClientRequest::PutSecret { vault_id, vault_name, secret_name, value } => {
                self.put_secret_here(caller, metadata, vault_id, vault_name, secret_name, value).await
            }
            ClientRequest::TransferLeader { to, .. } => self.transfer_leader_here(caller, metadata, to).await,
            ClientRequest::GroupStats { .. } => self.group_stats_here(caller, metadata).await,
            other => self.execute_resource_request(caller, metadata, other).await,
        }
    }

    /// The native client's agent: a new version of a resource of the
    /// caller's workspace, answered as the agent's versions.
    async fn put_agent_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        agent_id: AgentId,
        spec: AgentSpec,
    ) -> Result<ClientResponse, ApiError> {
        let body = ResourceBody::Agent(AgentBody {
            spec,
            default_enabled: false,
            default_policy: PermissionPolicy::AlwaysAllow,
        });
        let version = self.plain_version(body);
        let resource = self.put_resource_here(caller, metadata, ResourceId::Agent(agent_id), version, None).await?;
        resource.to_agent().map(ClientResponse::Agent).ok_or_else(|| not_found(resource.id))
    }

    async fn put_environment_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        environment_id: EnvironmentId,
        spec: EnvironmentSpec,
    ) -> Result<ClientResponse, ApiError> {
        let version = self.plain_version(ResourceBody::Environment(spec));
        let id = ResourceId::Environment(environment_id);
        let resource = self.put_resource_here(caller, metadata, id, version, None).await?;
        resource.to_environment().map(ClientResponse::Environment).ok_or_else(|| not_found(id))
    }

    fn plain_version(&self, body: ResourceBody) -> ResourceVersion {
        ResourceVersion { body, description: None, metadata: Vec::new(), created_at_ms: self.now_ms() }
    }

    /// The native client's secret: the vault is made if it does not exist,
    /// and the secret goes in the credential of that name.
    async fn put_secret_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        vault_id: VaultId,
        vault_name: String,
        secret_name: String,
        value: String,
    ) -> Result<ClientResponse, ApiError> {
        let id = ResourceId::Vault(vault_id);
        match self.get_resource_here(caller, metadata, id).await {
            Ok(_) => {}
            Err(ApiError::NotFound { .. }) => {
                let body = ResourceBody::Vault(VaultBody { display_name: vault_name, credentials: Vec::new() });
                self.put_resource_here(caller, metadata, id, self.plain_version(body), Some(0)).await?;
            }
            Err(error) => return Err(error),
        }
        let change = CredentialChange {
            display_name: None,
            metadata: Vec::new(),
            secret_name: Some(secret_name.clone()),
            secret_value: Some(value),
            allowed_hosts: None,
            archive: false,
        };
        let credential_id = legacy_credential_id(vault_id, &secret_name);
        let resource = self.put_credential_here(caller, metadata, vault_id, credential_id, change).await?;
        resource.to_vault_info().map(ClientResponse::Vault).ok_or_else(|| not_found(id))
    }

    /// Admits a node into the cluster: records it and gives it replicas. Runs
    /// on the metadata leader only; elsewhere the answer names the leader, so
    /// the joining node asks it instead.
    pub async fn admit(&self, node_id: NodeId, addr: String) -> Result<(), ApiError> {
        let metadata = self.metadata()?;
        if !metadata.raft.is_leader() {
            return Err(ApiError::NotLeader { leader: self.leader_of(&metadata) });
        }
        let _one_at_a_time = self.inner.admissions.lock().await;
        placement::admit_node(&metadata, node_id, addr).await
    }
}

pub(super) fn not_found(id: ResourceId) -> ApiError {
    ApiError::NotFound { what: format!("{} {id}", id.kind().name()) }
}
