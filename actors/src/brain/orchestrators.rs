//! One orchestrator actor (ractor) per session with work, on this node.
//!
//! Wakes for a session are messages to its actor, so one session's runs
//! never overlap on a node; runs on different nodes are kept apart by the
//! epoch. The map is this node's own: ractor's name registry is
//! process-wide, and several nodes may share a process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use agentd_protocol::ids::SessionId;
use agentd_protocol::sync::lock;
use agentd_protocol::ApiError;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::orchestrator::{Brain, BrainError};

/// Messages of a session's orchestrator.
#[derive(Debug)]
pub enum OrchestratorMessage {
    /// Look at the log and do whatever is to be done.
    Wake,
}

struct OrchestratorActor;

struct OrchestratorState {
    brain: Arc<Brain>,
    session_id: SessionId,
    /// Failed runs in a row; the next retry waits longer.
    failures: u32,
}

/// The first retry of a failed run waits this long; each further one twice as long.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Actor for OrchestratorActor {
    type Msg = OrchestratorMessage;
    type State = OrchestratorState;
    type Arguments = OrchestratorState;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OrchestratorMessage::Wake => match state.brain.run(state.session_id).await {
                Ok(outcome) => {
                    state.failures = 0;
                    tracing::debug!(session = %state.session_id, ?outcome, "orchestrator run ended");
                }
                // Another node leads the session's shard now; it wakes the session.
                Err(BrainError::Api(
                    error @ (ApiError::NotLeader { leader: Some(_) } | ApiError::NotReplica { .. }),
                )) => {
                    tracing::debug!(session = %state.session_id, %error, "not this node's session any more");
                    state.failures = 0;
                }
                // A plain event log: no agent, nothing for an orchestrator to do.
                Err(BrainError::NoAgent(_)) => state.failures = 0,
                // Anything else (no leader known yet, perhaps this node on its
                // way to leading; a metadata leader still being elected; a
                // storage hiccup) is retried with backoff: nothing else
                // would wake this session again.
                Err(error) => {
                    let backoff = RETRY_BACKOFF_MIN.saturating_mul(1 << state.failures.min(10)).min(RETRY_BACKOFF_MAX);
                    state.failures += 1;
                    tracing::warn!(session = %state.session_id, %error, ?backoff, "orchestrator run failed; retrying");
                    myself.send_after(backoff, || OrchestratorMessage::Wake);
                }
            },
        }
        Ok(())
    }
}

/// This node's orchestrators. Cheap to clone.
#[derive(Clone)]
pub struct Orchestrators {
    brain: Arc<Brain>,
    actors: Arc<Mutex<HashMap<SessionId, ActorRef<OrchestratorMessage>>>>,
}

impl Orchestrators {
    pub fn new(brain: Arc<Brain>) -> Self {
        Self { brain, actors: Arc::default() }
    }

    /// Wakes a session's orchestrator, starting one if needed.
    pub async fn wake(&self, session_id: SessionId) {
        let existing = lock(&self.actors).get(&session_id).cloned();
        if let Some(actor) = existing {
            if actor.cast(OrchestratorMessage::Wake).is_ok() {
                tracing::debug!(%session_id, "woke the session's orchestrator");
                return;
            }
        }
        tracing::debug!(%session_id, "starting an orchestrator");
        let state = OrchestratorState { brain: self.brain.clone(), session_id, failures: 0 };
        match Actor::spawn(None, OrchestratorActor, state).await {
            Ok((actor, _)) => {
                let _ = actor.cast(OrchestratorMessage::Wake);
                lock(&self.actors).insert(session_id, actor);
            }
            Err(error) => tracing::error!(%session_id, %error, "cannot start an orchestrator"),
        }
    }

    /// Releases a terminated session's sandbox now, even while its orchestrator
    /// is busy in a tool call (which the sandbox's destruction then ends).
    pub async fn release(&self, session_id: SessionId) {
        self.brain.release(session_id).await;
    }

    /// Stops every orchestrator of this node.
    pub fn stop_all(&self) {
        for (_, actor) in lock(&self.actors).drain() {
            actor.stop(None);
        }
    }
}
