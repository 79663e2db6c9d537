//! Typed access to one group's state machine records in the `state` column
//! family. Shared by the state machine (which writes them) and the state
//! reader (which serves queries from them).

use agentd_protocol::agent::{Agent, AgentRef, Environment, PermissionPolicy, SealedVault};
use agentd_protocol::api::{SessionInfo, SessionStatus};
use agentd_protocol::approval::ApprovalPolicy;
use agentd_protocol::event::{Event, StopReason};
use agentd_protocol::ids::{
    AgentId, ApiKeyId, CredentialId, EnvironmentId, EventId, GroupId, NodeId, SessionId, ShardId, VaultId,
};
use agentd_protocol::resource::{
    AgentBody, CreatedWithin, CreationCursor, Credential, Order, Resource, ResourceBody, ResourceId, ResourceVersion,
    SessionDetails, SessionUsageTotals, VaultBody,
};
use agentd_protocol::tenancy::{ApiKeyRecord, DEFAULT_WORKSPACE};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::codec::decode;
use crate::store::keys::{self, Index, STATE_CF};
use crate::store::Db;
use crate::types::{LogId, StoredMembership};
use crate::Error;

/// A record of a group's state: its key without the group prefix, and its
/// value. A snapshot is the list of every record.
pub(crate) type Record = (Vec<u8>, Vec<u8>);

/// What the state machine has applied: the last log id and the membership
/// in effect. Written in the same batch as the changes of the entries it
/// covers, so the two never disagree after a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

impl AppliedState {
    /// The index the state reader publishes: 0 before anything is applied.
    pub(crate) fn index(&self) -> u64 {
        self.last_applied.as_ref().map_or(0, |log_id| log_id.index)
    }
}

/// A session as stored; its id is in the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub(crate) shard: ShardId,
    pub(crate) created_at_ms: u64,
    pub(crate) last_seq: u64,
    pub(crate) agent: Option<AgentRef>,
    pub(crate) environment: Option<EnvironmentId>,
    pub(crate) status: SessionStatus,
    pub(crate) epoch: u64,
    pub(crate) pending_actions: Vec<EventId>,
    pub(crate) stop_reason: Option<StopReason>,
}

impl SessionRecord {
    /// A new session: idle, empty, epoch 0.
    pub(crate) fn new(
        shard: ShardId,
        created_at_ms: u64,
        agent: Option<AgentRef>,
        environment: Option<EnvironmentId>,
    ) -> SessionRecord {
        SessionRecord {
            shard,
            created_at_ms,
            last_seq: 0,
            agent,
            environment,
            status: SessionStatus::Idle,
            epoch: 0,
            pending_actions: Vec::new(),
            stop_reason: None,
        }
    }

    pub(crate) fn info(&self, session_id: SessionId) -> SessionInfo {
        SessionInfo {
            session_id,
            shard: self.shard,
            created_at_ms: self.created_at_ms,
            last_seq: self.last_seq,
            agent: self.agent,
            environment: self.environment,
            status: self.status,
            epoch: self.epoch,
            pending_actions: self.pending_actions.clone(),
            stop_reason: self.stop_reason.clone(),
        }
    }
}

/// The cluster's fixed shape, set once by the metadata group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterConfig {
    pub(crate) shards: u32,
    pub(crate) replication_factor: u32,
}

/// The records of one group's state machine.
#[derive(Clone)]
pub(crate) struct GroupState {
    db: Db,
    group: GroupId,
}

impl GroupState {
    pub(crate) fn new(db: Db, group: GroupId) -> GroupState {
        GroupState { db, group }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn group(&self) -> GroupId {
        self.group
    }

    fn corrupt(&self, what: &str, message: String) -> Error {
        Error::Corrupt { what: format!("{what} of {}", self.group), message }
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8], what: impl FnOnce() -> String) -> Result<Option<T>, Error> {
        let Some(bytes) = self.db.get(STATE_CF, key)? else {
            return Ok(None);
        };
        decode(|| format!("{} of {}", what(), self.group), &bytes).map(Some)
    }

    pub(crate) fn applied(&self) -> Result<AppliedState, Error> {
        let applied = self.get(&keys::applied_key(self.group), || "applied state".into())?;
        Ok(applied.unwrap_or_default())
    }

    pub(crate) fn session(&self, session_id: SessionId) -> Result<Option<SessionRecord>, Error> {
        self.get(&keys::session_key(self.group, session_id), || format!("session {session_id}"))
    }

    /// The sequence number an event id was appended at, if it was.
    pub(crate) fn event_seq(&self, session_id: SessionId, event_id: EventId) -> Result<Option<u64>, Error> {
        self.get(&keys::event_id_key(self.group, session_id, event_id), || {
            format!("index of event {event_id} in session {session_id}")
        })
    }

    pub(crate) fn vault(&self, vault_id: VaultId) -> Result<Option<SealedVault>, Error> {
        self.get(&keys::vault_key(self.group, vault_id), || format!("vault {vault_id}"))
    }

    pub(crate) fn agent(&self, agent_id: AgentId) -> Result<Option<Agent>, Error> {
        self.get(&keys::agent_key(self.group, agent_id), || format!("agent {agent_id}"))
    }

    pub(crate) fn environment(&self, environment_id: EnvironmentId) -> Result<Option<Environment>, Error> {
        self.get(&keys::environment_key(self.group, environment_id), || format!("environment {environment_id}"))
    }

    /// An agent, environment or vault. Objects written before resources
    /// existed are read from their old records, as workspace `default`'s.
    pub(crate) fn resource(&self, id: ResourceId) -> Result<Option<Resource>, Error> {
        if let Some(resource) = self.get(&keys::resource_key(self.group, id), || format!("{id}"))? {
            return Ok(Some(resource));
        }
        Ok(match id {
            ResourceId::Agent(agent_id) => self.agent(agent_id)?.map(legacy_agent),
            ResourceId::Environment(environment_id) => self.environment(environment_id)?.map(legacy_environment),
            ResourceId::Vault(vault_id) => self.vault(vault_id)?.map(legacy_vault),
        })
    }

    pub(crate) fn api_key(&self, key_id: ApiKeyId) -> Result<Option<ApiKeyRecord>, Error> {
        self.get(&keys::api_key_key(self.group, key_id), || format!("API key {key_id}"))
    }

    /// The approval policy of `workspace`: the empty one (version 0) until
    /// one is set.
    pub(crate) fn approval_policy(&self, workspace: &str) -> Result<ApprovalPolicy, Error> {
        let stored: Option<ApprovalPolicy> =
            self.get(&keys::approval_policy_key(self.group, workspace), || format!("approval policy of {workspace}"))?;
        match stored {
            Some(policy) if policy.workspace == workspace => Ok(policy),
            Some(policy) => Err(self.corrupt(
                "approval policies",
                format!("workspaces {workspace:?} and {:?} share a key", policy.workspace),
            )),
            None => Ok(ApprovalPolicy::empty(workspace)),
        }
    }

    /// Every API key of the group, by id.
    pub(crate) fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, Error> {
        let (start, end) = keys::api_key_range(self.group);
        let pairs = self.db.scan(STATE_CF, &start, &end, usize::MAX)?;
        pairs.iter().map(|(_, value)| decode(|| format!("an API key of {}", self.group), value)).collect()
    }

    /// A session's details; a session created before details existed has
    /// the default ones (workspace `default`).
    pub(crate) fn session_details(&self, session_id: SessionId, created_at_ms: u64) -> Result<SessionDetails, Error> {
        let details = self
            .get(&keys::session_details_key(self.group, session_id), || format!("details of session {session_id}"))?;
        Ok(details.unwrap_or_else(|| SessionDetails::default_for(created_at_ms)))
    }

    pub(crate) fn session_usage(&self, session_id: SessionId) -> Result<SessionUsageTotals, Error> {
        let usage =
            self.get(&keys::session_usage_key(self.group, session_id), || format!("usage of session {session_id}"))?;
        Ok(usage.unwrap_or_default())
    }

    /// Up to `budget` positions of a workspace's index, in `order`, strictly
    /// after `after` and created within `created`; and where the walk
    /// stopped if it used the whole budget (more may follow).
    pub(crate) fn index_positions(
        &self,
        index: &Index,
        workspace: &str,
        order: Order,
        after: Option<CreationCursor>,
        created: CreatedWithin,
        budget: usize,
    ) -> Result<(Vec<CreationCursor>, bool), Error> {
        let (range_start, range_end) = index.range(self.group, workspace);
        let lowest = index.key(self.group, workspace, CreationCursor { created_at_ms: created.from_ms, id: [0; 16] });
        let mut highest =
            index.key(self.group, workspace, CreationCursor { created_at_ms: created.to_ms, id: [0xff; 16] });
        highest.push(0);
        let mut start = range_start.max(lowest);
        let mut end = range_end.min(highest);
        match (order, after) {
            (Order::Ascending, Some(after)) => {
                let mut past = index.key(self.group, workspace, after);
                past.push(0);
                start = start.max(past);
            }
            (Order::Descending, Some(after)) => end = end.min(index.key(self.group, workspace, after)),
            (_, None) => {}
        }
        let mut positions = Vec::new();
        if start >= end {
            return Ok((positions, false));
        }
        let keys: Vec<Vec<u8>> = match order {
            Order::Ascending => {
                self.db.scan(STATE_CF, &start, &end, budget)?.into_iter().map(|(key, _)| key.into_vec()).collect()
            }
            Order::Descending => {
                let mut keys = Vec::new();
                while keys.len() < budget {
                    let Some((key, _)) = self.db.last(STATE_CF, &start, &end)? else { break };
                    end = key.to_vec();
                    keys.push(key.into_vec());
                }
                keys
            }
        };
        for key in &keys {
            let position = index
                .position(self.group, key)
                .ok_or_else(|| self.corrupt("index", format!("malformed index key {key:02x?}")))?;
            positions.push(position);
        }
        let exhausted_budget = keys.len() == budget;
        Ok((positions, exhausted_budget))
    }

    pub(crate) fn cluster_config(&self) -> Result<Option<ClusterConfig>, Error> {
        self.get(&keys::cluster_key(self.group), || "cluster config".into())
    }

    /// Up to `limit` events of a session with `seq >= from_seq`, by seq.
    /// One event by its seq: a point read, cheaper than a scan.
    pub(crate) fn event(&self, session_id: SessionId, seq: u64) -> Result<Option<Event>, Error> {
        let event: Option<Event> =
            self.get(&keys::event_key(self.group, session_id, seq), || format!("event {seq} of session {session_id}"))?;
        if event.as_ref().is_some_and(|event| event.seq != seq || event.session_id != session_id) {
            return Err(self.corrupt("events", format!("event {seq} of {session_id} stored under another key")));
        }
        Ok(event)
    }

    pub(crate) fn events(&self, session_id: SessionId, from_seq: u64, limit: usize) -> Result<Vec<Event>, Error> {
        let start = keys::event_key(self.group, session_id, from_seq);
        let end = keys::events_end(self.group, session_id);
        let pairs = self.db.scan(STATE_CF, &start, &end, limit)?;
        let mut events = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let event: Event = decode(|| format!("event of session {session_id} in {}", self.group), &value)?;
            if key[..] != keys::event_key(self.group, session_id, event.seq)[..] || event.session_id != session_id {
                return Err(
                    self.corrupt("events", format!("event {} seq {} stored under key {key:02x?}", event.id, event.seq))
                );
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Bytes of keys and values the group's state holds (its replicated
    /// data as stored, before RocksDB's compression), read in pages.
    pub(crate) fn state_bytes(&self) -> Result<u64, Error> {
        const PAGE: usize = 4096;
        let end = keys::group_end(self.group);
        let mut start = keys::group_prefix(self.group);
        let mut bytes = 0u64;
        loop {
            let pairs = self.db.scan(STATE_CF, &start, &end, PAGE)?;
            for (key, value) in &pairs {
                bytes += (key.len() + value.len()) as u64;
            }
            match pairs.last() {
                Some((key, _)) if pairs.len() == PAGE => {
                    start = key.to_vec();
                    start.push(0);
                }
                _ => return Ok(bytes),
            }
        }
    }

    pub(crate) fn session_ids(&self) -> Result<Vec<SessionId>, Error> {
        let (start, end) = keys::session_range(self.group);
        let pairs = self.db.scan(STATE_CF, &start, &end, usize::MAX)?;
        pairs
            .iter()
            .map(|(key, _)| {
                keys::session_id_of(self.group, key)
                    .ok_or_else(|| self.corrupt("sessions", format!("malformed session key {key:02x?}")))
            })
            .collect()
    }

    /// Every node record, by node id.
    pub(crate) fn nodes(&self) -> Result<Vec<(NodeId, String)>, Error> {
        let (start, end) = keys::node_range(self.group);
        let pairs = self.db.scan(STATE_CF, &start, &end, usize::MAX)?;
        pairs
            .iter()
            .map(|(key, value)| {
                let node_id = keys::node_id_of(self.group, key)
                    .ok_or_else(|| self.corrupt("nodes", format!("malformed node key {key:02x?}")))?;
                let addr = decode(|| format!("address of node {node_id} in {}", self.group), value)?;
                Ok((node_id, addr))
            })
            .collect()
    }

    /// Whether `node_id` was removed from the cluster.
    pub(crate) fn is_removed(&self, node_id: NodeId) -> Result<bool, Error> {
        Ok(self.db.get(STATE_CF, &keys::removed_node_key(self.group, node_id))?.is_some())
    }

    /// Every placement record, by shard.
    pub(crate) fn placements(&self) -> Result<Vec<(ShardId, Vec<NodeId>)>, Error> {
        let (start, end) = keys::placement_range(self.group);
        let pairs = self.db.scan(STATE_CF, &start, &end, usize::MAX)?;
        pairs
            .iter()
            .map(|(key, value)| {
                let shard = keys::shard_of_placement(self.group, key)
                    .ok_or_else(|| self.corrupt("placements", format!("malformed placement key {key:02x?}")))?;
                let replicas = decode(|| format!("placement of {shard} in {}", self.group), value)?;
                Ok((shard, replicas))
            })
            .collect()
    }

    /// Every record of the group, keys without the group prefix, read from one
    /// consistent view, and the applied state among them.
    pub(crate) fn export(&self) -> Result<(AppliedState, Vec<Record>), Error> {
        let prefix = keys::group_prefix(self.group);
        let pairs = self.db.scan(STATE_CF, &prefix, &keys::group_end(self.group), usize::MAX)?;
        let applied_key = keys::applied_key(self.group);
        let mut applied = AppliedState::default();
        let mut records = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            if key[..] == applied_key[..] {
                applied = decode(|| format!("applied state of {}", self.group), &value)?;
            }
            let suffix = key
                .strip_prefix(prefix.as_slice())
                .ok_or_else(|| self.corrupt("state", format!("key {key:02x?} outside the group")))?;
            records.push((suffix.to_vec(), value.into_vec()));
        }
        Ok((applied, records))
    }
}

/// An agent stored before resources existed: workspace `default`, every
/// built-in tool it names enabled with its own policy, the rest off.
fn legacy_agent(agent: Agent) -> Resource {
    let versions: Vec<ResourceVersion> = agent
        .versions
        .into_iter()
        .map(|spec| ResourceVersion {
            body: ResourceBody::Agent(AgentBody {
                spec,
                default_enabled: false,
                default_policy: PermissionPolicy::AlwaysAllow,
            }),
            description: None,
            metadata: Vec::new(),
            created_at_ms: agent.created_at_ms,
        })
        .collect();
    legacy_resource(ResourceId::Agent(agent.id), agent.created_at_ms, versions)
}

fn legacy_environment(environment: Environment) -> Resource {
    let versions = environment
        .versions
        .into_iter()
        .map(|spec| ResourceVersion {
            body: ResourceBody::Environment(spec),
            description: None,
            metadata: Vec::new(),
            created_at_ms: environment.created_at_ms,
        })
        .collect();
    legacy_resource(ResourceId::Environment(environment.id), environment.created_at_ms, versions)
}

fn legacy_vault(vault: SealedVault) -> Resource {
    let credentials = vault
        .secrets
        .into_iter()
        .map(|(secret_name, sealed)| Credential {
            id: legacy_credential_id(vault.id, &secret_name),
            display_name: None,
            metadata: Vec::new(),
            secret_name,
            sealed,
            allowed_hosts: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            archived_at_ms: None,
            mcp: None,
        })
        .collect();
    let version = ResourceVersion {
        body: ResourceBody::Vault(VaultBody { display_name: vault.name, credentials }),
        description: None,
        metadata: Vec::new(),
        created_at_ms: 0,
    };
    legacy_resource(ResourceId::Vault(vault.id), 0, vec![version])
}

fn legacy_resource(id: ResourceId, created_at_ms: u64, versions: Vec<ResourceVersion>) -> Resource {
    Resource {
        id,
        workspace: DEFAULT_WORKSPACE.to_string(),
        revision: versions.len() as u64,
        versions,
        created_at_ms,
        updated_at_ms: created_at_ms,
        archived_at_ms: None,
    }
}

/// The id of the credential that holds secret `secret_name` of a vault
/// written by `PutSecret`: derived, so every replica and every retry agree.
pub fn legacy_credential_id(vault_id: VaultId, secret_name: &str) -> CredentialId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(vault_id.0).chain_update(secret_name.as_bytes()).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    CredentialId(bytes)
}
