//! Metadata commands: the cluster's configuration, nodes and placement,
//! and the versioned agents, environments and sealed vaults.

use agentd_protocol::agent::{Agent, AgentSpec, Environment, EnvironmentSpec, SealedVault};
use agentd_protocol::command::CommandResponse;
use agentd_protocol::ids::{AgentId, EnvironmentId, NodeId, ShardId, VaultId};
use agentd_protocol::ApiError;

use super::ApplyBatch;
use crate::state::group_state::ClusterConfig;
use crate::store::keys;
use crate::Error;

impl ApplyBatch<'_> {
    pub(super) fn put_secret(
        &mut self,
        vault_id: VaultId,
        vault_name: String,
        secret_name: String,
        sealed: Vec<u8>,
    ) -> Result<CommandResponse, Error> {
        let existing = match self.vaults.get(&vault_id) {
            Some(vault) => Some(vault.clone()),
            None => self.state.vault(vault_id)?,
        };
        let mut vault = existing.unwrap_or(SealedVault { id: vault_id, name: vault_name, secrets: Vec::new() });
        match vault.secrets.iter_mut().find(|(name, _)| *name == secret_name) {
            Some((_, value)) => *value = sealed,
            None => vault.secrets.push((secret_name, sealed)),
        }
        self.put(keys::vault_key(self.state.group(), vault_id), &vault)?;
        let info = vault.info();
        self.vaults.insert(vault_id, vault);
        Ok(CommandResponse::Vault(info))
    }

    pub(super) fn put_environment(
        &mut self,
        environment_id: EnvironmentId,
        spec: EnvironmentSpec,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let existing = match self.environments.get(&environment_id) {
            Some(environment) => Some(environment.clone()),
            None => self.state.environment(environment_id)?,
        };
        let mut environment =
            existing.unwrap_or(Environment { id: environment_id, versions: Vec::new(), created_at_ms: at_ms });
        // Re-proposing the current version (a retried request) adds nothing.
        if environment.versions.last() != Some(&spec) {
            environment.versions.push(spec);
        }
        self.put(keys::environment_key(self.state.group(), environment_id), &environment)?;
        self.environments.insert(environment_id, environment.clone());
        Ok(CommandResponse::Environment(environment))
    }

    pub(super) fn put_agent(
        &mut self,
        agent_id: AgentId,
        spec: AgentSpec,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let existing = match self.agents.get(&agent_id) {
            Some(agent) => Some(agent.clone()),
            None => self.state.agent(agent_id)?,
        };
        let mut agent = existing.unwrap_or(Agent { id: agent_id, versions: Vec::new(), created_at_ms: at_ms });
        // Re-proposing the current version (a retried request) adds nothing.
        if agent.versions.last() != Some(&spec) {
            agent.versions.push(spec);
        }
        self.put(keys::agent_key(self.state.group(), agent_id), &agent)?;
        self.agents.insert(agent_id, agent.clone());
        Ok(CommandResponse::Agent(agent))
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
        self.put(keys::node_key(self.state.group(), node_id), &addr)?;
        Ok(CommandResponse::Done)
    }

    pub(super) fn set_placement(&mut self, shard: ShardId, replicas: Vec<NodeId>) -> Result<CommandResponse, Error> {
        self.put(keys::placement_key(self.state.group(), shard), &replicas)?;
        Ok(CommandResponse::Done)
    }
}
