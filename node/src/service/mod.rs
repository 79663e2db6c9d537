//! The service: every client operation of a node, as one typed API.
//!
//! Front doors are thin adapters over it: the QUIC client server
//! (`crate::serve`) decodes a request, calls [`Service::call`] (or
//! [`Service::follow`]) and encodes the answer; an HTTP front door calls the
//! typed methods. The node's own components (the brain, the hands) use the
//! same methods as [`Caller::Node`]. Nothing a front door does is repeated in
//! another: validation, routing to the node that can run a request, and
//! forwarding live here.
//!
//! Where a request runs (see `route.rs`): a session's requests on the leader
//! of its shard (`session.rs`, through the session's actor), agents,
//! environments and vaults on the metadata group's leader (`metadata.rs`),
//! the cluster status on the node that received it (`status.rs`). A node that
//! cannot run a request forwards it one hop to the node that can; a forwarded
//! request is never forwarded again.

mod admission;
mod auth;
mod follow;
mod leadership;
mod lists;
mod metadata;
mod resources;
mod route;
mod session;
mod status;

use std::sync::Arc;

use agentd_protocol::agent::{Agent, AgentSpec, Environment, EnvironmentSpec, VaultInfo};
use agentd_protocol::api::{Appended, ClientRequest, ClientResponse, ClusterStatus, Consistency, SessionInfo};
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::{AgentId, EnvironmentId, EventId, GroupId, NodeId, SessionId, ShardId, VaultId};
use agentd_protocol::ApiError;
use agentd_raft::host::{GroupHandle, RaftHost};
use openraft::async_runtime::watch::WatchReceiver;
use tracing::Instrument;

pub use admission::RequestPermit;
pub use agentd_protocol::tenancy::Caller;
pub use follow::Follow;

use crate::clock::Clock;
use crate::session::Sessions;
use crate::vault::SecretsKey;

/// Where a request entered the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// At a front door of this node: it may be forwarded once.
    FrontDoor,
    /// Forwarded by another node: it runs here or fails with `NotLeader`.
    Forwarded,
}

/// Every client operation of one node. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    host: RaftHost,
    advertise: String,
    // Admissions read the placement and then rewrite it; two at once would
    // each start from the same placement and the later would undo the
    // earlier, so the metadata leader runs them one at a time.
    admissions: tokio::sync::Mutex<()>,
    sessions: Sessions,
    secrets_key: Arc<SecretsKey>,
    clock: Clock,
    rate_limits: auth::RateLimits,
    admission: admission::Admission,
}

impl Service {
    /// `requests_in_flight_max` bounds the client requests it runs at once
    /// (see [`Service::admit_request`]).
    pub fn new(
        host: RaftHost,
        advertise: String,
        secrets_key: Arc<SecretsKey>,
        clock: Clock,
        requests_in_flight_max: usize,
    ) -> Self {
        let inner = Inner {
            host,
            advertise,
            admissions: tokio::sync::Mutex::new(()),
            sessions: Sessions::new(),
            secrets_key,
            clock,
            rate_limits: auth::RateLimits::default(),
            admission: admission::Admission::new(requests_in_flight_max),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Runs one request wherever it must run and answers it: the entry
    /// point of every front door and of every typed method below.
    pub async fn call(&self, caller: &Caller, request: ClientRequest) -> Result<ClientResponse, ApiError> {
        self.instrumented(caller, request, Origin::FrontDoor).await
    }

    /// Runs a request that another node forwarded here, for `caller`.
    pub async fn call_forwarded(&self, caller: &Caller, request: ClientRequest) -> ClientResponse {
        self.instrumented(caller, request, Origin::Forwarded).await.unwrap_or_else(ClientResponse::Error)
    }

    async fn instrumented(
        &self,
        caller: &Caller,
        request: ClientRequest,
        origin: Origin,
    ) -> Result<ClientResponse, ApiError> {
        let started = tokio::time::Instant::now();
        let kind = request.kind();
        let span = tracing::debug_span!("request", kind, ?caller, ?origin, session = ?request.session_id());
        let response = self.route(caller, request, origin).instrument(span).await;
        metrics::histogram!("agentd_request_seconds", "kind" => kind).record(started.elapsed().as_secs_f64());
        response
    }

    /// Creates a session with a caller-chosen id, pinned to the agent's
    /// current version. Creating it again answers the same session.
    pub async fn create_session(
        &self,
        caller: &Caller,
        session_id: SessionId,
        agent: Option<AgentId>,
        environment: Option<EnvironmentId>,
    ) -> Result<SessionInfo, ApiError> {
        self.call(caller, ClientRequest::CreateSession { session_id, agent, environment }).await?.into_session()
    }

    pub async fn session(&self, caller: &Caller, session_id: SessionId) -> Result<SessionInfo, ApiError> {
        self.call(caller, ClientRequest::GetSession { session_id }).await?.into_session()
    }

    /// Appends a client's event; `event_id` is the idempotency key. Answers
    /// once the event is committed, with where it landed.
    pub async fn append(
        &self,
        caller: &Caller,
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
    ) -> Result<Appended, ApiError> {
        self.call(caller, ClientRequest::Append { session_id, event_id, payload }).await?.into_committed()
    }

    /// Up to `limit` events with `seq >= from_seq`, and where the next read starts.
    pub async fn events(
        &self,
        caller: &Caller,
        session_id: SessionId,
        from_seq: u64,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<Event>, u64), ApiError> {
        let request = ClientRequest::ReadEvents { session_id, from_seq, limit, consistency };
        self.call(caller, request).await?.into_events()
    }

    /// Follows a session on this node's replica of its shard: its events from
    /// `from_seq` on, then each new one as it commits (see [`Follow`]).
    pub async fn follow(&self, caller: &Caller, session_id: SessionId, from_seq: u64) -> Result<Follow, ApiError> {
        tracing::debug!(?caller, %session_id, from_seq, "follow");
        let shard = self.shard_of(session_id)?;
        let group = self.host().group(GroupId::Shard(shard)).ok_or_else(|| not_replica(shard))?;
        session::check_visible(caller, &group, session_id)?;
        Follow::start(group, session_id, from_seq)
    }

    /// Resumes a dead-lettered session; answers the seq of its `session.status_rescheduled`.
    pub async fn retry_session(&self, caller: &Caller, session_id: SessionId) -> Result<u64, ApiError> {
        Ok(self.call(caller, ClientRequest::RetrySession { session_id }).await?.into_appended()?.0)
    }

    /// Ends a session for good; answers the seq of its `session.status_terminated`.
    pub async fn terminate_session(&self, caller: &Caller, session_id: SessionId) -> Result<u64, ApiError> {
        Ok(self.call(caller, ClientRequest::TerminateSession { session_id }).await?.into_appended()?.0)
    }

    /// Creates an agent, or adds a version to it.
    pub async fn put_agent(&self, caller: &Caller, agent_id: AgentId, spec: AgentSpec) -> Result<Agent, ApiError> {
        self.call(caller, ClientRequest::PutAgent { agent_id, spec }).await?.into_agent()
    }

    pub async fn agent(&self, caller: &Caller, agent_id: AgentId) -> Result<Agent, ApiError> {
        self.call(caller, ClientRequest::GetAgent { agent_id }).await?.into_agent()
    }

    /// Creates an environment, or adds a version to it.
    pub async fn put_environment(
        &self,
        caller: &Caller,
        environment_id: EnvironmentId,
        spec: EnvironmentSpec,
    ) -> Result<Environment, ApiError> {
        self.call(caller, ClientRequest::PutEnvironment { environment_id, spec }).await?.into_environment()
    }

    pub async fn environment(&self, caller: &Caller, environment_id: EnvironmentId) -> Result<Environment, ApiError> {
        self.call(caller, ClientRequest::GetEnvironment { environment_id }).await?.into_environment()
    }

    /// Sets one secret of a vault, creating the vault if needed. The value
    /// is sealed before it is replicated.
    pub async fn put_secret(
        &self,
        caller: &Caller,
        vault_id: VaultId,
        vault_name: String,
        secret_name: String,
        value: String,
    ) -> Result<VaultInfo, ApiError> {
        let request = ClientRequest::PutSecret { vault_id, vault_name, secret_name, value };
        self.call(caller, request).await?.into_vault()
    }

    /// Every node's report of itself and the groups it hosts.
    pub async fn cluster_status(&self, caller: &Caller) -> Result<ClusterStatus, ApiError> {
        self.call(caller, ClientRequest::ClusterStatus).await?.into_cluster_status()
    }

    /// Milliseconds since the Unix epoch, from the node's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    pub fn host(&self) -> &RaftHost {
        &self.inner.host
    }

    /// The key that seals and opens vault secrets.
    pub fn secrets_key(&self) -> &SecretsKey {
        &self.inner.secrets_key
    }

    /// This node's session actors.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The shard of a session, from the shard count fixed at cluster init.
    pub fn shard_of(&self, session_id: SessionId) -> Result<ShardId, ApiError> {
        let (shards, _) = self.metadata()?.state.cluster_config()?.ok_or_else(|| ApiError::Unavailable {
            message: "this node has not learned the cluster configuration yet".into(),
        })?;
        Ok(agentd_protocol::ids::shard_of(session_id, shards))
    }

    /// The leader of `group` as this node knows it: its id and address.
    pub fn leader_of(&self, group: &GroupHandle) -> Option<(NodeId, String)> {
        let metrics = group.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node.addr))
    }

    pub(crate) fn metadata(&self) -> Result<GroupHandle, ApiError> {
        self.host()
            .group(GroupId::Metadata)
            .ok_or_else(|| ApiError::Unavailable { message: "metadata group is not open on this node".into() })
    }
}

fn not_replica(shard: ShardId) -> ApiError {
    ApiError::NotReplica { group: shard.to_string() }
}
