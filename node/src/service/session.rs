//! A session's requests, run on the leader of its shard: writes go through
//! the session's actor (which refuses what the state machine would refuse
//! before it costs a Raft round), reads are served by it after the leader
//! confirms its leadership.

use agentd_protocol::agent::AgentRef;
use agentd_protocol::api::{ClientRequest, ClientResponse};
use agentd_protocol::command::Command;
use agentd_protocol::ids::{AgentId, EventId, SessionId, ShardId};
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::propose;
use openraft::raft::ReadPolicy;

use super::{Origin, Service};

impl Service {
    /// Runs a session's request on `group`, the shard this node leads.
    pub(super) async fn execute_session(
        &self,
        group: &GroupHandle,
        shard: ShardId,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match request {
            ClientRequest::CreateSession { session_id, agent, environment } => {
                let agent = match agent {
                    Some(agent_id) => Some(self.pinned_agent(agent_id).await?),
                    None => None,
                };
                if let Some(environment_id) = environment {
                    // It must exist; sessions pin its id, and run its latest version.
                    let request = ClientRequest::GetEnvironment { environment_id };
                    self.route_metadata(request, Origin::FrontDoor).await?.into_environment()?;
                }
                let command =
                    Command::CreateSession { session_id, shard, created_at_ms: self.now_ms(), agent, environment };
                Ok(ClientResponse::Session(propose(group, command).await?.into_session()?))
            }
            ClientRequest::Append { session_id, event_id, payload } => {
                payload.validate_from_client()?;
                let (seq, duplicate) =
                    self.sessions().append(group, session_id, event_id, payload, self.now_ms()).await?;
                Ok(ClientResponse::Appended { seq, duplicate })
            }
            ClientRequest::RetrySession { session_id } => {
                #[allow(
                    clippy::disallowed_methods,
                    reason = "the id only needs to be unique; the simulator never retries a dead-lettered session"
                )]
                let event_id = EventId::from_random(rand::random());
                propose_append(group, Command::Reschedule { session_id, event_id, at_ms: self.now_ms() }).await
            }
            ClientRequest::TerminateSession { session_id } => {
                // A session ends once: its termination's id follows from its own
                // (no randomness, so the simulator's runs stay reproducible).
                let event_id = EventId(session_id.0.map(|byte| byte ^ 0x5a));
                propose_append(group, Command::Terminate { session_id, event_id, at_ms: self.now_ms() }).await
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
            other => Err(ApiError::InvalidRequest {
                message: format!("{} is not a request about one session that a single call answers", other.kind()),
            }),
        }
    }

    /// The agent a new session pins: its latest version, read on the metadata
    /// leader (straight there: a session's request never routes another one).
    async fn pinned_agent(&self, agent_id: AgentId) -> Result<AgentRef, ApiError> {
        let request = ClientRequest::GetAgent { agent_id };
        let agent = self.route_metadata(request, Origin::FrontDoor).await?.into_agent()?;
        Ok(AgentRef { id: agent_id, version: agent.latest_version() })
    }
}

/// Proposes a command that appends one event, answering with its sequence number.
async fn propose_append(group: &GroupHandle, command: Command) -> Result<ClientResponse, ApiError> {
    let (seq, duplicate) = propose(group, command).await?.into_appended()?;
    Ok(ClientResponse::Appended { seq, duplicate })
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
