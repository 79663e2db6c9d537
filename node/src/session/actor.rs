use std::collections::VecDeque;
use std::time::Duration;

use agentd_protocol::api::SessionInfo;
use agentd_protocol::command::Command;
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::limits::{EVENTS_PER_PAGE_MAX, SESSION_TAIL_EVENTS_MAX};
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use agentd_raft::propose;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
// Simulated time under the simulator (a turmoil host's runtime), the
// monotonic clock in production: never the wall clock.
use tokio::time::Instant;

/// How long an actor stays active without requests.
pub(crate) const PASSIVATE_AFTER: Duration = Duration::from_secs(60);
/// How often an actor checks whether it is idle.
const IDLE_CHECK: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum SessionMessage {
    /// A client's event; answered with (seq, duplicate).
    Append {
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
        reply: RpcReplyPort<Result<(u64, bool), ApiError>>,
    },
    /// Events with `seq >= from_seq`; answered with (events, next_seq).
    Read {
        from_seq: u64,
        limit: u32,
        reply: RpcReplyPort<Result<(Vec<Event>, u64), ApiError>>,
    },
    Info {
        reply: RpcReplyPort<Result<SessionInfo, ApiError>>,
    },
    /// An event of this session was applied on this node.
    Applied(Event),
    /// Passivate if idle.
    IdleCheck,
}

pub(crate) struct SessionActor;

pub(crate) struct SessionState {
    pub(crate) group: GroupHandle,
    pub(crate) session_id: SessionId,
    pub(crate) on_stop: Box<dyn Fn(SessionId) + Send + Sync>,
    tail: VecDeque<Event>,
    last_request: Instant,
}

impl SessionState {
    pub(crate) fn new(
        group: GroupHandle,
        session_id: SessionId,
        on_stop: Box<dyn Fn(SessionId) + Send + Sync>,
    ) -> Self {
        Self { group, session_id, on_stop, tail: VecDeque::new(), last_request: Instant::now() }
    }

    /// Brings the cached state up to what this node has applied.
    fn refresh(&mut self) -> Result<SessionInfo, ApiError> {
        let info = self
            .group
            .state
            .session(self.session_id)?
            .ok_or_else(|| ApiError::NotFound { what: format!("session {}", self.session_id) })?;
        let cached_last = self.tail.back().map_or(0, |event| event.seq);
        if cached_last < info.last_seq {
            let from = (cached_last + 1).max(info.last_seq.saturating_sub(SESSION_TAIL_EVENTS_MAX as u64 - 1));
            if from > cached_last + 1 {
                self.tail.clear();
            }
            self.tail.extend(self.group.state.events_from(self.session_id, from)?);
            while self.tail.len() > SESSION_TAIL_EVENTS_MAX {
                self.tail.pop_front();
            }
        }
        Ok(info)
    }

    fn applied(&mut self, event: Event) {
        let expected = self.tail.back().map_or(0, |last| last.seq) + 1;
        if event.seq != expected {
            // A gap (or nothing cached yet): the next request refreshes from the store.
            return;
        }
        self.tail.push_back(event);
        if self.tail.len() > SESSION_TAIL_EVENTS_MAX {
            self.tail.pop_front();
        }
    }

    async fn append(
        &mut self,
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
    ) -> Result<(u64, bool), ApiError> {
        // The state this node has applied (cheap: one key), so a leadership
        // change in between never leaves the check with stale state.
        let info = self.refresh()?;
        // Refused here without a Raft round; the state machine checks again.
        // A retried append whose first attempt committed is a duplicate the
        // state machine recognises, so only refuse what cannot be a retry.
        if let Err(error) = agentd_protocol::rules::admit_user_event(info.status, &info.pending_actions, &payload) {
            let retry = self.group.state.event_seq(self.session_id, event_id)?;
            if let Some(seq) = retry {
                return Ok((seq, true));
            }
            return Err(error);
        }
        let command = Command::Append { session_id: self.session_id, event_id, payload, processed_at_ms, epoch: None };
        let started = Instant::now();
        let response = propose(&self.group, command).await?;
        metrics::histogram!("agentd_append_commit_seconds").record(started.elapsed().as_secs_f64());
        response.into_appended()
    }

    fn read(&mut self, from_seq: u64, limit: u32) -> Result<(Vec<Event>, u64), ApiError> {
        // Always up to date with what this node applied, so a client reads
        // its own acknowledged writes even before their broadcast arrives.
        let info = self.refresh()?;
        let from_seq = from_seq.max(1);
        let limit = limit.clamp(1, EVENTS_PER_PAGE_MAX) as usize;
        let cached_from = self.tail.front().map_or(u64::MAX, |event| event.seq);
        let events: Vec<Event> = if from_seq >= cached_from {
            metrics::counter!("agentd_session_reads_cached_total").increment(1);
            self.tail.iter().skip((from_seq - cached_from) as usize).take(limit).cloned().collect()
        } else {
            self.group.state.events(self.session_id, from_seq, limit as u32)?
        };
        let next_seq = events.last().map_or(from_seq.min(info.last_seq + 1), |event| event.seq + 1);
        Ok((events, next_seq))
    }
}

impl Actor for SessionActor {
    type Msg = SessionMessage;
    type State = SessionState;
    type Arguments = SessionState;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(IDLE_CHECK, || SessionMessage::IdleCheck);
        metrics::gauge!("agentd_session_actors").increment(1.0);
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        (state.on_stop)(state.session_id);
        metrics::gauge!("agentd_session_actors").decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMessage::Append { event_id, payload, processed_at_ms, reply } => {
                state.last_request = Instant::now();
                let _ = reply.send(state.append(event_id, payload, processed_at_ms).await);
            }
            SessionMessage::Read { from_seq, limit, reply } => {
                state.last_request = Instant::now();
                let _ = reply.send(state.read(from_seq, limit));
            }
            SessionMessage::Info { reply } => {
                state.last_request = Instant::now();
                let _ = reply.send(state.refresh());
            }
            SessionMessage::Applied(event) => state.applied(event),
            SessionMessage::IdleCheck => {
                if state.last_request.elapsed() > PASSIVATE_AFTER || !state.group.raft.is_leader() {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}
