//! One watcher per shard this node leads. A new watcher first wakes every
//! session of its shard that has an agent (the planner finds the sessions
//! that were running when the old leader went away), then wakes a session
//! whenever a client writes to it, and releases a session's sandbox as soon
//! as its termination applies.

use std::collections::HashMap;
use std::time::Duration;

use agentd_actors::brain::Orchestrators;
use agentd_protocol::api::SessionStatus;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{GroupId, ShardId};
use agentd_raft::host::{GroupHandle, RaftHost};
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::session::Sessions;

/// How often shard leadership is checked for new watchers.
const LEADERSHIP_POLL: Duration = Duration::from_millis(500);

/// Keeps one watcher running per shard this node leads, until aborted.
pub async fn drive_shards(host: RaftHost, orchestrators: Orchestrators, sessions: Sessions) {
    let mut watchers: HashMap<ShardId, JoinHandle<()>> = HashMap::new();
    loop {
        for group in host.groups() {
            let GroupId::Shard(shard) = group.group else { continue };
            if !group.raft.is_leader() || watchers.get(&shard).is_some_and(|watcher| !watcher.is_finished()) {
                continue;
            }
            watchers.insert(shard, tokio::spawn(watch_shard(group, orchestrators.clone(), sessions.clone())));
        }
        tokio::time::sleep(LEADERSHIP_POLL).await;
    }
}

async fn watch_shard(group: GroupHandle, orchestrators: Orchestrators, sessions: Sessions) {
    let mut live = group.state.subscribe();
    let term = group.raft.metrics().borrow_watched().current_term;
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
                if !group.raft.is_leader() || group.raft.metrics().borrow_watched().current_term != term {
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
