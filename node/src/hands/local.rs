//! The node's hands: one sandbox per session on this host, made at the
//! first tool call (or when a turn starts, for eager environments), replaced
//! when it dies, destroyed when idle or when its session is terminated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentd_actors::brain::Hands;
use agentd_actors::sandbox::{egress, Limits, Sandbox, SandboxError, Secret, ToolCall, ToolOutput};
use agentd_protocol::agent::EnvironmentSpec;
use agentd_protocol::api::{SessionInfo, SessionStatus};
use agentd_protocol::ids::{GroupId, SessionId, VaultId};
use agentd_protocol::limits::SANDBOX_HEALTH_TIMEOUT_MS;
use futures_util::future::BoxFuture;

use super::Provisioner;
use crate::leader::bounded;
use crate::service::{Caller, Service};

/// Sandboxes on this host, one per session, made on first use.
/// Their directories live under `root`; nodes that share `root` (one host)
/// share workspaces and idempotency ledgers, so a session moved to another
/// node finds its workspace and does not repeat a recorded tool call.
pub struct LocalHands {
    root: PathBuf,
    service: Service,
    provisioner: Arc<dyn Provisioner>,
    sandboxes: tokio::sync::Mutex<HashMap<SessionId, HeldSandbox>>,
}

/// A session's live sandbox and when a call last used it.
struct HeldSandbox {
    sandbox: Arc<dyn Sandbox>,
    last_used: tokio::time::Instant,
}

impl LocalHands {
    pub fn new(root: PathBuf, service: Service, provisioner: Arc<dyn Provisioner>) -> Self {
        Self { root, service, provisioner, sandboxes: tokio::sync::Mutex::new(HashMap::new()) }
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
        let lookup = self.service.environment(&Caller::Node, environment_id);
        bounded("reading the environment", lookup)
            .await
            .map(|environment| environment.latest().cloned())
            .map_err(|error| SandboxError::Unavailable(format!("environment {environment_id}: {error}")))
    }

    /// Whether the session is terminated now (not when the calling run started).
    async fn terminated(&self, session_id: SessionId) -> Result<bool, SandboxError> {
        let lookup = self.service.session(&Caller::Node, session_id);
        bounded("reading the session", lookup)
            .await
            .map(|info| info.status == SessionStatus::Terminated)
            .map_err(|error| SandboxError::Unavailable(format!("session {session_id}: {error}")))
    }

    /// The secrets of the environment's vaults and of the session's own
    /// (`vault_ids`), opened.
    fn secrets(
        &self,
        session: &SessionInfo,
        environment: Option<&EnvironmentSpec>,
    ) -> Result<Vec<Secret>, SandboxError> {
        let Some(metadata) = self.service.host().group(GroupId::Metadata) else { return Ok(Vec::new()) };
        let mut vaults: Vec<VaultId> = environment.map(|environment| environment.vaults.clone()).unwrap_or_default();
        let shard = self.service.host().group(GroupId::Shard(session.shard));
        if let Some(view) = shard
            .map(|group| group.state.session_view(session.session_id))
            .transpose()
            .map_err(|error| SandboxError::Io(format!("reading session {}: {error}", session.session_id)))?
            .flatten()
        {
            vaults.extend(
                view.details.vault_ids.iter().filter(|vault| !vaults.contains(vault)).copied().collect::<Vec<_>>(),
            );
        }
        let mut secrets = Vec::new();
        for vault_id in vaults {
            let vault = metadata
                .state
                .vault(vault_id)
                .map_err(|error| SandboxError::Io(format!("reading vault {vault_id}: {error}")))?
                .ok_or_else(|| SandboxError::Unavailable(format!("vault {vault_id} does not exist")))?;
            for (name, sealed) in vault.secrets {
                let value = self
                    .service
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
        let driver = environment
            .map(EnvironmentSpec::driver)
            .transpose()
            .map_err(|error| SandboxError::Unavailable(error.to_string()))?
            .unwrap_or_default();
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
            call.secrets = self.secrets(&session, environment.as_ref())?;
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
            #[allow(
                clippy::disallowed_methods,
                reason = "reached only with a directory on the host, which no simulated sandbox has"
            )]
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
