//! A session's requests, run on the leader of its shard: writes go through
//! the session's actor (which refuses what the state machine would refuse
//! before it costs a Raft round), reads are served after the leader
//! confirms its leadership. A session of another workspace, or a deleted
//! one, is "not found" for every client.

use agentd_protocol::agent::AgentRef;
use agentd_protocol::api::{Appended, ClientRequest, ClientResponse};
use agentd_protocol::approval::Decider;
use agentd_protocol::command::Command;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{AgentId, EventId, SessionId, ShardId};
use agentd_protocol::resource::{
    validate_metadata, ResourceId, SessionCreate, SessionDetails, SessionQuery, SessionUpdate, SessionView,
};
use agentd_protocol::tenancy::Caller;
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::propose;
use openraft::raft::ReadPolicy;

use super::{Origin, Service};

impl Service {
    /// Runs a session's (or a shard's) request on `group`, the shard this node leads.
    pub(super) async fn execute_session(
        &self,
        caller: &Caller,
        group: &GroupHandle,
        shard: ShardId,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        if let Some(session_id) = request.session_id() {
            if !matches!(request, ClientRequest::CreateSession { .. } | ClientRequest::CreateSessionIn { .. }) {
                check_visible(caller, group, session_id)?;
            }
        }
        match request {
            ClientRequest::CreateSession { session_id, agent, environment } => {
                let create = SessionCreate { agent, environment, ..SessionCreate::default() };
                let view = self.create_session_here(caller, group, shard, session_id, create).await?;
                Ok(ClientResponse::Session(view.info))
            }
            ClientRequest::CreateSessionIn { session_id, create } => {
                let view = self.create_session_here(caller, group, shard, session_id, create).await?;
                Ok(ClientResponse::SessionView(Box::new(view)))
            }
            ClientRequest::Append { session_id, event_id, payload } => {
                payload.validate_from_client()?;
                let payload = self.attributed(caller, payload).await?;
                let at_ms = self.now_ms();
                let (seq, duplicate) = self.sessions().append(group, session_id, event_id, payload, at_ms).await?;
                // The stored stamp: a retry's is the first attempt's, and the
                // log may have moved a new one forward (timestamps never go
                // backwards within a session).
                Ok(ClientResponse::Appended(Appended { duplicate, ..stored(group, session_id, seq)? }))
            }
            ClientRequest::RetrySession { session_id } => {
                #[allow(
                    clippy::disallowed_methods,
                    reason = "the id only needs to be unique; the simulator never retries a dead-lettered session"
                )]
                let event_id = EventId::from_random(rand::random());
                propose_append(group, session_id, Command::Reschedule { session_id, event_id, at_ms: self.now_ms() })
                    .await
            }
            ClientRequest::TerminateSession { session_id } => {
                // A session ends once: its termination's id follows from its own
                // (no randomness, so the simulator's runs stay reproducible).
                let event_id = EventId(session_id.0.map(|byte| byte ^ 0x5a));
                propose_append(group, session_id, Command::Terminate { session_id, event_id, at_ms: self.now_ms() })
                    .await
            }
            ClientRequest::GetSession { session_id } => {
                ensure_linearizable(group).await?;
                Ok(ClientResponse::Session(self.sessions().info(group, session_id).await?))
            }
            ClientRequest::ReadEvents { session_id, from_seq, limit, .. } => {
                ensure_linearizable(group).await?;
                let (events, next_seq) = self.sessions().read(group, session_id, from_seq, limit).await?;
                Ok(ClientResponse::Events { events, next_seq })
            }
            other => self.execute_session_details(caller, group, other).await,
        }
    }

    /// The requests about what the API shows of sessions: views, details,
    /// archiving, deletion, lists of events and of the shard's sessions.
    async fn execute_session_details(
        &self,
        caller: &Caller,
        group: &GroupHandle,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match request {
            ClientRequest::GetSessionView { session_id } => {
                ensure_linearizable(group).await?;
                Ok(ClientResponse::SessionView(Box::new(session_view(group, session_id)?)))
            }
            ClientRequest::UpdateSession { session_id, update } => {
                validate_update(&update)?;
                let workspace = owner(group, session_id)?;
                let command = Command::UpdateSession { session_id, workspace, update, at_ms: self.now_ms() };
                Ok(ClientResponse::SessionView(Box::new(propose(group, command).await?.into_session_view()?)))
            }
            ClientRequest::ArchiveSession { session_id } => {
                let workspace = owner(group, session_id)?;
                let command = Command::ArchiveSession { session_id, workspace, at_ms: self.now_ms() };
                Ok(ClientResponse::SessionView(Box::new(propose(group, command).await?.into_session_view()?)))
            }
            ClientRequest::DeleteSession { session_id } => {
                let workspace = owner(group, session_id)?;
                // Deleted once: the event's id follows from the session's.
                let event_id = EventId(session_id.0.map(|byte| byte ^ 0xa5));
                let command = Command::DeleteSession { session_id, workspace, event_id, at_ms: self.now_ms() };
                propose(group, command).await?.into_appended()?;
                Ok(ClientResponse::Done)
            }
            ClientRequest::ListEvents { session_id, query } => {
                ensure_linearizable(group).await?;
                let last_seq = session_view(group, session_id)?.info.last_seq;
                Ok(ClientResponse::EventPage(group.state.events_page(session_id, last_seq, &query)?))
            }
            ClientRequest::ListShardSessions { query, .. } => {
                ensure_linearizable(group).await?;
                let workspace = caller.owning_workspace();
                Ok(ClientResponse::Sessions(group.state.sessions_page(workspace, &query)?))
            }
            ClientRequest::TransferLeader { to, .. } => self.transfer_leader_here(caller, group, to).await,
            ClientRequest::GroupStats { .. } => self.group_stats_here(caller, group).await,
            other => Err(ApiError::InvalidRequest {
                message: format!("{} is not a request about one session that a single call answers", other.kind()),
            }),
        }
    }

    /// Creates a session of the caller's workspace, pinned to a visible
    /// agent's version, in a visible environment, with visible vaults.
    async fn create_session_here(
        &self,
        caller: &Caller,
        group: &GroupHandle,
        shard: ShardId,
        session_id: SessionId,
        create: SessionCreate,
    ) -> Result<SessionView, ApiError> {
        validate_metadata(&create.metadata)?;
        let agent = match create.agent {
            Some(agent_id) => Some(self.pinned_agent(caller, agent_id, create.agent_version).await?),
            None => None,
        };
        for vault_id in &create.vault_ids {
            self.visible_resource(caller, ResourceId::Vault(*vault_id)).await?;
        }
        if let Some(environment_id) = create.environment {
            // It must exist; sessions pin its id, and run its latest version.
            let environment = self.visible_resource(caller, ResourceId::Environment(environment_id)).await?;
            if environment.archived_at_ms.is_some() {
                return Err(ApiError::InvalidRequest { message: format!("environment {environment_id} is archived") });
            }
        }
        let now = self.now_ms();
        let details = SessionDetails {
            workspace: caller.owning_workspace().to_string(),
            title: create.title,
            metadata: create.metadata,
            vault_ids: create.vault_ids,
            agent_override: create.agent_override,
            ..SessionDetails::default_for(now)
        };
        let environment = create.environment;
        let command = Command::CreateSessionIn { session_id, shard, created_at_ms: now, agent, environment, details };
        propose(group, command).await?.into_session()?;
        session_view(group, session_id)
    }

    /// The agent version a new session pins: the asked one, or the latest,
    /// of an agent that is visible to the caller and not archived.
    async fn pinned_agent(&self, caller: &Caller, id: AgentId, version: Option<u32>) -> Result<AgentRef, ApiError> {
        let agent = self.visible_resource(caller, ResourceId::Agent(id)).await?;
        if agent.archived_at_ms.is_some() {
            return Err(ApiError::InvalidRequest {
                message: format!("agent {id} is archived: new sessions cannot use it"),
            });
        }
        let version = version.unwrap_or(agent.version_number());
        if version == 0 || version > agent.version_number() {
            return Err(ApiError::NotFound { what: format!("version {version} of agent {id}") });
        }
        Ok(AgentRef { id, version })
    }

    /// A client's event as the log records it: a confirmation names the key
    /// that gave it (the state machine checks it against the approval policy
    /// that gated the tool use and adds that policy's version). Clients send
    /// `user.tool_confirmation`; only the node writes who sent it.
    async fn attributed(&self, caller: &Caller, payload: EventPayload) -> Result<EventPayload, ApiError> {
        match payload {
            EventPayload::UserToolDecision { .. } => Err(ApiError::InvalidRequest {
                message: "send user.tool_confirmation; the node records who decided".into(),
            }),
            EventPayload::UserToolConfirmation { tool_use_id, result, deny_message } => {
                let decided_by = match caller {
                    Caller::Key { key_id, role, .. } => {
                        let record = self.api_key_record(*key_id).await?;
                        Some(Decider { key_id: *key_id, key_name: record.name, role: *role })
                    }
                    Caller::Node => None,
                };
                Ok(EventPayload::UserToolDecision {
                    tool_use_id,
                    result,
                    deny_message,
                    decided_by,
                    policy_version: None,
                })
            }
            other => Ok(other),
        }
    }

    /// A resource the caller may see, read on the metadata leader (straight
    /// there: a session's request never routes another session's).
    pub(super) async fn visible_resource(
        &self,
        caller: &Caller,
        id: ResourceId,
    ) -> Result<agentd_protocol::resource::Resource, ApiError> {
        let request = ClientRequest::GetResource { id };
        self.route_metadata(caller, request, Origin::FrontDoor).await?.into_resource()
    }
}

/// A session's view as this leader has applied it.
fn session_view(group: &GroupHandle, session_id: SessionId) -> Result<SessionView, ApiError> {
    group.state.session_view(session_id)?.ok_or_else(|| not_found(session_id))
}

/// The workspace of a session (already checked visible to the caller).
fn owner(group: &GroupHandle, session_id: SessionId) -> Result<String, ApiError> {
    Ok(session_view(group, session_id)?.details.workspace)
}

/// Refuses, as "not found", a session the caller may not see: one of
/// another workspace, or (for clients) a deleted one.
pub(super) fn check_visible(caller: &Caller, group: &GroupHandle, session_id: SessionId) -> Result<(), ApiError> {
    let view = session_view(group, session_id)?;
    let deleted = view.details.deleted_at_ms.is_some() && *caller != Caller::Node;
    if deleted || !caller.sees(&view.details.workspace) {
        return Err(not_found(session_id));
    }
    Ok(())
}

fn validate_update(update: &SessionUpdate) -> Result<(), ApiError> {
    if let Some(Some(title)) = &update.title {
        if title.len() > agentd_protocol::limits::DESCRIPTION_BYTES_MAX {
            return Err(ApiError::InvalidRequest {
                message: format!("title exceeds {} bytes", agentd_protocol::limits::DESCRIPTION_BYTES_MAX),
            });
        }
    }
    let set: Vec<(String, String)> =
        update.metadata.iter().map(|(key, value)| (key.clone(), value.clone().unwrap_or_default())).collect();
    validate_metadata(&set)
}

/// Proposes a command that appends one event to `session_id`, answering
/// with where it landed.
async fn propose_append(
    group: &GroupHandle,
    session_id: SessionId,
    command: Command,
) -> Result<ClientResponse, ApiError> {
    let (seq, duplicate) = propose(group, command).await?.into_appended()?;
    Ok(ClientResponse::Appended(Appended { duplicate, ..stored(group, session_id, seq)? }))
}

/// The committed event at `seq`, as this leader applied it (it applies an
/// entry before acknowledging it), as an append's answer.
fn stored(group: &GroupHandle, session_id: SessionId, seq: u64) -> Result<Appended, ApiError> {
    let event = group.state.event(session_id, seq)?;
    let event = event
        .ok_or_else(|| ApiError::Internal { message: format!("event {seq} of {session_id} is not applied here") })?;
    Ok(Appended { seq, duplicate: true, processed_at_ms: event.processed_at_ms })
}

/// Makes sure this node is still the leader, so a read sees every
/// acknowledged append.
pub(super) async fn ensure_linearizable(group: &GroupHandle) -> Result<(), ApiError> {
    group
        .raft
        .ensure_linearizable(ReadPolicy::ReadIndex)
        .await
        .map(|_| ())
        .map_err(|error| ApiError::Unavailable { message: format!("cannot confirm leadership: {error}") })
}

pub(super) fn not_found(session_id: SessionId) -> ApiError {
    ApiError::NotFound { what: format!("session {session_id}") }
}

/// The query a client's list asks each shard, with its bounds applied.
pub(super) fn bounded_query(mut query: SessionQuery) -> SessionQuery {
    query.limit = query.limit.clamp(1, agentd_protocol::limits::LIST_LIMIT_MAX);
    query
}
