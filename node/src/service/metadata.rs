//! Requests about agents, environments, vaults and API keys, run on the
//! metadata group's leader; and the admission of new nodes. The native
//! client's requests (`PutAgent`, `GetAgent`, ...) are the same operations
//! on the caller's workspace as the API's resources.

use agentd_protocol::agent::{AgentSpec, EnvironmentSpec, PermissionPolicy};
use agentd_protocol::api::{ClientRequest, ClientResponse, CredentialChange, ShardMove};
use agentd_protocol::command::Command;
use agentd_protocol::ids::{AgentId, EnvironmentId, NodeId, ShardId, VaultId};
use agentd_protocol::resource::{AgentBody, ResourceBody, ResourceId, ResourceVersion, VaultBody};
use agentd_protocol::tenancy::Caller;
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::placement;
use agentd_raft::propose;
use agentd_raft::state::legacy_credential_id;

use super::session::ensure_linearizable;
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
            ClientRequest::MoveShard { shard, to, from } => {
                self.move_replicas_here(caller, metadata, true, |placements, nodes| {
                    placement::plan_move(placements, nodes, shard, to, from).map(|one| vec![one])
                })
                .await
            }
            ClientRequest::DrainNode { node } => {
                let moves = self
                    .move_replicas_here(caller, metadata, true, |placements, nodes| {
                        placement::plan_drain(placements, nodes, node)
                    })
                    .await?;
                if node == self.host().node_id() {
                    // A drained node leads nothing: its shards leave with
                    // their replicas; the metadata group is handed off here.
                    self.host().hand_off_leadership(metadata);
                }
                Ok(moves)
            }
            ClientRequest::RemoveNode { node } => self.remove_node_here(caller, metadata, node).await,
            ClientRequest::Rebalance { dry_run } => {
                self.move_replicas_here(caller, metadata, !dry_run, |placements, nodes| {
                    Ok(placement::plan_rebalance(placements, nodes))
                })
                .await
            }
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
            mcp: None,
        };
        let credential_id = legacy_credential_id(vault_id, &secret_name);
        let resource = self.put_credential_here(caller, metadata, vault_id, credential_id, change).await?;
        resource.to_vault_info().map(ClientResponse::Vault).ok_or_else(|| not_found(id))
    }

    /// Records the replica moves `plan` makes of the current placement (if
    /// `record`, else only answers them); each shard's leader then carries
    /// its move out (see `placement::reconcile`).
    async fn move_replicas_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        record: bool,
        plan: impl FnOnce(&[(ShardId, Vec<NodeId>)], &[NodeId]) -> Result<Vec<ShardMove>, String>,
    ) -> Result<ClientResponse, ApiError> {
        if !caller.is_admin() {
            return Err(ApiError::PermissionDenied { message: "moving replicas needs an admin key".into() });
        }
        // Placements change one writer at a time, on state that includes
        // every committed change (joins write them too).
        let _one_at_a_time = self.inner.admissions.lock().await;
        ensure_linearizable(metadata).await?;
        let placements = metadata.state.placements()?;
        let nodes: Vec<NodeId> = metadata.state.nodes()?.into_iter().map(|(node, _)| node).collect();
        let moves = plan(&placements, &nodes).map_err(|message| ApiError::InvalidRequest { message })?;
        if record {
            for one in &moves {
                tracing::info!(shard = %one.shard, from = one.from, to = one.to, "moving a replica on an operator's request");
                propose(metadata, Command::SetPlacement { shard: one.shard, replicas: one.replicas.clone() }).await?;
            }
        }
        Ok(ClientResponse::ShardMoves(moves))
    }

    /// Forgets `node` for good, once it holds no replica: no placement names
    /// it and no shard's committed membership counts it.
    async fn remove_node_here(
        &self,
        caller: &Caller,
        metadata: &GroupHandle,
        node: NodeId,
    ) -> Result<ClientResponse, ApiError> {
        if !caller.is_admin() {
            return Err(ApiError::PermissionDenied { message: "removing a node needs an admin key".into() });
        }
        let _one_at_a_time = self.inner.admissions.lock().await;
        ensure_linearizable(metadata).await?;
        if metadata.state.is_removed(node)? {
            return Ok(ClientResponse::Done);
        }
        let nodes = metadata.state.nodes()?;
        if !nodes.iter().any(|(registered, _)| *registered == node) {
            return Err(ApiError::NotFound { what: format!("node {node}") });
        }
        if nodes.len() == 1 {
            return Err(ApiError::InvalidRequest { message: format!("node {node} is the cluster's only node") });
        }
        let placements = metadata.state.placements()?;
        placement::check_unplaced(placements.iter().map(|(shard, replicas)| (shard, replicas)), node)?;
        let addresses = nodes.into_iter().collect();
        let counting = placement::shards_counting(self.host(), &placements, &addresses, node).await;
        if !counting.is_empty() {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "node {node} is placed nowhere, but {}: wait for its moves to finish \
                     (agentd node drain {node} --wait) and remove it again",
                    counting.join("; ")
                ),
            });
        }
        tracing::info!(node, "removing a node from the cluster on an operator's request");
        propose(metadata, Command::RemoveNode { node_id: node }).await?;
        if node == self.host().node_id() {
            // The metadata group leaves the removed node with its leadership.
            self.host().hand_off_leadership(metadata);
        }
        Ok(ClientResponse::Done)
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
