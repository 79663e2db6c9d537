//! Requests about agents, environments and vaults, run on the metadata
//! group's leader; and the admission of new nodes.

use agentd_protocol::agent::{is_secret_name, AgentSpec, EnvironmentSpec};
use agentd_protocol::api::{ClientRequest, ClientResponse};
use agentd_protocol::command::Command;
use agentd_protocol::ids::{AgentId, EnvironmentId, NodeId, VaultId};
use agentd_protocol::limits::{NAME_BYTES_MAX, TEXT_BYTES_MAX};
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::{placement, propose};

use super::session::ensure_linearizable;
use super::Service;

impl Service {
    /// Runs a metadata request on `metadata`, the group this node leads.
    pub(super) async fn execute_metadata(
        &self,
        metadata: &GroupHandle,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match request {
            ClientRequest::PutAgent { agent_id, spec } => self.put_agent_here(metadata, agent_id, spec).await,
            ClientRequest::PutEnvironment { environment_id, spec } => {
                self.put_environment_here(metadata, environment_id, spec).await
            }
            ClientRequest::GetAgent { agent_id } => {
                ensure_linearizable(metadata).await?;
                let agent = metadata.state.agent(agent_id)?;
                agent.map(ClientResponse::Agent).ok_or_else(|| ApiError::NotFound { what: format!("agent {agent_id}") })
            }
            ClientRequest::GetEnvironment { environment_id } => {
                ensure_linearizable(metadata).await?;
                let environment = metadata.state.environment(environment_id)?;
                environment
                    .map(ClientResponse::Environment)
                    .ok_or_else(|| ApiError::NotFound { what: format!("environment {environment_id}") })
            }
            ClientRequest::PutSecret { vault_id, vault_name, secret_name, value } => {
                self.put_secret_here(metadata, vault_id, vault_name, secret_name, value).await
            }
            other => Err(ApiError::InvalidRequest { message: format!("{} is not a metadata request", other.kind()) }),
        }
    }

    async fn put_agent_here(
        &self,
        metadata: &GroupHandle,
        agent_id: AgentId,
        spec: AgentSpec,
    ) -> Result<ClientResponse, ApiError> {
        spec.validate()?;
        let command = Command::PutAgent { agent_id, spec, at_ms: self.now_ms() };
        Ok(ClientResponse::Agent(propose(metadata, command).await?.into_agent()?))
    }

    async fn put_environment_here(
        &self,
        metadata: &GroupHandle,
        environment_id: EnvironmentId,
        spec: EnvironmentSpec,
    ) -> Result<ClientResponse, ApiError> {
        spec.validate()?;
        let command = Command::PutEnvironment { environment_id, spec, at_ms: self.now_ms() };
        Ok(ClientResponse::Environment(propose(metadata, command).await?.into_environment()?))
    }

    /// Seals the value with the cluster's secrets key before it is proposed,
    /// so the Raft log and every store hold only ciphertext.
    async fn put_secret_here(
        &self,
        metadata: &GroupHandle,
        vault_id: VaultId,
        vault_name: String,
        secret_name: String,
        value: String,
    ) -> Result<ClientResponse, ApiError> {
        let invalid = |message: String| Err(ApiError::InvalidRequest { message });
        if !is_secret_name(&secret_name) {
            return invalid(format!("secret name {secret_name:?} must be an environment variable name"));
        }
        if vault_name.is_empty() || vault_name.len() > NAME_BYTES_MAX {
            return invalid(format!("a vault name is 1 to {NAME_BYTES_MAX} bytes"));
        }
        if value.is_empty() || value.len() > TEXT_BYTES_MAX {
            return invalid(format!("a secret value is 1 to {TEXT_BYTES_MAX} bytes"));
        }
        let context = crate::vault::seal_context(&vault_id, &secret_name);
        let sealed = self
            .secrets_key()
            .seal(&context, &value)
            .map_err(|error| ApiError::Internal { message: error.to_string() })?;
        let command = Command::PutSecret { vault_id, vault_name, secret_name, sealed };
        Ok(ClientResponse::Vault(propose(metadata, command).await?.into_vault()?))
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
