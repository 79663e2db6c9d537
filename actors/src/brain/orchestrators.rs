//! One orchestrator actor (ractor) per session with work, on this node.
//!
//! Wakes for a session are messages to its actor, so one session's runs
//! never overlap on a node; runs on different nodes are kept apart by the
//! epoch. The map is this node's own: ractor's name registry is
//! process-wide, and several nodes may share a process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentd_protocol::ids::SessionId;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::orchestrator::{Brain, RunOutcome};

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
}

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
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OrchestratorMessage::Wake => match state.brain.run(state.session_id).await {
                Ok(RunOutcome::Idle) => tracing::debug!(session = %state.session_id, "orchestrator idle"),
                Ok(RunOutcome::Fenced) => tracing::info!(session = %state.session_id, "orchestrator fenced"),
                // Errors end this run only; the next wake tries again.
                Err(error) => tracing::warn!(session = %state.session_id, %error, "orchestrator run failed"),
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
        let existing = self.actors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&session_id).cloned();
        if let Some(actor) = existing {
            if actor.cast(OrchestratorMessage::Wake).is_ok() {
                return;
            }
        }
        let state = OrchestratorState { brain: self.brain.clone(), session_id };
        match Actor::spawn(None, OrchestratorActor, state).await {
            Ok((actor, _)) => {
                let _ = actor.cast(OrchestratorMessage::Wake);
                self.actors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(session_id, actor);
            }
            Err(error) => tracing::error!(%session_id, %error, "cannot start an orchestrator"),
        }
    }

    /// Stops every orchestrator of this node.
    pub fn stop_all(&self) {
        for (_, actor) in self.actors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain() {
            actor.stop(None);
        }
    }
}
