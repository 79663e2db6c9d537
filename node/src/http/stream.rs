//! `GET /v1/sessions/{id}/events/stream`: a session's events as
//! server-sent events, as the SDKs read them: every frame names its event
//! (`event: agent.message`; a frame without one is dropped by both SDKs),
//! carries the event as `data`, and, beyond the hosted API, its sequence
//! number as `id`. Headers go out at once; `event: ping` frames keep an idle
//! stream alive; `session.deleted` ends it.
//!
//! Without `Last-Event-ID` (or `?after=SEQ`) the stream starts at events
//! committed after it connects, as the hosted API's does. With it, every
//! event after that sequence number comes, exactly once, on any node: a
//! client that lost its node reconnects to another and misses nothing.
//!
//! A node that holds a replica of the session's shard follows it there (one
//! broadcast per shard serves every subscriber of the node); a node without
//! one reads the log from the shard's leader as the events come.

use std::collections::VecDeque;
use std::time::Duration;

use agentd_protocol::api::Consistency;
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::SessionId;
use agentd_protocol::limits::{EVENTS_PER_PAGE_MAX, SSE_PING_INTERVAL_MS};
use agentd_protocol::tenancy::Caller;
use agentd_protocol::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream;

use super::error::HttpError;
use super::events::event_json;
use super::sessions::{parse_id, view, AgentSnapshot, Agents};
use super::util::Query;
use super::AppState;
use crate::service::{Follow, Service};

/// How often a node without a replica asks the leader for new events.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Previews a client may ask for (agentd sends none: they are best-effort).
const EVENT_DELTAS: [&str; 2] = ["agent.message", "agent.thinking"];
const EVENT_DELTAS_MAX: usize = 100;

/// Where the events come from.
enum Source {
    /// This node's replica of the session's shard.
    Replica(Follow),
    /// The shard's leader, read page by page.
    Leader { service: Service, caller: Caller, session_id: SessionId, next_seq: u64 },
}

impl Source {
    async fn next(&mut self) -> Result<Vec<Event>, ApiError> {
        match self {
            Source::Replica(follow) => follow.next().await,
            Source::Leader { service, caller, session_id, next_seq } => loop {
                let (events, _) =
                    service.events(caller, *session_id, *next_seq, EVENTS_PER_PAGE_MAX, Consistency::Leader).await?;
                if let Some(last) = events.last() {
                    *next_seq = last.seq + 1;
                    return Ok(events);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            },
        }
    }
}

/// The `Last-Event-ID` header, or `?after=`: the last sequence number the client has.
fn resume_after(headers: &HeaderMap, query: &Query) -> Result<Option<u64>, HttpError> {
    let header = headers.get("last-event-id").map(|value| value.to_str().unwrap_or_default().trim().to_string());
    let text = header.or_else(|| query.get("after").map(str::to_string));
    text.filter(|text| !text.is_empty())
        .map(|text| {
            text.parse().map_err(|_| HttpError::invalid(format!("Last-Event-ID {text:?} is not a sequence number")))
        })
        .transpose()
}

pub async fn stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let query = Query::parse(raw.as_deref());
    query.only(&["event_deltas", "after"])?;
    let deltas = query.all("event_deltas");
    if deltas.len() > EVENT_DELTAS_MAX {
        return Err(HttpError::invalid(format!("event_deltas[] holds at most {EVENT_DELTAS_MAX} values")));
    }
    if let Some(unknown) = deltas.iter().find(|kind| !EVENT_DELTAS.contains(kind)) {
        return Err(HttpError::invalid(format!("event_deltas[]: {unknown:?} is not agent.message or agent.thinking")));
    }
    let session_id = parse_id(&session_id)?;
    let session = view(&state, &caller, session_id).await?;
    let from_seq = match resume_after(&headers, &query)? {
        Some(after) => after + 1,
        None => session.info.last_seq + 1,
    };
    let agent = Agents::default().snapshot(&state, &session).await?;
    let source = match state.service.follow(&caller, session_id, from_seq).await {
        Ok(follow) => Source::Replica(follow),
        Err(ApiError::NotReplica { .. }) => {
            Source::Leader { service: state.service.clone(), caller: caller.clone(), session_id, next_seq: from_seq }
        }
        Err(error) => return Err(error.into()),
    };
    let body = Body::from_stream(frames(source, agent));
    let mut response = body.into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One SSE frame.
fn frame(name: &str, id: Option<u64>, data: &str) -> Bytes {
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!("event: {name}\n{id}data: {data}\n\n"))
}

struct Frames {
    source: Source,
    agent: Option<AgentSnapshot>,
    ping: tokio::time::Interval,
    ready: VecDeque<Bytes>,
    ended: bool,
}

/// The stream's bytes: a comment first (so the headers and the first bytes
/// go out at once), then a frame per event, pings while idle.
fn frames(
    source: Source,
    agent: Option<AgentSnapshot>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let period = Duration::from_millis(SSE_PING_INTERVAL_MS);
    let ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let ready = VecDeque::from([Bytes::from_static(b": agentd event stream\n\n")]);
    let state = Frames { source, agent, ping, ready, ended: false };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(bytes) = state.ready.pop_front() {
                return Some((Ok(bytes), state));
            }
            if state.ended {
                return None;
            }
            tokio::select! {
                batch = state.source.next() => match batch {
                    Ok(events) => queue(&mut state, &events),
                    // This node cannot go on (its replica closed): the
                    // client resumes elsewhere with Last-Event-ID.
                    Err(_) => state.ended = true,
                },
                _ = state.ping.tick() => state.ready.push_back(frame("ping", None, r#"{"type":"ping"}"#)),
            }
        }
    })
}

fn queue(state: &mut Frames, events: &[Event]) {
    for event in events {
        let data = event_json(event, state.agent.as_ref()).to_string();
        state.ready.push_back(frame(event.payload.type_name(), Some(event.seq), &data));
        if event.payload == EventPayload::SessionDeleted {
            state.ended = true;
            return;
        }
    }
    state.ping.reset();
}
