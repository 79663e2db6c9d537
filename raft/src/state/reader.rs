//! Read access to one group's state for serving queries, separate from the
//! state machine that openraft owns.

use agentd_protocol::agent::{Agent, Environment, SealedVault};
use agentd_protocol::api::SessionInfo;
use agentd_protocol::event::Event;
use agentd_protocol::ids::{AgentId, ApiKeyId, EnvironmentId, EventId, GroupId, NodeId, SessionId, ShardId, VaultId};
use agentd_protocol::limits::EVENTS_PER_PAGE_MAX;
use agentd_protocol::resource::{Resource, ResourceId, SessionView};
use agentd_protocol::tenancy::ApiKeyRecord;
use tokio::sync::{broadcast, watch};

use crate::state::group_state::GroupState;
use crate::Error;

/// Reads a group's state straight from RocksDB, and follows what its state
/// machine applies. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    pub(super) state: GroupState,
    // Weak, so that subscribers see the channel close when the state machine
    // is dropped instead of waiting forever.
    events: broadcast::WeakSender<Event>,
    applied: watch::Receiver<u64>,
}

impl StateReader {
    pub(crate) fn new(
        state: GroupState,
        events: broadcast::WeakSender<Event>,
        applied: watch::Receiver<u64>,
    ) -> StateReader {
        StateReader { state, events, applied }
    }

    /// The group this reader reads.
    pub fn group(&self) -> GroupId {
        self.state.group()
    }

    pub fn session(&self, session_id: SessionId) -> Result<Option<SessionInfo>, Error> {
        Ok(self.state.session(session_id)?.map(|record| record.info(session_id)))
    }

    /// Up to `limit` events of a session with `seq >= from_seq`, ordered by
    /// seq. At most [`EVENTS_PER_PAGE_MAX`] are returned whatever `limit` says.
    /// The event at `seq`, if this replica has applied it.
    pub fn event(&self, session_id: SessionId, seq: u64) -> Result<Option<Event>, Error> {
        self.state.event(session_id, seq)
    }

    pub fn events(&self, session_id: SessionId, from_seq: u64, limit: u32) -> Result<Vec<Event>, Error> {
        let limit = limit.min(EVENTS_PER_PAGE_MAX) as usize;
        self.state.events(session_id, from_seq, limit)
    }

    /// Every event of a session with `seq >= from_seq`, read page by page.
    pub fn events_from(&self, session_id: SessionId, from_seq: u64) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        loop {
            let next = events.last().map_or(from_seq, |event: &Event| event.seq + 1);
            let page = self.events(session_id, next, EVENTS_PER_PAGE_MAX)?;
            if page.is_empty() {
                return Ok(events);
            }
            events.extend(page);
        }
    }

    /// Every event applied from now on. A receiver that falls more than
    /// `FOLLOW_BUFFER_EVENTS_MAX` events behind gets `Lagged` and should
    /// re-read from [`StateReader::events`]. Events that arrive by an
    /// installed snapshot are not published (the applied index jumps
    /// instead), so a follower that sees a gap in `seq` also re-reads. The
    /// receiver is closed once the state machine is dropped.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        match self.events.upgrade() {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// The index of the last applied log entry (0 before the first one),
    /// updated after every applied batch and installed snapshot.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The sequence number an event id was appended at, if it was.
    pub fn event_seq(&self, session_id: SessionId, event_id: EventId) -> Result<Option<u64>, Error> {
        self.state.event_seq(session_id, event_id)
    }

    /// An agent with all its versions (metadata group), whatever its workspace.
    pub fn agent(&self, agent_id: AgentId) -> Result<Option<Agent>, Error> {
        Ok(self.resource(ResourceId::Agent(agent_id))?.and_then(|resource| resource.to_agent()))
    }

    /// A vault's secrets, sealed (metadata group), whatever its workspace.
    pub fn vault(&self, vault_id: VaultId) -> Result<Option<SealedVault>, Error> {
        Ok(self.resource(ResourceId::Vault(vault_id))?.and_then(|resource| resource.to_sealed_vault()))
    }

    /// An environment (metadata group), whatever its workspace.
    pub fn environment(&self, environment_id: EnvironmentId) -> Result<Option<Environment>, Error> {
        Ok(self.resource(ResourceId::Environment(environment_id))?.and_then(|resource| resource.to_environment()))
    }

    /// An agent, environment or vault with its workspace and versions (metadata group).
    pub fn resource(&self, id: ResourceId) -> Result<Option<Resource>, Error> {
        self.state.resource(id)
    }

    /// An API key's record (metadata group).
    pub fn api_key(&self, key_id: ApiKeyId) -> Result<Option<ApiKeyRecord>, Error> {
        self.state.api_key(key_id)
    }

    /// A workspace's approval policy (metadata group); version 0 when none was set.
    pub fn approval_policy(&self, workspace: &str) -> Result<agentd_protocol::approval::ApprovalPolicy, Error> {
        self.state.approval_policy(workspace)
    }

    /// Every API key (metadata group), by id.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, Error> {
        self.state.api_keys()
    }

    /// A session as the API shows it: its state, details and usage. A
    /// deleted session is still returned; callers decide what it means.
    pub fn session_view(&self, session_id: SessionId) -> Result<Option<SessionView>, Error> {
        let Some(record) = self.state.session(session_id)? else { return Ok(None) };
        let details = self.state.session_details(session_id, record.created_at_ms)?;
        let usage = self.state.session_usage(session_id)?;
        Ok(Some(SessionView { info: record.info(session_id), details, usage }))
    }

    /// The shard count and replication factor, once the cluster is initialised.
    pub fn cluster_config(&self) -> Result<Option<(u32, u32)>, Error> {
        Ok(self.state.cluster_config()?.map(|config| (config.shards, config.replication_factor)))
    }

    /// Every node and its address, by node id.
    pub fn nodes(&self) -> Result<Vec<(NodeId, String)>, Error> {
        self.state.nodes()
    }

    /// Whether `node_id` was removed from the cluster (its id never serves again).
    pub fn is_removed(&self, node_id: NodeId) -> Result<bool, Error> {
        self.state.is_removed(node_id)
    }

    /// The replica set of every placed shard, by shard.
    pub fn placements(&self) -> Result<Vec<(ShardId, Vec<NodeId>)>, Error> {
        self.state.placements()
    }

    /// Every session of the group, by id.
    pub fn session_ids(&self) -> Result<Vec<SessionId>, Error> {
        self.state.session_ids()
    }

    /// Sessions, events and state bytes the group holds (scans it: for
    /// operators' commands, not for hot paths).
    pub fn stats(&self) -> Result<(u64, u64, u64), Error> {
        let mut events = 0;
        let sessions = self.state.session_ids()?;
        for session_id in &sessions {
            events += self.state.session(*session_id)?.map_or(0, |info| info.last_seq);
        }
        Ok((sessions.len() as u64, events, self.state.state_bytes()?))
    }
}
