use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentd_protocol::api::SessionInfo;
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::sync::lock;
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use ractor::{Actor, ActorRef, RpcReplyPort};

use super::actor::{SessionActor, SessionMessage, SessionState};

type ActorMap = Arc<Mutex<HashMap<SessionId, ActorRef<SessionMessage>>>>;

/// This node's active session actors (its own map: ractor's registry is
/// process-wide). Cheap to clone.
#[derive(Clone, Default)]
pub struct Sessions {
    actors: ActorMap,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The session's actor, activated on demand on this (leader) node.
    async fn actor(&self, group: &GroupHandle, session_id: SessionId) -> Result<ActorRef<SessionMessage>, ApiError> {
        if let Some(actor) = lock(&self.actors).get(&session_id) {
            return Ok(actor.clone());
        }
        let actors = self.actors.clone();
        let on_stop = Box::new(move |session_id| {
            lock(&actors).remove(&session_id);
        });
        let state = SessionState::new(group.clone(), session_id, on_stop);
        let (actor, _) = Actor::spawn(None, SessionActor, state)
            .await
            .map_err(|error| ApiError::Internal { message: format!("cannot activate session actor: {error}") })?;
        let mut actors = lock(&self.actors);
        // Another request may have activated one meanwhile: keep the first.
        let kept = actors.entry(session_id).or_insert_with(|| actor.clone()).clone();
        if kept.get_id() != actor.get_id() {
            actor.stop(None);
        }
        Ok(kept)
    }

    async fn call<T, F>(&self, group: &GroupHandle, session_id: SessionId, message: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(RpcReplyPort<Result<T, ApiError>>) -> SessionMessage,
    {
        let actor = self.actor(group, session_id).await?;
        match actor.call(message, None).await {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(ApiError::Unavailable { message: format!("the actor of session {session_id} stopped; retry") }),
        }
    }

    pub async fn append(
        &self,
        group: &GroupHandle,
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
    ) -> Result<(u64, bool), ApiError> {
        self.call(group, session_id, |reply| SessionMessage::Append { event_id, payload, processed_at_ms, reply }).await
    }

    pub async fn read(
        &self,
        group: &GroupHandle,
        session_id: SessionId,
        from_seq: u64,
        limit: u32,
    ) -> Result<(Vec<Event>, u64), ApiError> {
        self.call(group, session_id, |reply| SessionMessage::Read { from_seq, limit, reply }).await
    }

    pub async fn info(&self, group: &GroupHandle, session_id: SessionId) -> Result<SessionInfo, ApiError> {
        self.call(group, session_id, |reply| SessionMessage::Info { reply }).await
    }

    /// Tells an active actor that one of its session's events was applied.
    pub fn applied(&self, event: &Event) {
        let actor = lock(&self.actors).get(&event.session_id).cloned();
        if let Some(actor) = actor {
            let _ = actor.cast(SessionMessage::Applied(event.clone()));
        }
    }

    /// How many session actors are active on this node.
    pub fn active(&self) -> usize {
        lock(&self.actors).len()
    }

    pub fn stop_all(&self) {
        for (_, actor) in lock(&self.actors).drain() {
            actor.stop(None);
        }
    }
}
