//! The deterministic command logic of the state machine.
//!
//! An [`ApplyBatch`] turns committed entries into one RocksDB write batch and
//! the responses to them. Several entries of one batch may touch the same
//! session, so the batch keeps an overlay of what it has written: a read
//! sees the batch's own earlier writes before falling back to the database.
//! Everything a command depends on (timestamps included) is in the command,
//! so every replica computes the same batch.

use std::collections::HashMap;

use crate::store::disk::Batch;
use agentd_protocol::agent::{Agent, AgentSpec, Environment, EnvironmentSpec, SealedVault};
use agentd_protocol::api::SessionStatus;
use agentd_protocol::event::{Event, EventPayload, StopReason};
use agentd_protocol::ids::{AgentId, EnvironmentId, EventId, GroupId, NodeId, SessionId, ShardId, VaultId};
use agentd_protocol::ApiError;
use openraft::EntryPayload;
use serde::Serialize;

use crate::store::codec::encode;
use crate::store::group_state::{AppliedState, ClusterConfig, GroupState, SessionRecord};
use crate::store::keys::{self, STATE_CF};
use agentd_protocol::command::{Command, CommandResponse};

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
    agents: HashMap<AgentId, Agent>,
    environments: HashMap<EnvironmentId, Environment>,
    vaults: HashMap<VaultId, SealedVault>,
    events: Vec<Event>,
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
            agents: HashMap::new(),
            environments: HashMap::new(),
            vaults: HashMap::new(),
            events: Vec::new(),
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
                let record = SessionRecord {
                    shard,
                    created_at_ms,
                    last_seq: 0,
                    agent,
                    environment,
                    status: SessionStatus::Idle,
                    epoch: 0,
                    pending_actions: Vec::new(),
                    stop_reason: None,
                };
                self.create_session(session_id, record)
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
            (GroupId::Metadata, Command::SetPlacement { shard, replicas }) => self.set_placement(shard, replicas),
            // A command for another group is a routing bug upstream; refusing
            // it keeps this group's state meaningful.
            (group, command) => Ok(CommandResponse::Rejected(ApiError::InvalidRequest {
                message: format!("{group} does not accept: {command}"),
            })),
        }
    }

    fn session(&self, session_id: SessionId) -> Result<Option<SessionRecord>, Error> {
        match self.sessions.get(&session_id) {
            Some(record) => Ok(Some(record.clone())),
            None => self.state.session(session_id),
        }
    }

    fn put_session(&mut self, session_id: SessionId, record: SessionRecord) -> Result<(), Error> {
        self.put(keys::session_key(self.state.group(), session_id), &record)?;
        self.sessions.insert(session_id, record);
        Ok(())
    }

    fn event_seq(&self, session_id: SessionId, event_id: EventId) -> Result<Option<u64>, Error> {
        match self.event_seqs.get(&(session_id, event_id)) {
            Some(&seq) => Ok(Some(seq)),
            None => self.state.event_seq(session_id, event_id),
        }
    }

    fn create_session(&mut self, session_id: SessionId, record: SessionRecord) -> Result<CommandResponse, Error> {
        if let Some(existing) = self.session(session_id)? {
            return Ok(CommandResponse::Session { info: existing.info(session_id), created: false });
        }
        let info = record.info(session_id);
        self.put_session(session_id, record)?;
        Ok(CommandResponse::Session { info, created: true })
    }

    fn claim_epoch(&mut self, session_id: SessionId) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        record.epoch += 1;
        let epoch = record.epoch;
        self.put_session(session_id, record)?;
        Ok(CommandResponse::Epoch(epoch))
    }

    fn reschedule(&mut self, session_id: SessionId, event_id: EventId, at_ms: u64) -> Result<CommandResponse, Error> {
        if let Some(seq) = self.event_seq(session_id, event_id)? {
            return Ok(CommandResponse::Appended { seq, duplicate: true });
        }
        let Some(record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        let dead_lettered =
            record.status == SessionStatus::Idle && record.stop_reason == Some(StopReason::RetriesExhausted);
        if !dead_lettered {
            return Ok(CommandResponse::Rejected(ApiError::InvalidRequest {
                message: format!("session {session_id} is not dead-lettered (idle after its retries ran out)"),
            }));
        }
        // Written by the runtime on the operator's behalf, in the current epoch.
        let epoch = Some(record.epoch);
        self.append(session_id, event_id, EventPayload::SessionStatusRescheduled, at_ms, epoch)
    }

    fn terminate(&mut self, session_id: SessionId, event_id: EventId, at_ms: u64) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        if record.status == SessionStatus::Terminated {
            // A retried request: nothing comes after the terminated event, so it is the last.
            return Ok(CommandResponse::Appended { seq: record.last_seq, duplicate: true });
        }
        // A new epoch: a running orchestrator's next append is refused as stale.
        record.epoch += 1;
        let epoch = record.epoch;
        self.put_session(session_id, record)?;
        self.append(session_id, event_id, EventPayload::SessionStatusTerminated, at_ms, Some(epoch))
    }

    fn put_secret(
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

    fn put_environment(
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

    fn put_agent(&mut self, agent_id: AgentId, spec: AgentSpec, at_ms: u64) -> Result<CommandResponse, Error> {
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

    fn append(
        &mut self,
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
        epoch: Option<u64>,
    ) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        // The event id is the idempotency key: a retried append gets the
        // sequence number of the first one.
        if let Some(seq) = self.event_seq(session_id, event_id)? {
            return Ok(CommandResponse::Appended { seq, duplicate: true });
        }
        let verdict = match epoch {
            None => admit_user_event(&mut record, &payload),
            Some(epoch) => admit_runtime_event(&mut record, &payload, epoch, self.state.db().bugs().skip_epoch_fence),
        };
        if let Err(error) = verdict {
            return Ok(CommandResponse::Rejected(error));
        }
        let seq = record.last_seq + 1;
        let event = Event { session_id, seq, id: event_id, processed_at_ms, payload };
        let group = self.state.group();
        self.put(keys::event_key(group, session_id, seq), &event)?;
        self.put(keys::event_id_key(group, session_id, event_id), &seq)?;
        self.event_seqs.insert((session_id, event_id), seq);
        record.last_seq = seq;
        self.put_session(session_id, record)?;
        self.events.push(event);
        Ok(CommandResponse::Appended { seq, duplicate: false })
    }

    fn init_cluster(&mut self, config: ClusterConfig) -> Result<CommandResponse, Error> {
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

    fn add_node(&mut self, node_id: NodeId, addr: String) -> Result<CommandResponse, Error> {
        self.put(keys::node_key(self.state.group(), node_id), &addr)?;
        Ok(CommandResponse::Done)
    }

    fn set_placement(&mut self, shard: ShardId, replicas: Vec<NodeId>) -> Result<CommandResponse, Error> {
        self.put(keys::placement_key(self.state.group(), shard), &replicas)?;
        Ok(CommandResponse::Done)
    }
}

/// Checks a client's event against the session and records what it answers.
fn admit_user_event(record: &mut SessionRecord, payload: &EventPayload) -> Result<(), ApiError> {
    let answered = agentd_protocol::rules::admit_user_event(record.status, &record.pending_actions, payload)?;
    if let Some(answered) = answered {
        record.pending_actions.retain(|pending| *pending != answered);
    }
    Ok(())
}

/// Checks an orchestrator's event: only the current epoch may write, and
/// status events move the session's status.
///
/// `skip_fence` is the simulator's planted bug (`--bug skip-epoch-fence`):
/// any epoch may write. Never set in production.
fn admit_runtime_event(
    record: &mut SessionRecord,
    payload: &EventPayload,
    epoch: u64,
    skip_fence: bool,
) -> Result<(), ApiError> {
    if epoch != record.epoch && !skip_fence {
        return Err(ApiError::StaleEpoch { epoch, current: record.epoch });
    }
    if record.status == SessionStatus::Terminated {
        return Err(ApiError::InvalidRequest { message: "the session is terminated".into() });
    }
    if payload.is_user_event() {
        return Err(ApiError::InvalidRequest { message: "the runtime does not append user events".into() });
    }
    match payload {
        EventPayload::SessionStatusRunning => record.status = SessionStatus::Running,
        EventPayload::SessionStatusRescheduled => record.stop_reason = None,
        EventPayload::SessionStatusIdle { stop_reason } => {
            record.status = SessionStatus::Idle;
            record.stop_reason = Some(stop_reason.clone());
            record.pending_actions = match stop_reason {
                StopReason::RequiresAction { event_ids } => event_ids.clone(),
                _ => Vec::new(),
            };
        }
        EventPayload::SessionStatusTerminated => record.status = SessionStatus::Terminated,
        _ => {}
    }
    Ok(())
}
