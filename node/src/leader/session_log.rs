//! The brain's session log, read from and written to the shard leader on
//! this node.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_actors::brain::SessionLog;
use agentd_protocol::agent::{AgentRef, AgentSpec};
use agentd_protocol::api::{ClientRequest, SessionInfo};
use agentd_protocol::approval::ApprovalPolicy;
use agentd_protocol::command::Command;
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::{EventId, GroupId, SessionId};
use agentd_protocol::sync::lock;
use agentd_protocol::tenancy::DEFAULT_WORKSPACE;
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::propose;
use futures_util::future::BoxFuture;

use crate::service::{Caller, Service};

/// The longest one session-log or metadata call of the brain may take: a
/// call that cannot finish (a leader that cannot confirm itself, a read
/// that waits on an apply that does not come) fails instead of holding the
/// session's orchestrator forever; the orchestrator retries with backoff.
pub(crate) const BRAIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `call`, failing as `Unavailable` if it takes longer than [`BRAIN_CALL_TIMEOUT`].
pub(crate) async fn bounded<T>(what: &str, call: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
    tokio::time::timeout(BRAIN_CALL_TIMEOUT, call).await.unwrap_or_else(|_| {
        Err(ApiError::Unavailable { message: format!("{what} did not finish within {BRAIN_CALL_TIMEOUT:?}") })
    })
}

/// Told of every epoch claim and runtime append that committed: the
/// simulator's epoch checker listens here.
pub trait LogObserver: Send + Sync + 'static {
    /// `epoch` was claimed, after at most `after_seq` events of the session
    /// (its last sequence number as this node had applied it once the claim
    /// returned: the claim itself came at or before that point of the log).
    fn claimed(&self, session_id: SessionId, epoch: u64, after_seq: u64);
    fn appended(&self, session_id: SessionId, epoch: u64, seq: u64);
}

/// The session log, read from and written to the shard leader on this node.
pub struct LocalSessionLog {
    service: Service,
    // Agent versions never change once written, so they are cached.
    agents: Mutex<HashMap<AgentRef, AgentSpec>>,
    observer: Option<Arc<dyn LogObserver>>,
}

impl LocalSessionLog {
    pub fn new(service: Service) -> Self {
        Self { service, agents: Mutex::new(HashMap::new()), observer: None }
    }

    pub fn with_observer(mut self, observer: Option<Arc<dyn LogObserver>>) -> Self {
        self.observer = observer;
        self
    }

    /// The session's shard, which this node must lead.
    fn group(&self, session_id: SessionId) -> Result<GroupHandle, ApiError> {
        let shard = self.service.shard_of(session_id)?;
        let group = self
            .service
            .host()
            .group(GroupId::Shard(shard))
            .ok_or_else(|| ApiError::NotReplica { group: shard.to_string() })?;
        if !group.raft.is_leader() {
            // `None` while this node may still be becoming the leader (or
            // no leader is known): the orchestrator retries. Another known
            // leader wakes the session itself.
            let me = self.service.host().node_id();
            let leader = self.service.leader_of(&group).filter(|(leader, _)| *leader != me);
            return Err(ApiError::NotLeader { leader });
        }
        Ok(group)
    }
}

impl SessionLog for LocalSessionLog {
    fn session(&self, session_id: SessionId) -> BoxFuture<'_, Result<SessionInfo, ApiError>> {
        Box::pin(bounded("reading the session", async move {
            let group = self.group(session_id)?;
            group.state.session(session_id)?.ok_or_else(|| ApiError::NotFound { what: format!("session {session_id}") })
        }))
    }

    fn events(&self, session_id: SessionId) -> BoxFuture<'_, Result<Vec<Event>, ApiError>> {
        Box::pin(bounded("reading the session's events", async move {
            Ok(self.group(session_id)?.state.events_from(session_id, 1)?)
        }))
    }

    fn claim_epoch(&self, session_id: SessionId) -> BoxFuture<'_, Result<u64, ApiError>> {
        Box::pin(bounded("claiming an epoch", async move {
            let group = self.group(session_id)?;
            let epoch = propose(&group, Command::ClaimEpoch { session_id }).await?.into_epoch()?;
            if let Some(observer) = &self.observer {
                let after_seq = group.state.session(session_id)?.map(|info| info.last_seq).unwrap_or_default();
                observer.claimed(session_id, epoch, after_seq);
            }
            Ok(epoch)
        }))
    }

    fn append(
        &self,
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
        epoch: u64,
    ) -> BoxFuture<'_, Result<u64, ApiError>> {
        Box::pin(bounded("appending", async move {
            let processed_at_ms = self.service.now_ms();
            let command = Command::Append { session_id, event_id, payload, processed_at_ms, epoch: Some(epoch) };
            let (seq, duplicate) = propose(&self.group(session_id)?, command).await?.into_appended()?;
            if let (Some(observer), false) = (&self.observer, duplicate) {
                observer.appended(session_id, epoch, seq);
            }
            Ok(seq)
        }))
    }

    fn agent(&self, session: &SessionInfo) -> BoxFuture<'_, Result<AgentSpec, ApiError>> {
        let (session_id, pinned) = (session.session_id, session.agent);
        Box::pin(bounded("reading the agent", async move {
            let pinned =
                pinned.ok_or_else(|| ApiError::InvalidRequest { message: "the session has no agent".into() })?;
            // A session created with overrides runs its own spec.
            let view = self.group(session_id)?.state.session_view(session_id)?;
            if let Some(agent) = view.and_then(|view| view.details.agent_override) {
                return Ok(agent.spec);
            }
            if let Some(spec) = lock(&self.agents).get(&pinned) {
                return Ok(spec.clone());
            }
            let agent = self.service.agent(&Caller::Node, pinned.id).await?;
            let spec = agent.version(pinned.version).cloned().ok_or_else(|| ApiError::NotFound {
                what: format!("version {} of agent {}", pinned.version, pinned.id),
            })?;
            lock(&self.agents).insert(pinned, spec.clone());
            Ok(spec)
        }))
    }

    /// Read on the metadata leader, so a policy set a moment ago applies.
    fn approval_policy(&self, session: &SessionInfo) -> BoxFuture<'_, Result<ApprovalPolicy, ApiError>> {
        let session_id = session.session_id;
        Box::pin(bounded("reading the approval policy", async move {
            let view = self.group(session_id)?.state.session_view(session_id)?;
            let workspace = view.map_or(DEFAULT_WORKSPACE.to_string(), |view| view.details.workspace);
            let request = ClientRequest::GetApprovalPolicy { workspace: Some(workspace) };
            self.service.call(&Caller::Node, request).await?.into_approval_policy()
        }))
    }
}
