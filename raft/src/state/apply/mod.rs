//! The deterministic command logic of the state machine.
//!
//! An [`ApplyBatch`] turns committed entries into one RocksDB write batch and
//! the responses to them. Several entries of one batch may touch the same
//! session, so the batch keeps an overlay of what it has written: a read
//! sees the batch's own earlier writes before falling back to the database.
//! Everything a command depends on (timestamps included) is in the command,
//! so every replica computes the same batch.

//!
//! Shard commands (sessions and their events) are in `session.rs`,
//! metadata commands (cluster, nodes, placement, agents, environments,
//! vaults) in `metadata.rs`.

mod metadata;
mod session;
mod session_details;

use std::collections::{HashMap, HashSet};

use agentd_protocol::command::{Command, CommandResponse};
use agentd_protocol::event::Event;
use agentd_protocol::ids::{ApiKeyId, EventId, GroupId, NodeId, SessionId, ShardId};
use agentd_protocol::resource::{Resource, ResourceId, SessionDetails, SessionUsageTotals};
use agentd_protocol::tenancy::ApiKeyRecord;
use agentd_protocol::ApiError;
use openraft::EntryPayload;
use serde::Serialize;

use super::group_state::{AppliedState, ClusterConfig, GroupState, SessionRecord};
use crate::store::codec::encode;
use crate::store::disk::Batch;
use crate::store::keys::{self, STATE_CF};
use crate::types::{Entry, StoredMembership};
use crate::Error;

/// Entries applied but not yet written.
pub(crate) struct ApplyBatch<'a> {
    state: &'a GroupState,
    batch: Batch,
    applied: AppliedState,
    entries: usize,
    sessions: HashMap<SessionId, SessionRecord>,
    event_seqs: HashMap<(SessionId, EventId), u64>,
    cluster_config: Option<ClusterConfig>,
    /// Resources written (`Some`) or deleted (`None`) by this batch.
    resources: HashMap<ResourceId, Option<Resource>>,
    api_keys: HashMap<ApiKeyId, ApiKeyRecord>,
    approval_policies: HashMap<String, agentd_protocol::approval::ApprovalPolicy>,
    session_details: HashMap<SessionId, SessionDetails>,
    session_usage: HashMap<SessionId, SessionUsageTotals>,
    events: Vec<Event>,
    /// Node records written (`Some`) or deleted (`None`), placements
    /// written, and nodes removed by this batch.
    nodes: HashMap<NodeId, Option<String>>,
    placements: HashMap<ShardId, Vec<NodeId>>,
    removed_nodes: HashSet<NodeId>,
}

/// What a written batch changed, for publishing to readers.
pub(crate) struct AppliedBatch {
    pub(crate) applied: AppliedState,
    pub(crate) events: Vec<Event>,
}

impl<'a> ApplyBatch<'a> {
    /// Starts a batch on top of the state `applied` describes.
    pub(crate) fn new(state: &'a GroupState, applied: AppliedState) -> ApplyBatch<'a> {
        ApplyBatch {
            state,
            batch: Batch::default(),
            applied,
            entries: 0,
            sessions: HashMap::new(),
            event_seqs: HashMap::new(),
            cluster_config: None,
            resources: HashMap::new(),
            api_keys: HashMap::new(),
            approval_policies: HashMap::new(),
            session_details: HashMap::new(),
            session_usage: HashMap::new(),
            events: Vec::new(),
            nodes: HashMap::new(),
            placements: HashMap::new(),
            removed_nodes: HashSet::new(),
        }
    }

    /// How many entries the batch holds.
    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    /// Applies one entry; the response is for the proposer, if it waits.
    pub(crate) fn apply(&mut self, entry: Entry) -> Result<CommandResponse, Error> {
        if let Some(last) = &self.applied.last_applied {
            assert!(entry.log_id.index > last.index, "entry {} applied after {last}", entry.log_id);
        }
        self.entries += 1;
        self.applied.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Ok(CommandResponse::Done),
            EntryPayload::Membership(membership) => {
                self.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                Ok(CommandResponse::Done)
            }
            EntryPayload::Normal(command) => self.apply_command(command),
        }
    }

    /// Writes the batch (unsynced: the log is the durable record, and openraft
    /// re-applies from the persisted applied state after a crash).
    pub(crate) fn commit(mut self) -> Result<AppliedBatch, Error> {
        self.put(keys::applied_key(self.state.group()), &self.applied.clone())?;
        self.state.db().write(self.batch)?;
        Ok(AppliedBatch { applied: self.applied, events: self.events })
    }

    fn put(&mut self, key: Vec<u8>, value: &impl Serialize) -> Result<(), Error> {
        let value = encode(value)?;
        self.batch.put(STATE_CF, key, value);
        Ok(())
    }

    fn apply_command(&mut self, command: Command) -> Result<CommandResponse, Error> {
        let group = self.state.group();
        match (group, command) {
            (
                GroupId::Shard(this_shard),
                Command::CreateSession { session_id, shard, created_at_ms, agent, environment },
            ) if shard == this_shard => {
                self.create_session(session_id, SessionRecord::new(shard, created_at_ms, agent, environment))
            }
            (GroupId::Shard(_), Command::Append { session_id, event_id, payload, processed_at_ms, epoch }) => {
                self.append(session_id, event_id, payload, processed_at_ms, epoch)
            }
            (GroupId::Shard(_), Command::ClaimEpoch { session_id }) => self.claim_epoch(session_id),
            (GroupId::Shard(_), Command::Reschedule { session_id, event_id, at_ms }) => {
                self.reschedule(session_id, event_id, at_ms)
            }
            (GroupId::Shard(_), Command::Terminate { session_id, event_id, at_ms }) => {
                self.terminate(session_id, event_id, at_ms)
            }
            (GroupId::Metadata, Command::PutAgent { agent_id, spec, at_ms }) => self.put_agent(agent_id, spec, at_ms),
            (GroupId::Metadata, Command::PutEnvironment { environment_id, spec, at_ms }) => {
                self.put_environment(environment_id, spec, at_ms)
            }
            (GroupId::Metadata, Command::PutSecret { vault_id, vault_name, secret_name, sealed }) => {
                self.put_secret(vault_id, vault_name, secret_name, sealed)
            }
            (GroupId::Metadata, Command::InitCluster { shards, replication_factor }) => {
                self.init_cluster(ClusterConfig { shards, replication_factor })
            }
            (GroupId::Metadata, Command::AddNode { node_id, addr }) => self.add_node(node_id, addr),
            (GroupId::Metadata, Command::RemoveNode { node_id }) => self.remove_node(node_id),
            (GroupId::Metadata, Command::SetPlacement { shard, replicas }) => self.set_placement(shard, replicas),
            (GroupId::Metadata, Command::PutResource { id, workspace, version, expected_revision, at_ms }) => {
                self.put_resource(id, workspace, version, expected_revision, at_ms)
            }
            (GroupId::Metadata, Command::ArchiveResource { id, workspace, at_ms }) => {
                self.archive_resource(id, &workspace, at_ms)
            }
            (GroupId::Metadata, Command::DeleteResource { id, workspace }) => self.delete_resource(id, &workspace),
            (GroupId::Metadata, Command::PutCredential { vault_id, workspace, credential_id, credential, at_ms }) => {
                self.put_credential(vault_id, &workspace, credential_id, credential, at_ms)
            }
            (GroupId::Metadata, Command::PutApiKey(record)) => self.put_api_key(record),
            (GroupId::Metadata, Command::RevokeApiKey { key_id, at_ms }) => self.revoke_api_key(key_id, at_ms),
            (GroupId::Metadata, Command::PutApprovalPolicy { workspace, rules, expected_version, at_ms }) => {
                self.put_approval_policy(workspace, rules, expected_version, at_ms)
            }
            (
                GroupId::Shard(this_shard),
                Command::CreateSessionIn { session_id, shard, created_at_ms, agent, environment, details },
            ) if shard == this_shard => {
                let record = SessionRecord::new(shard, created_at_ms, agent, environment);
                self.create_session_in(session_id, record, details)
            }
            (GroupId::Shard(_), Command::UpdateSession { session_id, workspace, update, at_ms }) => {
                self.update_session(session_id, &workspace, update, at_ms)
            }
            (GroupId::Shard(_), Command::ArchiveSession { session_id, workspace, at_ms }) => {
                self.archive_session(session_id, &workspace, at_ms)
            }
            (GroupId::Shard(_), Command::DeleteSession { session_id, workspace, event_id, at_ms }) => {
                self.delete_session(session_id, &workspace, event_id, at_ms)
            }
            // A command for another group is a routing bug upstream; refusing
            // it keeps this group's state meaningful.
            (group, command) => Ok(CommandResponse::Rejected(ApiError::InvalidRequest {
                message: format!("{group} does not accept: {command}"),
            })),
        }
    }
}
