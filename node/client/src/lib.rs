//! The native client of an agentd cluster: QUIC, ALPN `agentd/1`, one
//! stream per call. Knows several node addresses and moves to the next one
//! when a node fails. Appends carry a client-chosen event id, so retrying
//! them never creates a second event; follows resume from the last
//! delivered sequence number, so a reconnect misses nothing and repeats
//! nothing.
//!
//! **Boundary:** this crate links the wire (`agentd-protocol`,
//! `agentd-transport`) and nothing of a node: no storage engine, no Raft,
//! no actors. `scripts/check-layers.sh` keeps it so.

use std::net::IpAddr;
use std::time::Duration;

use agentd_protocol::agent::{Agent, AgentSpec, Environment, EnvironmentSpec, VaultInfo};
use agentd_protocol::api::{
    ClientRequest, ClientResponse, ClusterStatus, Consistency, GroupStats, Request, SessionInfo, ShardMove,
};
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::frame::encode_frame;
use agentd_protocol::ids::{AgentId, ApiKeyId, EnvironmentId, EventId, GroupId, NodeId, SessionId, ShardId, VaultId};
use agentd_protocol::limits::CLIENT_FRAME_BYTES_MAX;
use agentd_protocol::resource::{SessionPage, SessionQuery};
use agentd_protocol::tenancy::{new_api_key, ApiKeyInfo, Role};
use agentd_protocol::{ApiError, CLIENT_ALPN};
use agentd_transport::dial::{host_of, resolve};
use agentd_transport::tls::{client_config, SERVER_NAME};
use agentd_transport::wire::read_frame;
use tokio::sync::Mutex;

pub use agentd_transport::tls::ServerTrust;

/// Bits for a new id (session, event, agent, environment, vault) when the
/// caller names none. The simulator's workload always names its own, drawn
/// from the run's seed, so OS randomness never shapes a simulated run.
#[allow(clippy::disallowed_methods, reason = "only ids the caller left to the client; the simulator names its own")]
fn random_id() -> u128 {
    rand::random()
}

/// How long a QUIC handshake with a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may wait for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot reach {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("connection to {addr} failed: {message}")]
    Transport { addr: String, message: String },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    Exhausted { attempts: u32, last: Box<ClientError> },
    #[error("client setup: {0}")]
    Setup(String),
}

impl ClientError {
    /// Whether another attempt (perhaps on another node) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api(error) => {
                error.is_retryable() || matches!(error, ApiError::NotReplica { .. } | ApiError::StorageFull { .. })
            }
            ClientError::Connect { .. } | ClientError::Transport { .. } => true,
            ClientError::Exhausted { .. } | ClientError::Setup(_) => false,
        }
    }
}

/// How long [`Client`] keeps retrying a call before giving up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub deadline: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        }
    }
}

pub struct Client {
    endpoint: quinn::Endpoint,
    addrs: Vec<String>,
    /// Every call carries it; the cluster answers `Unauthenticated` without a valid one.
    api_key: String,
    current: Mutex<(usize, Option<quinn::Connection>)>,
    retry: RetryPolicy,
}

impl Client {
    /// A client for the cluster reachable at `addrs` (any node works).
    pub fn new(addrs: Vec<String>, trust: ServerTrust) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Setup("at least one node address is needed".into()));
        }
        let bind = "0.0.0.0:0".parse().map_err(|_| ClientError::Setup("bad bind address".into()))?;
        let endpoint = quinn::Endpoint::client(bind).map_err(|error| ClientError::Setup(error.to_string()))?;
        Self::with_endpoint(endpoint, addrs, trust)
    }

    /// A client on an endpoint the caller made (the simulator's runs on a
    /// simulated socket).
    pub fn with_endpoint(
        mut endpoint: quinn::Endpoint,
        addrs: Vec<String>,
        trust: ServerTrust,
    ) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Setup("at least one node address is needed".into()));
        }
        let config = client_config(trust, CLIENT_ALPN).map_err(|error| ClientError::Setup(error.to_string()))?;
        endpoint.set_default_client_config(config);
        Ok(Self {
            endpoint,
            addrs,
            api_key: String::new(),
            current: Mutex::new((0, None)),
            retry: RetryPolicy::default(),
        })
    }

    /// A client trusting the CA in `ca_pem` if given; without it, only
    /// loopback addresses are accepted (development), without verification.
    pub fn for_addrs(addrs: Vec<String>, ca_pem: Option<String>) -> Result<Self, ClientError> {
        let trust = match ca_pem {
            Some(pem) => ServerTrust::Ca(pem),
            None => {
                for addr in &addrs {
                    let host = host_of(addr);
                    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                    if !loopback {
                        return Err(ClientError::Setup(format!(
                            "{addr} is not a loopback address: pass --ca CA.pem (the cluster CA, DATA/tls/ca.pem) to verify it"
                        )));
                    }
                }
                ServerTrust::InsecureLoopback
            }
        };
        Self::new(addrs, trust)
    }

    /// Calls as the holder of `api_key` (see `agentd apikey create`).
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = api_key.into();
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    async fn connection(&self) -> Result<(String, quinn::Connection), ClientError> {
        let mut current = self.current.lock().await;
        let addr = self.addrs[current.0 % self.addrs.len()].clone();
        if let Some(connection) = current.1.as_ref().filter(|connection| connection.close_reason().is_none()) {
            return Ok((addr, connection.clone()));
        }
        let connect_error = |message: String| ClientError::Connect { addr: addr.clone(), message };
        let socket_addr = resolve(&addr).await.map_err(|error| connect_error(error.to_string()))?;
        let connecting =
            self.endpoint.connect(socket_addr, SERVER_NAME).map_err(|error| connect_error(error.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| connect_error("handshake timed out".into()))?
            .map_err(|error| connect_error(error.to_string()))?;
        current.1 = Some(connection.clone());
        Ok((addr, connection))
    }

    /// Moves to the next node if `error` means the current one cannot serve.
    pub async fn note_failure(&self, error: &ClientError) {
        match error {
            ClientError::Connect { addr, .. } | ClientError::Transport { addr, .. } => self.rotate(addr).await,
            ClientError::Api(
                ApiError::NotReplica { .. } | ApiError::Unavailable { .. } | ApiError::StorageFull { .. },
            ) => {
                let addr = self.addrs[self.current.lock().await.0 % self.addrs.len()].clone();
                self.rotate(&addr).await;
            }
            _ => {}
        }
    }

    /// Moves to the next node after a failure on `addr`.
    async fn rotate(&self, failed: &str) {
        let mut current = self.current.lock().await;
        if self.addrs[current.0 % self.addrs.len()] == failed {
            current.0 = (current.0 + 1) % self.addrs.len();
            current.1 = None;
        }
    }

    /// Opens a stream and sends one request on it.
    async fn open(&self, request: ClientRequest) -> Result<(String, quinn::RecvStream), ClientError> {
        // Encoded first: a request too large for a frame (or one that does
        // not encode) is refused here as a permanent error, never retried.
        let frame = encode_frame(&Request::new(self.api_key.clone(), request), CLIENT_FRAME_BYTES_MAX)
            .map_err(|error| ClientError::Api(error.into()))?;
        let (addr, connection) = self.connection().await?;
        let transport = |message: String| ClientError::Transport { addr: addr.clone(), message };
        let (mut send, recv) = connection.open_bi().await.map_err(|error| transport(error.to_string()))?;
        send.write_all(&frame).await.map_err(|error| transport(error.to_string()))?;
        send.finish().map_err(|error| transport(error.to_string()))?;
        Ok((addr, recv))
    }

    /// One attempt on the current node.
    pub async fn call_once(&self, request: ClientRequest) -> Result<ClientResponse, ClientError> {
        let (addr, mut recv) = self.open(request).await?;
        let result =
            tokio::time::timeout(ANSWER_TIMEOUT, read_frame::<_, ClientResponse>(&mut recv, CLIENT_FRAME_BYTES_MAX))
                .await
                .map_err(|_| ClientError::Transport {
                    addr: addr.clone(),
                    message: format!("no answer within {ANSWER_TIMEOUT:?}"),
                })?;
        match result {
            Ok(Some(ClientResponse::Error(error))) => Err(ClientError::Api(error)),
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(ClientError::Transport { addr, message: "stream closed without an answer".into() }),
            Err(error) => Err(ClientError::Transport { addr, message: error.to_string() }),
        }
    }

    /// Calls with retries on retryable errors, moving between nodes, until
    /// the retry deadline.
    pub async fn call(&self, request: ClientRequest) -> Result<ClientResponse, ClientError> {
        let deadline = tokio::time::Instant::now() + self.retry.deadline;
        let mut backoff = self.retry.backoff_min;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.call_once(request.clone()).await {
                Ok(response) => return Ok(response),
                Err(error) if !error.is_retryable() => return Err(error),
                // A full node stays full for a while: only another node helps.
                Err(error @ ClientError::Api(ApiError::StorageFull { .. })) if self.addrs.len() == 1 => {
                    return Err(error)
                }
                Err(error) => error,
            };
            tracing::debug!(%error, attempts, kind = request.kind(), "retrying a call");
            self.note_failure(&error).await;
            let (pause, escalate) = retry_pause(&error, backoff);
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ClientError::Exhausted { attempts, last: Box::new(error) });
            }
            tokio::time::sleep(pause).await;
            if escalate {
                backoff = (backoff * 2).min(self.retry.backoff_max);
            }
        }
    }

    /// Creates a session with no agent: a plain replicated event log.
    pub async fn create_session(&self) -> Result<SessionInfo, ClientError> {
        self.create_session_with(None, None).await
    }

    /// Creates a session pinned to the agent's current version, in an environment.
    pub async fn create_session_with(
        &self,
        agent: Option<AgentId>,
        environment: Option<EnvironmentId>,
    ) -> Result<SessionInfo, ClientError> {
        self.create_session_as(SessionId::from_random(random_id()), agent, environment).await
    }

    /// Creates a session with an id the caller chose (retrying it is safe:
    /// a second create of the same id is refused as a duplicate).
    pub async fn create_session_as(
        &self,
        session_id: SessionId,
        agent: Option<AgentId>,
        environment: Option<EnvironmentId>,
    ) -> Result<SessionInfo, ClientError> {
        Ok(self.call(ClientRequest::CreateSession { session_id, agent, environment }).await?.into_session()?)
    }

    /// Resumes a dead-lettered session; returns the sequence number of its
    /// `session.status_rescheduled` event.
    pub async fn retry_session(&self, session_id: SessionId) -> Result<u64, ClientError> {
        Ok(self.call(ClientRequest::RetrySession { session_id }).await?.into_appended()?.0)
    }

    /// Ends a session; returns the sequence number of its `session.status_terminated` event.
    pub async fn terminate_session(&self, session_id: SessionId) -> Result<u64, ClientError> {
        Ok(self.call(ClientRequest::TerminateSession { session_id }).await?.into_appended()?.0)
    }

    /// Sets a secret in a vault (a new vault when `vault_id` is `None`).
    pub async fn put_secret(
        &self,
        vault_id: Option<VaultId>,
        vault_name: String,
        secret_name: String,
        value: String,
    ) -> Result<VaultInfo, ClientError> {
        let vault_id = vault_id.unwrap_or_else(|| VaultId::from_random(random_id()));
        Ok(self.call(ClientRequest::PutSecret { vault_id, vault_name, secret_name, value }).await?.into_vault()?)
    }

    /// Creates an agent (a new id) or adds a version to an existing one.
    pub async fn put_agent(&self, agent_id: Option<AgentId>, spec: AgentSpec) -> Result<Agent, ClientError> {
        let agent_id = agent_id.unwrap_or_else(|| AgentId::from_random(random_id()));
        Ok(self.call(ClientRequest::PutAgent { agent_id, spec }).await?.into_agent()?)
    }

    pub async fn get_agent(&self, agent_id: AgentId) -> Result<Agent, ClientError> {
        Ok(self.call(ClientRequest::GetAgent { agent_id }).await?.into_agent()?)
    }

    pub async fn put_environment(
        &self,
        environment_id: Option<EnvironmentId>,
        spec: EnvironmentSpec,
    ) -> Result<Environment, ClientError> {
        let environment_id = environment_id.unwrap_or_else(|| EnvironmentId::from_random(random_id()));
        Ok(self.call(ClientRequest::PutEnvironment { environment_id, spec }).await?.into_environment()?)
    }

    pub async fn get_session(&self, session_id: SessionId) -> Result<SessionInfo, ClientError> {
        Ok(self.call(ClientRequest::GetSession { session_id }).await?.into_session()?)
    }

    /// Appends an event and returns its sequence number once committed.
    pub async fn append(&self, session_id: SessionId, payload: EventPayload) -> Result<u64, ClientError> {
        let event_id = EventId::from_random(random_id());
        self.append_with_id(session_id, event_id, payload).await
    }

    /// Appends with a caller-chosen idempotency key.
    pub async fn append_with_id(
        &self,
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
    ) -> Result<u64, ClientError> {
        Ok(self.call(ClientRequest::Append { session_id, event_id, payload }).await?.into_appended()?.0)
    }

    /// One page of events with `seq >= from_seq`.
    pub async fn read_events(
        &self,
        session_id: SessionId,
        from_seq: u64,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<Event>, u64), ClientError> {
        let request = ClientRequest::ReadEvents { session_id, from_seq, limit, consistency };
        let response = match consistency {
            // A local read is about one node's replica: do not move elsewhere.
            Consistency::Local => self.call_once(request).await?,
            Consistency::Leader => self.call(request).await?,
        };
        Ok(response.into_events()?)
    }

    /// Every event of a session, read page by page.
    pub async fn read_all(&self, session_id: SessionId, consistency: Consistency) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        let mut next = 1;
        loop {
            let (page, next_seq) =
                self.read_events(session_id, next, agentd_protocol::limits::EVENTS_PER_PAGE_MAX, consistency).await?;
            if page.is_empty() {
                return Ok(events);
            }
            events.extend(page);
            next = next_seq;
        }
    }

    /// Follows a session from `from_seq`: the stream yields batches of events
    /// in order, each exactly once, until the server ends it.
    pub async fn follow(&self, session_id: SessionId, from_seq: u64) -> Result<EventStream, ClientError> {
        let (addr, recv) = self.open(ClientRequest::FollowEvents { session_id, from_seq }).await?;
        Ok(EventStream { addr, recv, next_seq: from_seq.max(1) })
    }

    /// Follows a session from `from_seq`, resuming on another node when the
    /// serving node fails.
    pub fn subscribe(&self, session_id: SessionId, from_seq: u64) -> Subscription<'_> {
        Subscription { client: self, session_id, next_seq: from_seq.max(1), stream: None }
    }

    /// Makes a new API key for `workspace` (admin keys only). The key is
    /// made here and only its hash travels: the returned text is the only
    /// copy, to show once.
    pub async fn create_api_key(
        &self,
        workspace: String,
        name: String,
        role: Role,
    ) -> Result<(String, ApiKeyInfo), ClientError> {
        #[allow(clippy::disallowed_methods, reason = "a key's secret must be unpredictable; the simulator makes none")]
        let secret: [u8; 32] = rand::random();
        let (text, record) = new_api_key(random_id(), secret, name, workspace, role, 0);
        let info = self.call(ClientRequest::PutApiKey { record }).await?.into_api_key()?;
        Ok((text, info))
    }

    /// Every API key of `workspace` (of all of them: `None`); admin keys only.
    pub async fn list_api_keys(&self, workspace: Option<String>) -> Result<Vec<ApiKeyInfo>, ClientError> {
        Ok(self.call(ClientRequest::ListApiKeys { workspace }).await?.into_api_keys()?)
    }

    /// Replaces the approval policy of `workspace` (the key's own: `None`);
    /// admin keys only. `expected_version` makes it conditional.
    pub async fn put_approval_policy(
        &self,
        workspace: Option<String>,
        rules: Vec<agentd_protocol::approval::ApprovalRule>,
        expected_version: Option<u64>,
    ) -> Result<agentd_protocol::approval::ApprovalPolicy, ClientError> {
        let request = ClientRequest::PutApprovalPolicy { workspace, rules, expected_version };
        Ok(self.call(request).await?.into_approval_policy()?)
    }

    pub async fn approval_policy(
        &self,
        workspace: Option<String>,
    ) -> Result<agentd_protocol::approval::ApprovalPolicy, ClientError> {
        Ok(self.call(ClientRequest::GetApprovalPolicy { workspace }).await?.into_approval_policy()?)
    }

    pub async fn revoke_api_key(&self, key_id: ApiKeyId) -> Result<ApiKeyInfo, ClientError> {
        Ok(self.call(ClientRequest::RevokeApiKey { key_id }).await?.into_api_key()?)
    }

    /// A page of the caller's sessions across the cluster.
    pub async fn list_sessions(&self, query: SessionQuery) -> Result<SessionPage, ClientError> {
        Ok(self.call(ClientRequest::ListSessions { query }).await?.into_sessions()?)
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        Ok(self.call(ClientRequest::ClusterStatus).await?.into_cluster_status()?)
    }

    /// Hands the leadership of `group` to its voter `to`; answers the
    /// leader and term once `to` leads. Safe to retry.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(NodeId, u64), ClientError> {
        Ok(self.call(ClientRequest::TransferLeader { group, to }).await?.into_leader_transferred()?)
    }

    /// Moves a replica of `shard` to node `to` (from `from`, or from the
    /// replica on the busiest node); answers once the move is recorded.
    /// Admin keys only. Safe to retry with `from` given; without it, a retry
    /// after the first attempt took effect is refused (`to` holds a replica).
    pub async fn move_shard(&self, shard: ShardId, to: NodeId, from: Option<NodeId>) -> Result<ShardMove, ClientError> {
        let moves = self.call(ClientRequest::MoveShard { shard, to, from }).await?.into_shard_moves()?;
        moves
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Api(ApiError::Internal { message: "the node recorded no move".into() }))
    }

    /// Moves every replica off `node`; answers the moves once recorded
    /// (none when the node holds no replica). Admin keys only. Safe to retry.
    pub async fn drain_node(&self, node: NodeId) -> Result<Vec<ShardMove>, ClientError> {
        Ok(self.call(ClientRequest::DrainNode { node }).await?.into_shard_moves()?)
    }

    /// Forgets `node`, which must hold no replica, for good: its id is
    /// refused from then on and never joins again. Admin keys only. Safe to
    /// retry.
    pub async fn remove_node(&self, node: NodeId) -> Result<(), ClientError> {
        Ok(self.call(ClientRequest::RemoveNode { node }).await?.into_done()?)
    }

    /// Moves replicas so that every node holds within one of an even share;
    /// answers the moves once recorded (with `dry_run`, only planned).
    /// Admin keys only.
    pub async fn rebalance(&self, dry_run: bool) -> Result<Vec<ShardMove>, ClientError> {
        Ok(self.call(ClientRequest::Rebalance { dry_run }).await?.into_shard_moves()?)
    }

    /// What `group` holds, as its leader counts it (admin keys only).
    pub async fn group_stats(&self, group: GroupId) -> Result<GroupStats, ClientError> {
        Ok(self.call(ClientRequest::GroupStats { group }).await?.into_group_stats()?)
    }
}

/// Follows a session across node failures; see [`Client::subscribe`].
pub struct Subscription<'a> {
    client: &'a Client,
    session_id: SessionId,
    next_seq: u64,
    stream: Option<EventStream>,
}

impl Subscription<'_> {
    /// The next batch of events. Reconnects (to another node if needed) and
    /// resumes from the last delivered sequence number on retryable errors,
    /// so batches are gap-free and never repeat an event.
    pub async fn next(&mut self) -> Result<Vec<Event>, ClientError> {
        loop {
            let stream = match self.stream.as_mut() {
                Some(stream) => stream,
                None => match self.client.follow(self.session_id, self.next_seq).await {
                    Ok(stream) => self.stream.insert(stream),
                    Err(error) if error.is_retryable() => {
                        self.client.note_failure(&error).await;
                        tokio::time::sleep(self.client.retry.backoff_max).await;
                        continue;
                    }
                    Err(error) => return Err(error),
                },
            };
            match stream.next().await {
                Some(Ok(events)) => {
                    let fresh: Vec<Event> = events.into_iter().filter(|event| event.seq >= self.next_seq).collect();
                    if let Some(last) = fresh.last() {
                        self.next_seq = last.seq + 1;
                        return Ok(fresh);
                    }
                }
                Some(Err(error)) if error.is_retryable() => {
                    self.client.note_failure(&error).await;
                    self.stream = None;
                }
                Some(Err(error)) => return Err(error),
                None => {
                    // The serving node ended the stream (it is shutting down).
                    self.stream = None;
                    tokio::time::sleep(self.client.retry.backoff_min).await;
                }
            }
        }
    }

    /// The sequence number the next delivered event will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// A live event stream from one node; see [`Client::follow`].
pub struct EventStream {
    addr: String,
    recv: quinn::RecvStream,
    next_seq: u64,
}

impl EventStream {
    /// The next batch, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, ClientError>> {
        match read_frame::<_, ClientResponse>(&mut self.recv, CLIENT_FRAME_BYTES_MAX).await {
            Ok(Some(response)) => Some(match response.into_events() {
                Ok((events, next_seq)) => {
                    self.next_seq = next_seq;
                    Ok(events)
                }
                Err(error) => Err(ClientError::Api(error)),
            }),
            Ok(None) => None,
            Err(error) => Some(Err(ClientError::Transport { addr: self.addr.clone(), message: error.to_string() })),
        }
    }

    /// Where to resume after this stream fails.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// How long to wait before retrying after `error`, and whether the backoff
/// grows for the next attempt. An overloaded node says how long to wait:
/// at least that. A rate limit says when the key's next request is
/// admitted: exactly that, with no further backoff (backing off past the
/// hint left the key's allowance unused and some callers waiting seconds).
pub(crate) fn retry_pause(error: &ClientError, backoff: Duration) -> (Duration, bool) {
    match error {
        ClientError::Api(ApiError::Overloaded { retry_after_ms }) => {
            (backoff.max(Duration::from_millis(*retry_after_ms)), true)
        }
        ClientError::Api(ApiError::RateLimited { retry_after_ms }) => (Duration::from_millis(*retry_after_ms), false),
        _ => (backoff, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_is_waited_out_exactly_and_does_not_grow_the_backoff() {
        let backoff = Duration::from_millis(320);
        let limited = ClientError::Api(ApiError::RateLimited { retry_after_ms: 2 });
        assert_eq!(retry_pause(&limited, backoff), (Duration::from_millis(2), false));
        let overloaded = ClientError::Api(ApiError::Overloaded { retry_after_ms: 50 });
        assert_eq!(retry_pause(&overloaded, backoff), (backoff, true));
        let overloaded = ClientError::Api(ApiError::Overloaded { retry_after_ms: 900 });
        assert_eq!(retry_pause(&overloaded, backoff), (Duration::from_millis(900), true));
        let unavailable = ClientError::Api(ApiError::Unavailable { message: "no leader".into() });
        assert_eq!(retry_pause(&unavailable, backoff), (backoff, true));
    }
}
