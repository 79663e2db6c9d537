//! The cluster-wide list of a workspace's sessions: every shard's leader
//! answers a page of its own sessions, and the pages are merged by creation.
//!
//! Exactly once, with stable cursors while sessions are being created: a
//! cursor is a position (creation time, session id) in the order, and a page
//! holds only positions that every shard has walked past. A shard whose page
//! filled up (or used its read budget) stopped at its `next` position; the
//! merged page stops at the furthest of those, and the cursor it returns is
//! the last position it covers.

use agentd_protocol::api::{ClientRequest, ClientResponse};
use agentd_protocol::ids::ShardId;
use agentd_protocol::resource::{CreationCursor, Order, SessionPage, SessionView};
use agentd_protocol::tenancy::Caller;
use agentd_protocol::ApiError;
use futures_util::future::join_all;

use super::session::bounded_query;
use super::{Origin, Service};

impl Service {
    pub(super) async fn list_sessions(
        &self,
        caller: &Caller,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        let ClientRequest::ListSessions { query } = request else {
            return Err(ApiError::InvalidRequest { message: format!("{} is not a list of sessions", request.kind()) });
        };
        let query = bounded_query(query);
        let (shards, _) = self.metadata()?.state.cluster_config()?.ok_or_else(|| ApiError::Unavailable {
            message: "this node has not learned the cluster configuration yet".into(),
        })?;
        let pages = join_all((0..shards).map(|shard| {
            let request = ClientRequest::ListShardSessions { shard: ShardId(shard), query: query.clone() };
            self.route_shard(caller, ShardId(shard), None, request, Origin::FrontDoor)
        }))
        .await;
        let mut shard_pages = Vec::with_capacity(pages.len());
        for page in pages {
            shard_pages.push(page?.into_sessions()?);
        }
        Ok(ClientResponse::Sessions(merge(shard_pages, query.order, query.limit as usize)))
    }
}

fn position(view: &SessionView) -> CreationCursor {
    CreationCursor { created_at_ms: view.info.created_at_ms, id: view.info.session_id.0 }
}

fn key(position: CreationCursor) -> (u64, [u8; 16]) {
    (position.created_at_ms, position.id)
}

/// Merges the shards' pages into one page of at most `limit` sessions, in
/// `order`, covering only what every shard has walked past.
fn merge(pages: Vec<SessionPage>, order: Order, limit: usize) -> SessionPage {
    // The furthest any shard got before stopping early: beyond it, a shard
    // that stopped may still hold sessions the merged page must not skip.
    let frontier = pages.iter().filter_map(|page| page.next).reduce(|a, b| match order {
        Order::Descending => {
            if key(a) > key(b) {
                a
            } else {
                b
            }
        }
        Order::Ascending => {
            if key(a) < key(b) {
                a
            } else {
                b
            }
        }
    });
    let within = |view: &SessionView| match (frontier, order) {
        (None, _) => true,
        (Some(frontier), Order::Descending) => key(position(view)) >= key(frontier),
        (Some(frontier), Order::Ascending) => key(position(view)) <= key(frontier),
    };
    let mut sessions: Vec<SessionView> = pages.into_iter().flat_map(|page| page.sessions).filter(within).collect();
    sessions.sort_by_key(|view| key(position(view)));
    if order == Order::Descending {
        sessions.reverse();
    }
    let next = if sessions.len() > limit {
        sessions.truncate(limit);
        sessions.last().map(position)
    } else if sessions.len() == limit && frontier.is_some() {
        sessions.last().map(position)
    } else {
        frontier
    };
    SessionPage { sessions, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_protocol::api::{SessionInfo, SessionStatus};
    use agentd_protocol::ids::SessionId;
    use agentd_protocol::resource::{SessionDetails, SessionUsageTotals};

    fn view(created_at_ms: u64, id: u8) -> SessionView {
        SessionView {
            info: SessionInfo {
                session_id: SessionId([id; 16]),
                shard: ShardId(0),
                created_at_ms,
                last_seq: 0,
                agent: None,
                environment: None,
                status: SessionStatus::Idle,
                epoch: 0,
                pending_actions: Vec::new(),
                stop_reason: None,
            },
            details: SessionDetails::default_for(created_at_ms),
            usage: SessionUsageTotals::default(),
        }
    }

    fn cursor(created_at_ms: u64, id: u8) -> CreationCursor {
        CreationCursor { created_at_ms, id: [id; 16] }
    }

    #[test]
    fn a_page_covers_only_what_every_shard_walked_past() {
        // Shard A filled its page of two at (8, 8); shard B is exhausted.
        let a = SessionPage { sessions: vec![view(10, 10), view(8, 8)], next: Some(cursor(8, 8)) };
        let b = SessionPage { sessions: vec![view(9, 9), view(7, 7), view(1, 1)], next: None };
        let page = merge(vec![a, b], Order::Descending, 2);
        let ids: Vec<u8> = page.sessions.iter().map(|view| view.info.session_id.0[0]).collect();
        assert_eq!(ids, vec![10, 9]);
        assert_eq!(page.next, Some(cursor(9, 9)));
    }

    #[test]
    fn a_short_page_resumes_at_the_frontier_and_the_last_page_has_no_cursor() {
        let a = SessionPage { sessions: vec![view(10, 10)], next: Some(cursor(5, 5)) };
        let b = SessionPage { sessions: vec![view(3, 3)], next: None };
        let page = merge(vec![a, b], Order::Descending, 5);
        assert_eq!(page.sessions.len(), 1, "(3,3) lies past shard A's frontier");
        assert_eq!(page.next, Some(cursor(5, 5)));
        let last = merge(vec![SessionPage { sessions: vec![view(3, 3)], next: None }], Order::Descending, 5);
        assert_eq!(last.next, None);
    }

    #[test]
    fn ascending_pages_mirror_descending_ones() {
        let a = SessionPage { sessions: vec![view(1, 1), view(3, 3)], next: Some(cursor(3, 3)) };
        let b = SessionPage { sessions: vec![view(2, 2), view(4, 4)], next: None };
        let page = merge(vec![a, b], Order::Ascending, 2);
        let ids: Vec<u8> = page.sessions.iter().map(|view| view.info.session_id.0[0]).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(page.next, Some(cursor(2, 2)));
    }
}
