//! Wires the brain into a node: the session log over the local shard
//! replicas, sandboxes on this host, and the watchers that wake sessions
//! when a client writes to them or when this node becomes a shard leader.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_actors::brain::{Hands, Orchestrators, SessionLog};
use agentd_actors::sandbox::{
    egress, ContainerRuntime, Limits, NamespaceSandbox, OciSandbox, Sandbox, SandboxError, Secret, ToolCall,
    ToolOutput, OCI_ROOTFS_DEFAULT,
};
use agentd_actors::session::Sessions;
use agentd_protocol::agent::{AgentRef, AgentSpec, EnvironmentSpec};
use agentd_protocol::api::{ClientRequest, ClientResponse, SessionInfo, SessionStatus};
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::{EventId, GroupId, SessionId, ShardId};
use agentd_protocol::limits::{EVENTS_PER_PAGE_MAX, SANDBOX_HEALTH_TIMEOUT_MS};
use agentd_protocol::ApiError;
use agentd_raft::host::{GroupHandle, RaftHost};
use agentd_raft::placement;
use agentd_raft::types::{Command, CommandResponse};
use futures_util::future::BoxFuture;
use tokio::sync::broadcast::error::RecvError;

use crate::router::Router;

/// The longest one session-log or metadata call of the brain may take: a
/// call that cannot finish (a leader that cannot confirm itself, a read
/// that waits on an apply that does not come) fails instead of holding the
/// session's orchestrator forever; the orchestrator retries with backoff.
const BRAIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, call: impl std::future::Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
    tokio::time::timeout(BRAIN_CALL_TIMEOUT, call).await.unwrap_or_else(|_| {
        Err(ApiError::Unavailable { message: format!("{what} did not finish within {BRAIN_CALL_TIMEOUT:?}") })
    })
}

/// How often shard leadership is checked for new watchers.
const LEADERSHIP_POLL: Duration = Duration::from_millis(500);

/// Told of every epoch claim and runtime append that committed: the
/// simulator's epoch checker listens here.
pub trait LogObserver: Send + Sync + 'static {
    fn claimed(&self, session_id: SessionId, epoch: u64);
    fn appended(&self, session_id: SessionId, epoch: u64, seq: u64);
}

/// The session log, read from and written to the shard leader on this node.
pub struct LocalSessionLog {
    router: Router,
    // Agent versions never change once written, so they are cached.
    agents: Mutex<HashMap<AgentRef, AgentSpec>>,
    observer: Option<Arc<dyn LogObserver>>,
}

impl LocalSessionLog {
    pub fn new(router: Router) -> Self {
        Self { router, agents: Mutex::new(HashMap::new()), observer: None }
    }

    pub fn with_observer(mut self, observer: Option<Arc<dyn LogObserver>>) -> Self {
        self.observer = observer;
        self
    }

    /// The session's shard, which this node must lead.
    fn group(&self, session_id: SessionId) -> Result<GroupHandle, ApiError> {
        let shard = self.router.shard_of(session_id)?;
        let group = self
            .router
            .host()
            .group(GroupId::Shard(shard))
            .ok_or_else(|| ApiError::NotReplica { group: shard.to_string() })?;
        if !group.raft.is_leader() {
            // `None` while this node may still be becoming the leader (or
            // no leader is known): the orchestrator retries. Another known
            // leader wakes the session itself.
            let leader = self.router.leader_of(&group).filter(|(leader, _)| *leader != self.router.host().node_id());
            return Err(ApiError::NotLeader { leader });
        }
        Ok(group)
    }
}

fn internal(error: agentd_raft::Error) -> ApiError {
    ApiError::Internal { message: error.to_string() }
}

impl SessionLog for LocalSessionLog {
    fn session(&self, session_id: SessionId) -> BoxFuture<'_, Result<SessionInfo, ApiError>> {
        Box::pin(bounded("reading the session", async move {
            let group = self.group(session_id)?;
            group
                .state
                .session(session_id)
                .map_err(internal)?
                .ok_or_else(|| ApiError::NotFound { what: format!("session {session_id}") })
        }))
    }

    fn events(&self, session_id: SessionId) -> BoxFuture<'_, Result<Vec<Event>, ApiError>> {
        Box::pin(bounded("reading the session's events", async move {
            let group = self.group(session_id)?;
            let mut events = Vec::new();
            loop {
                let next = events.last().map_or(1, |event: &Event| event.seq + 1);
                let page = group.state.events(session_id, next, EVENTS_PER_PAGE_MAX).map_err(internal)?;
                if page.is_empty() {
                    return Ok(events);
                }
                events.extend(page);
            }
        }))
    }

    fn claim_epoch(&self, session_id: SessionId) -> BoxFuture<'_, Result<u64, ApiError>> {
        Box::pin(bounded("claiming an epoch", async move {
            match placement::propose(&self.group(session_id)?, Command::ClaimEpoch { session_id }).await? {
                CommandResponse::Epoch(epoch) => {
                    if let Some(observer) = &self.observer {
                        observer.claimed(session_id, epoch);
                    }
                    Ok(epoch)
                }
                other => Err(ApiError::Internal { message: format!("unexpected {other:?}") }),
            }
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
            let command = Command::Append {
                session_id,
                event_id,
                payload,
                processed_at_ms: self.router.now_ms(),
                epoch: Some(epoch),
            };
            match placement::propose(&self.group(session_id)?, command).await? {
                CommandResponse::Appended { seq, duplicate } => {
                    if let (Some(observer), false) = (&self.observer, duplicate) {
                        observer.appended(session_id, epoch, seq);
                    }
                    Ok(seq)
                }
                other => Err(ApiError::Internal { message: format!("unexpected {other:?}") }),
            }
        }))
    }

    fn agent(&self, session: &SessionInfo) -> BoxFuture<'_, Result<AgentSpec, ApiError>> {
        let pinned = session.agent;
        Box::pin(bounded("reading the agent", async move {
            let pinned =
                pinned.ok_or_else(|| ApiError::InvalidRequest { message: "the session has no agent".into() })?;
            if let Some(spec) = self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&pinned) {
                return Ok(spec.clone());
            }
            let spec = match self.router.handle(ClientRequest::GetAgent { agent_id: pinned.id }, false).await {
                ClientResponse::Agent(agent) => agent.version(pinned.version).cloned().ok_or_else(|| {
                    ApiError::NotFound { what: format!("version {} of agent {}", pinned.version, pinned.id) }
                })?,
                ClientResponse::Error(error) => return Err(error),
                other => return Err(ApiError::Internal { message: format!("unexpected {other:?}") }),
            };
            self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(pinned, spec.clone());
            Ok(spec)
        }))
    }
}

/// Makes a session's sandbox: the seam between the brain's hands and the
/// sandbox drivers. Production uses [`HostProvisioner`]; the simulator a
/// fake with an effect ledger.
pub trait Provisioner: Send + Sync + 'static {
    /// A sandbox for `session` whose directory on the host is `root`, with
    /// the driver its environment names (`None`: the default).
    fn provision(
        &self,
        session: &SessionInfo,
        root: PathBuf,
        limits: Limits,
        driver: Option<String>,
    ) -> BoxFuture<'_, Result<Arc<dyn Sandbox>, SandboxError>>;
}

/// The real sandbox drivers on this host.
pub struct HostProvisioner {
    /// Where session sandboxes live (the microvm driver keeps its spares here).
    root: PathBuf,
    /// The microvm driver's image and booted spares, prepared at its first use.
    microvm: tokio::sync::OnceCell<Arc<crate::hands::MicrovmPool>>,
}

impl HostProvisioner {
    pub fn new(root: PathBuf) -> Self {
        Self { root, microvm: tokio::sync::OnceCell::new() }
    }
}

impl Provisioner for HostProvisioner {
    fn provision(
        &self,
        _session: &SessionInfo,
        root: PathBuf,
        limits: Limits,
        driver: Option<String>,
    ) -> BoxFuture<'_, Result<Arc<dyn Sandbox>, SandboxError>> {
        Box::pin(async move {
            let sandbox: Arc<dyn Sandbox> = match driver.as_deref() {
                Some("oci") => Arc::new(OciSandbox::provision(root, limits, PathBuf::from(OCI_ROOTFS_DEFAULT)).await?),
                Some("gvisor") => Arc::new(
                    OciSandbox::provision_with(
                        ContainerRuntime::Gvisor,
                        root,
                        limits,
                        PathBuf::from(OCI_ROOTFS_DEFAULT),
                    )
                    .await?,
                ),
                Some("microvm") => {
                    let spares = self.root.join(".microvm-spares");
                    let pool = self.microvm.get_or_try_init(|| crate::hands::MicrovmPool::from_env(spares)).await?;
                    Arc::new(pool.provision(root, limits).await?)
                }
                _ => Arc::new(NamespaceSandbox::provision(root, limits).await?),
            };
            Ok(sandbox)
        })
    }
}

/// Sandboxes on this host, one per session, made on first use.
/// Their directories live under `root`; nodes that share `root` (one host)
/// share workspaces and idempotency ledgers, so a session moved to another
/// node finds its workspace and does not repeat a recorded tool call.
pub struct LocalHands {
    root: PathBuf,
    router: Router,
    provisioner: Arc<dyn Provisioner>,
    sandboxes: tokio::sync::Mutex<HashMap<SessionId, HeldSandbox>>,
}

/// A session's live sandbox and when a call last used it.
struct HeldSandbox {
    sandbox: Arc<dyn Sandbox>,
    last_used: tokio::time::Instant,
}

impl LocalHands {
    pub fn new(root: PathBuf, router: Router, provisioner: Arc<dyn Provisioner>) -> Self {
        Self { root, router, provisioner, sandboxes: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Destroys every sandbox no call has used for `idle` (and none is
    /// using now), and every other unused one that reports itself unhealthy;
    /// the session's next call gets a fresh one, with the same workspace and
    /// ledger on this host. Returns how many were destroyed.
    pub async fn reap_idle(&self, idle: Duration) -> usize {
        let now = tokio::time::Instant::now();
        let (doomed, unused_recently) = {
            let mut sandboxes = self.sandboxes.lock().await;
            // A running call holds a clone of the sandbox.
            let (idle_held, recent_held): (Vec<_>, Vec<_>) = sandboxes
                .iter()
                .filter(|(_, held)| Arc::strong_count(&held.sandbox) == 1)
                .partition(|(_, held)| now.duration_since(held.last_used) >= idle);
            let recent: Vec<(SessionId, Arc<dyn Sandbox>)> =
                recent_held.into_iter().map(|(session_id, held)| (*session_id, held.sandbox.clone())).collect();
            let idle_sessions: Vec<SessionId> = idle_held.into_iter().map(|(session_id, _)| *session_id).collect();
            let doomed: Vec<(SessionId, Arc<dyn Sandbox>)> = idle_sessions
                .into_iter()
                .filter_map(|session_id| sandboxes.remove(&session_id).map(|held| (session_id, held.sandbox)))
                .collect();
            (doomed, recent)
        };
        for (session_id, sandbox) in &doomed {
            match sandbox.destroy().await {
                Ok(()) => tracing::info!(%session_id, ?idle, "destroyed an idle sandbox"),
                Err(error) => tracing::warn!(%session_id, %error, "destroying an idle sandbox failed"),
            }
            metrics::counter!("agentd_sandboxes_reaped_total").increment(1);
        }
        let checks = unused_recently.into_iter().map(|(session_id, sandbox)| async move {
            let health = checked_health(sandbox.as_ref()).await;
            (session_id, sandbox, health)
        });
        let mut unhealthy = 0;
        for (session_id, sandbox, health) in futures_util::future::join_all(checks).await {
            if let Err(error) = health {
                if self.discard(session_id, &sandbox, &error).await {
                    metrics::counter!("agentd_sandboxes_reaped_total").increment(1);
                    unhealthy += 1;
                }
            }
        }
        doomed.len() + unhealthy
    }

    /// Removes `sandbox` from the held ones if it is still the session's, and destroys
    /// it, saying why (`error`, from its health check). Returns whether it was held.
    async fn discard(&self, session_id: SessionId, sandbox: &Arc<dyn Sandbox>, error: &SandboxError) -> bool {
        {
            let mut sandboxes = self.sandboxes.lock().await;
            if !sandboxes.get(&session_id).is_some_and(|held| Arc::ptr_eq(&held.sandbox, sandbox)) {
                // Another call replaced it already.
                return false;
            }
            sandboxes.remove(&session_id);
        }
        tracing::warn!(%session_id, %error, "a session's sandbox is unhealthy; destroying it");
        if let Err(error) = sandbox.destroy().await {
            tracing::debug!(%session_id, %error, "destroying an unhealthy sandbox failed");
        }
        true
    }

    /// The session's environment (`None`: it has none). A lookup that
    /// fails or times out fails the tool call rather than running it
    /// without the environment's limits and credentials.
    async fn environment(&self, session: &SessionInfo) -> Result<Option<EnvironmentSpec>, SandboxError> {
        let Some(environment_id) = session.environment else { return Ok(None) };
        let lookup = async {
            match self.router.handle(ClientRequest::GetEnvironment { environment_id }, false).await {
                ClientResponse::Environment(environment) => Ok(environment.latest().cloned()),
                ClientResponse::Error(error) => Err(error),
                other => Err(ApiError::Internal { message: format!("unexpected {other:?}") }),
            }
        };
        bounded("reading the environment", lookup)
            .await
            .map_err(|error| SandboxError::Unavailable(format!("environment {environment_id}: {error}")))
    }

    /// Whether the session is terminated now (not when the calling run started).
    async fn terminated(&self, session_id: SessionId) -> Result<bool, SandboxError> {
        let lookup = async {
            match self.router.handle(ClientRequest::GetSession { session_id }, false).await {
                ClientResponse::Session(info) => Ok(info.status == SessionStatus::Terminated),
                ClientResponse::Error(error) => Err(error),
                other => Err(ApiError::Internal { message: format!("unexpected {other:?}") }),
            }
        };
        bounded("reading the session", lookup)
            .await
            .map_err(|error| SandboxError::Unavailable(format!("session {session_id}: {error}")))
    }

    /// The secrets of the environment's vaults, opened.
    fn secrets(&self, environment: Option<&EnvironmentSpec>) -> Result<Vec<Secret>, SandboxError> {
        let Some(environment) = environment else { return Ok(Vec::new()) };
        let Some(metadata) = self.router.host().group(GroupId::Metadata) else { return Ok(Vec::new()) };
        let mut secrets = Vec::new();
        for &vault_id in &environment.vaults {
            let vault = metadata
                .state
                .vault(vault_id)
                .map_err(|error| SandboxError::Io(format!("reading vault {vault_id}: {error}")))?
                .ok_or_else(|| SandboxError::Unavailable(format!("vault {vault_id} does not exist")))?;
            for (name, sealed) in vault.secrets {
                let value = self
                    .router
                    .secrets_key()
                    .open(&crate::vault::seal_context(&vault_id, &name), &sealed)
                    .map_err(|error| SandboxError::Unavailable(format!("secret {name} of {vault_id}: {error}")))?;
                secrets.push(Secret { name, value });
            }
        }
        Ok(secrets)
    }

    /// The session's sandbox: the held one if it is healthy, else a fresh one (cattle:
    /// a sandbox that died between calls is replaced, and the call does not fail).
    async fn sandbox(
        &self,
        session: &SessionInfo,
        environment: Option<&EnvironmentSpec>,
    ) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let session_id = session.session_id;
        // The health check runs without the map's lock, which every session's calls share.
        let held = self.sandboxes.lock().await.get(&session_id).map(|held| held.sandbox.clone());
        if let Some(sandbox) = held {
            match checked_health(sandbox.as_ref()).await {
                Ok(()) => {
                    if let Some(held) = self.sandboxes.lock().await.get_mut(&session_id) {
                        held.last_used = tokio::time::Instant::now();
                    }
                    return Ok(sandbox);
                }
                Err(error) => {
                    if self.discard(session_id, &sandbox, &error).await {
                        metrics::counter!("agentd_sandboxes_replaced_total").increment(1);
                    }
                }
            }
        }
        let mut sandboxes = self.sandboxes.lock().await;
        if let Some(held) = sandboxes.get_mut(&session_id) {
            // Provisioned by a concurrent call of the session while the lock was free.
            held.last_used = tokio::time::Instant::now();
            return Ok(held.sandbox.clone());
        }
        // A run that started before the session was terminated must not bring
        // back the sandbox (and directory) that the termination released.
        if self.terminated(session.session_id).await? {
            return Err(SandboxError::Unavailable(format!("session {} is terminated", session.session_id)));
        }
        let root = self.root.join(session.session_id.to_string());
        let limits = limits_of(environment);
        let driver = environment.map(|environment| environment.driver.clone());
        let sandbox = self.provisioner.provision(session, root, limits, driver).await?;
        metrics::counter!("agentd_sandboxes_provisioned_total").increment(1);
        let held = HeldSandbox { sandbox: sandbox.clone(), last_used: tokio::time::Instant::now() };
        sandboxes.insert(session.session_id, held);
        Ok(sandbox)
    }
}

impl Hands for LocalHands {
    fn execute(&self, session: &SessionInfo, mut call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        let session = session.clone();
        Box::pin(async move {
            // Credentials are opened here, for this call only; the sandbox
            // scrubs them from the output before anything records it.
            let environment = self.environment(&session).await?;
            call.secrets = self.secrets(environment.as_ref())?;
            let sandbox = self.sandbox(&session, environment.as_ref()).await?;
            let result = sandbox.execute(call).await;
            if let Some(held) = self.sandboxes.lock().await.get_mut(&session.session_id) {
                held.last_used = tokio::time::Instant::now();
            }
            if let Err(SandboxError::Crashed(_)) = &result {
                // Cattle: the next call gets a fresh sandbox.
                self.sandboxes.lock().await.remove(&session.session_id);
            }
            result
        })
    }

    fn on_turn_start(&self, session: &SessionInfo) -> BoxFuture<'_, Result<(), SandboxError>> {
        let session = session.clone();
        Box::pin(async move {
            let environment = self.environment(&session).await?;
            if environment.as_ref().is_some_and(|environment| environment.eager_provisioning) {
                self.sandbox(&session, environment.as_ref()).await?;
            }
            Ok(())
        })
    }

    /// Destroys the session's sandbox, if this node holds one, and removes its
    /// directory (workspace, ledger, a microVM's disk): a terminated session
    /// never calls a tool again.
    fn release(&self, session: &SessionInfo) -> BoxFuture<'_, ()> {
        let session_id = session.session_id;
        Box::pin(async move {
            let held = self.sandboxes.lock().await.remove(&session_id);
            if let Some(held) = held {
                if let Err(error) = held.sandbox.destroy().await {
                    tracing::warn!(%session_id, %error, "destroying a terminated session's sandbox failed");
                }
                metrics::counter!("agentd_sandboxes_released_total").increment(1);
            }
            let root = self.root.join(session_id.to_string());
            if std::fs::symlink_metadata(&root).is_err() {
                // Nothing to remove (the simulator's sandboxes have no directory).
                return;
            }
            let removal = root.clone();
            let removed = tokio::task::spawn_blocking(move || egress::remove_session_directory(&removal))
                .await
                .unwrap_or_else(|error| Err(std::io::Error::other(error)));
            match removed {
                Ok(()) => tracing::info!(%session_id, "removed a terminated session's sandbox directory"),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%session_id, %error, root = %root.display(), "cannot remove a terminated session's sandbox directory")
                }
            }
        })
    }
}

/// A sandbox's limits: the node's defaults, with what the environment sets.
fn limits_of(environment: Option<&EnvironmentSpec>) -> Limits {
    let mut limits = Limits::default();
    let Some(environment) = environment else { return limits };
    limits.network = environment.network.clone();
    limits.wall_clock_ms = environment.tool_timeout_ms;
    let resources = &environment.resources;
    if let Some(memory_mib) = resources.memory_mib {
        limits.memory_bytes_max = memory_mib * 1024 * 1024;
    }
    limits.pids_max = resources.processes_max.unwrap_or(limits.pids_max);
    limits.cpu_millicores = resources.cpu_millicores.unwrap_or(limits.cpu_millicores);
    limits
}

/// The sandbox's health, an answer later than `SANDBOX_HEALTH_TIMEOUT_MS` counting as unhealthy.
async fn checked_health(sandbox: &dyn Sandbox) -> Result<(), SandboxError> {
    let timeout = Duration::from_millis(SANDBOX_HEALTH_TIMEOUT_MS);
    tokio::time::timeout(timeout, sandbox.health()).await.unwrap_or_else(|_| {
        Err(SandboxError::Crashed(format!("no answer to a health check within {SANDBOX_HEALTH_TIMEOUT_MS} ms")))
    })
}

/// Destroys idle sandboxes every `idle / 4` (at least every second).
pub async fn reap_idle_sandboxes(hands: Arc<LocalHands>, idle: Duration) {
    let period = (idle / 4).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        hands.reap_idle(idle).await;
    }
}

/// Keeps one watcher per shard this node leads. A new watcher first wakes
/// every session of its shard that has an agent (the planner finds the
/// sessions that were running when the old leader went away), then wakes a
/// session whenever a client writes to it.
pub async fn drive_shards(host: RaftHost, orchestrators: Orchestrators, sessions: Sessions) {
    let watchers: Mutex<HashMap<ShardId, tokio::task::JoinHandle<()>>> = Mutex::new(HashMap::new());
    loop {
        for group in host.groups() {
            let GroupId::Shard(shard) = group.group else { continue };
            if !group.raft.is_leader() {
                continue;
            }
            let mut watchers = watchers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if watchers.get(&shard).is_some_and(|watcher| !watcher.is_finished()) {
                continue;
            }
            watchers.insert(shard, tokio::spawn(watch_shard(group, orchestrators.clone(), sessions.clone())));
        }
        tokio::time::sleep(LEADERSHIP_POLL).await;
    }
}

async fn watch_shard(group: GroupHandle, orchestrators: Orchestrators, sessions: Sessions) {
    let mut live = group.state.subscribe();
    wake_all(&group, &orchestrators).await;
    let mut leadership = tokio::time::interval(LEADERSHIP_POLL);
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) => {
                    sessions.applied(&event);
                    if event.payload == EventPayload::SessionStatusTerminated {
                        // Not through the session's actor, which may be busy in the
                        // very tool call that the sandbox's destruction stops.
                        let (orchestrators, session_id) = (orchestrators.clone(), event.session_id);
                        tokio::spawn(async move { orchestrators.release(session_id).await });
                    } else if event.payload.is_user_event() || event.payload == EventPayload::SessionStatusRescheduled {
                        orchestrators.wake(event.session_id).await;
                    }
                }
                Err(RecvError::Lagged(_)) => wake_all(&group, &orchestrators).await,
                Err(RecvError::Closed) => return,
            },
            _ = leadership.tick() => {
                if !group.raft.is_leader() {
                    return;
                }
            }
        }
    }
}

async fn wake_all(group: &GroupHandle, orchestrators: &Orchestrators) {
    let Ok(sessions) = group.state.session_ids() else { return };
    tracing::debug!(group = %group.group, sessions = sessions.len(), "waking every agent session of a newly led shard");
    for session_id in sessions {
        let Ok(Some(info)) = group.state.session(session_id) else { continue };
        if info.agent.is_some() && info.status != SessionStatus::Terminated {
            tracing::debug!(%session_id, status = ?info.status, last_seq = info.last_seq, "waking");
            orchestrators.wake(session_id).await;
        }
    }
}
