//! Lists: a workspace's resources and sessions by creation, and a session's
//! events by sequence number, a page at a time. Every page costs at most
//! [`LIST_SCAN_BUDGET`] index entries or events read, whatever the filters;
//! a page that used its budget says where to resume even if it is short.

use agentd_protocol::event::Event;
use agentd_protocol::ids::SessionId;
use agentd_protocol::limits::{EVENTS_PER_PAGE_MAX, LIST_SCAN_BUDGET};
use agentd_protocol::resource::{
    EventPage, EventQuery, Order, ResourceId, ResourcePage, ResourceQuery, SessionPage, SessionQuery, SessionView,
};

use super::StateReader;
use crate::store::keys::Index;
use crate::Error;

impl StateReader {
    /// A page of a workspace's resources of one kind (metadata group).
    pub fn resources_page(&self, workspace: &str, query: &ResourceQuery) -> Result<ResourcePage, Error> {
        let index = Index::resources(query.kind);
        let limit = query.limit.max(1) as usize;
        let (positions, budget_used) =
            self.state.index_positions(&index, workspace, query.order, query.after, query.created, LIST_SCAN_BUDGET)?;
        let mut resources = Vec::new();
        let mut examined = None;
        for position in &positions {
            if resources.len() == limit {
                break;
            }
            examined = Some(*position);
            let id = ResourceId::from_parts(query.kind, position.id);
            let Some(resource) = self.state.resource(id)? else { continue };
            if resource.workspace == workspace && (resource.archived_at_ms.is_none() || query.include_archived) {
                resources.push(resource);
            }
        }
        let more = examined != positions.last().copied() || budget_used;
        Ok(ResourcePage { resources, next: examined.filter(|_| more) })
    }

    /// A page of a workspace's sessions on this shard, deleted ones left out;
    /// `next` is where this shard's walk stopped if more may follow.
    pub fn sessions_page(&self, workspace: &str, query: &SessionQuery) -> Result<SessionPage, Error> {
        let limit = query.limit.max(1) as usize;
        let (positions, budget_used) = self.state.index_positions(
            &Index::sessions(),
            workspace,
            query.order,
            query.after,
            query.created,
            LIST_SCAN_BUDGET,
        )?;
        let mut sessions = Vec::new();
        let mut examined = None;
        for position in &positions {
            if sessions.len() == limit {
                break;
            }
            examined = Some(*position);
            let Some(view) = self.session_view(SessionId(position.id))? else { continue };
            if view.details.workspace == workspace && matches_query(&view, query) {
                sessions.push(view);
            }
        }
        let more = examined != positions.last().copied() || budget_used;
        Ok(SessionPage { sessions, next: examined.filter(|_| more) })
    }

    /// A page of a session's events of the asked types, in order. Reads at
    /// most [`LIST_SCAN_BUDGET`] events. The page's `next_seq` is the cursor
    /// to resume from (an `after_seq`), present while events remain.
    pub fn events_page(&self, session_id: SessionId, last_seq: u64, query: &EventQuery) -> Result<EventPage, Error> {
        let limit = query.limit.clamp(1, EVENTS_PER_PAGE_MAX) as usize;
        let wanted =
            |event: &Event| query.types.is_empty() || query.types.iter().any(|kind| kind == event.payload.type_name());
        let chunk_max = |read: usize| (LIST_SCAN_BUDGET - read).min(EVENTS_PER_PAGE_MAX as usize) as u64;
        let mut events = Vec::new();
        let mut read = 0;
        match query.order {
            Order::Ascending => {
                // The next sequence number to read.
                let mut next = query.after_seq.map_or(1, |seq| seq + 1);
                while events.len() < limit && read < LIST_SCAN_BUDGET && next <= last_seq {
                    let chunk = self.events(session_id, next, chunk_max(read) as u32)?;
                    if chunk.is_empty() {
                        break;
                    }
                    for event in chunk {
                        read += 1;
                        next = event.seq + 1;
                        if wanted(&event) {
                            events.push(event);
                            if events.len() == limit {
                                break;
                            }
                        }
                    }
                }
                Ok(EventPage { events, next_seq: (next <= last_seq).then(|| next - 1) })
            }
            Order::Descending => {
                // Every event before this one is still to read.
                let mut before = query.after_seq.unwrap_or(last_seq + 1).min(last_seq + 1);
                while events.len() < limit && read < LIST_SCAN_BUDGET && before > 1 {
                    let from = before.saturating_sub(chunk_max(read)).max(1);
                    let chunk = self.events(session_id, from, (before - from) as u32)?;
                    if chunk.is_empty() {
                        break;
                    }
                    for event in chunk.into_iter().rev() {
                        read += 1;
                        before = event.seq;
                        if wanted(&event) {
                            events.push(event);
                            if events.len() == limit {
                                break;
                            }
                        }
                    }
                }
                Ok(EventPage { events, next_seq: (before > 1).then_some(before) })
            }
        }
    }
}

fn matches_query(view: &SessionView, query: &SessionQuery) -> bool {
    let details = &view.details;
    if details.deleted_at_ms.is_some() || (details.archived_at_ms.is_some() && !query.include_archived) {
        return false;
    }
    if query.agent.is_some_and(|agent| view.info.agent.map(|pinned| pinned.id) != Some(agent)) {
        return false;
    }
    if query.agent_version.is_some_and(|version| view.info.agent.map(|pinned| pinned.version) != Some(version)) {
        return false;
    }
    query.statuses.is_empty() || query.statuses.contains(&view.info.status)
}
