//! Following a session: its events from a sequence number on, then each new
//! one as it commits, with no transport attached. The QUIC front door writes
//! each batch as a frame; another front door writes it its own way.

use agentd_protocol::event::Event;
use agentd_protocol::ids::SessionId;
use agentd_protocol::limits::FOLLOW_PAGE_EVENTS;
use agentd_protocol::ApiError;
use agentd_raft::host::GroupHandle;
use tokio::sync::broadcast::{self, error::RecvError};

/// A session's events on this node's replica, every event once and in
/// order: first those already stored from the start sequence number, then
/// each new one as this replica applies it. Gaps (a lagging broadcast, a
/// snapshot install) are filled from the store. When this node stops
/// holding the shard, [`Follow::next`] fails and the caller resumes on
/// another node from [`Follow::next_seq`].
pub struct Follow {
    group: GroupHandle,
    session_id: SessionId,
    next_seq: u64,
    live: broadcast::Receiver<Event>,
    /// The next batch comes from the store rather than from the broadcast.
    catching_up: bool,
}

impl Follow {
    pub(super) fn start(group: GroupHandle, session_id: SessionId, from_seq: u64) -> Result<Follow, ApiError> {
        // Subscribed before the first read, so no event falls between the two.
        let live = group.state.subscribe();
        if group.state.session(session_id)?.is_none() {
            return Err(super::session::not_found(session_id));
        }
        Ok(Follow { group, session_id, next_seq: from_seq.max(1), live, catching_up: true })
    }

    /// The sequence number of the next event this follow delivers.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next batch of events (never empty), waiting for one as long as it
    /// takes. Cancel-safe: a batch is consumed only when it is returned.
    pub async fn next(&mut self) -> Result<Vec<Event>, ApiError> {
        loop {
            if self.catching_up {
                let events = self.group.state.events(self.session_id, self.next_seq, FOLLOW_PAGE_EVENTS)?;
                if let Some(last) = events.last() {
                    self.next_seq = last.seq + 1;
                    return Ok(events);
                }
                self.catching_up = false;
            }
            match self.live.recv().await {
                Ok(event) if event.session_id != self.session_id || event.seq < self.next_seq => {}
                Ok(event) if event.seq == self.next_seq => {
                    self.next_seq += 1;
                    return Ok(vec![event]);
                }
                // A gap, or a receiver that lagged behind: re-read from the store.
                Ok(_) | Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => {
                    return Err(ApiError::Unavailable { message: "shard closed on this node; resume elsewhere".into() })
                }
            }
        }
    }
}
