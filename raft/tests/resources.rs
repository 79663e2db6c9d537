//! Resources and sessions of workspaces, as the state machine applies them:
//! another workspace's object is "not found" for every command, conditional
//! writes conflict, lists page every object exactly once, and a deleted
//! session's log ends with `session.deleted`.

use agentd_protocol::agent::{AgentSpec, PermissionPolicy};
use agentd_protocol::command::{Command, CommandResponse};
use agentd_protocol::event::{EventPayload, ModelUsage};
use agentd_protocol::ids::{AgentId, EventId, GroupId, SessionId, ShardId};
use agentd_protocol::resource::{
    AgentBody, CreatedWithin, Order, ResourceBody, ResourceId, ResourceKind, ResourceQuery, ResourceVersion,
    SessionDetails, SessionQuery,
};
use agentd_protocol::ApiError;
use agentd_raft::state::StateMachine;
use agentd_raft::store::Db;
use agentd_raft::types::{Entry, LogId, TypeConfig};
use openraft::entry::RaftEntry;

const SHARD: ShardId = ShardId(0);

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, index)
}

/// Applies commands one entry each from `first_index`, returning the responses.
async fn apply(state_machine: &mut StateMachine, first_index: u64, commands: Vec<Command>) -> Vec<CommandResponse> {
    let entries: Vec<Entry> = commands
        .into_iter()
        .enumerate()
        .map(|(offset, command)| Entry::new_normal(log_id(first_index + offset as u64), command))
        .collect();
    state_machine.apply_entries(entries).expect("apply")
}

fn agent_version(name: &str) -> ResourceVersion {
    let spec = AgentSpec {
        name: name.into(),
        model: "scripted:echo".into(),
        system: None,
        tools: vec![],
        custom_tools: vec![],
        max_model_calls_per_turn: 5,
        mcp_servers: vec![],
        mcp_toolsets: vec![],
    };
    ResourceVersion {
        body: ResourceBody::Agent(AgentBody {
            spec,
            default_enabled: false,
            default_policy: PermissionPolicy::AlwaysAllow,
        }),
        description: None,
        metadata: vec![],
        created_at_ms: 0,
    }
}

fn put(
    id: ResourceId,
    workspace: &str,
    version: ResourceVersion,
    expected_revision: Option<u64>,
    at_ms: u64,
) -> Command {
    Command::PutResource { id, workspace: workspace.into(), version, expected_revision, at_ms }
}

fn rejection(response: &CommandResponse) -> &ApiError {
    match response {
        CommandResponse::Rejected(error) => error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn another_workspaces_resource_is_not_found_and_stale_writes_conflict() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open");
    let (mut metadata, reader) = db.state_machine(GroupId::Metadata).expect("state machine");
    let id = ResourceId::Agent(AgentId::from_random(1));
    let responses = apply(
        &mut metadata,
        1,
        vec![
            put(id, "a", agent_version("v1"), Some(0), 10),
            // Another workspace can neither write it, nor archive it, nor see it in its lists.
            put(id, "b", agent_version("stolen"), None, 11),
            Command::ArchiveResource { id, workspace: "b".into(), at_ms: 12 },
            // A conditional write on a stale revision conflicts; on the current one it lands.
            put(id, "a", agent_version("v2"), Some(7), 13),
            put(id, "a", agent_version("v2"), Some(1), 14),
            // Agents are archived, never deleted.
            Command::DeleteResource { id, workspace: "a".into() },
        ],
    )
    .await;
    assert!(matches!(responses[0], CommandResponse::Resource(ref resource) if resource.revision == 1));
    assert!(matches!(rejection(&responses[1]), ApiError::NotFound { .. }));
    assert!(matches!(rejection(&responses[2]), ApiError::NotFound { .. }));
    assert!(matches!(rejection(&responses[3]), ApiError::Conflict { .. }));
    let CommandResponse::Resource(resource) = &responses[4] else { panic!("{:?}", responses[4]) };
    assert_eq!((resource.version_number(), resource.revision, resource.workspace.as_str()), (2, 2, "a"));
    assert!(matches!(rejection(&responses[5]), ApiError::InvalidRequest { .. }));
    let stored = reader.resource(id).expect("read").expect("stored");
    assert_eq!(stored.version_number(), 2);
    let query = |workspace: &str| {
        let query = ResourceQuery {
            kind: ResourceKind::Agent,
            include_archived: true,
            created: CreatedWithin::default(),
            order: Order::Descending,
            after: None,
            limit: 10,
        };
        reader.resources_page(workspace, &query).expect("list").resources.len()
    };
    assert_eq!((query("a"), query("b")), (1, 0));
}

fn create_session(session_id: SessionId, workspace: &str, at_ms: u64) -> Command {
    let details = SessionDetails { workspace: workspace.into(), ..SessionDetails::default_for(at_ms) };
    Command::CreateSessionIn { session_id, shard: SHARD, created_at_ms: at_ms, agent: None, environment: None, details }
}

#[tokio::test]
async fn session_lists_page_every_session_once_while_new_ones_arrive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open");
    let (mut shard, reader) = db.state_machine(GroupId::Shard(SHARD)).expect("state machine");
    let mut commands: Vec<Command> =
        (0..25u128).map(|bits| create_session(SessionId::from_random(bits), "a", 100 + bits as u64 % 7)).collect();
    commands.push(create_session(SessionId::from_random(999), "b", 101));
    apply(&mut shard, 1, commands).await;
    let mut query = SessionQuery {
        agent: None,
        agent_version: None,
        statuses: vec![],
        include_archived: false,
        created: CreatedWithin::default(),
        order: Order::Descending,
        after: None,
        limit: 4,
    };
    let mut seen = Vec::new();
    let mut index = 100;
    loop {
        let page = reader.sessions_page("a", &query).expect("page");
        assert!(page.sessions.len() <= 4);
        seen.extend(page.sessions.iter().map(|view| view.info.session_id));
        // A session created meanwhile is newer than every cursor: it never shows up behind one.
        apply(&mut shard, index, vec![create_session(SessionId::from_random(10_000 + u128::from(index)), "a", 1_000)])
            .await;
        index += 1;
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (25, 25), "every session of the workspace once");
    assert!(!seen.contains(&SessionId::from_random(999)), "another workspace's session was listed");
}

#[tokio::test]
async fn a_deleted_sessions_log_ends_with_session_deleted_and_refuses_more() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open");
    let (mut shard, reader) = db.state_machine(GroupId::Shard(SHARD)).expect("state machine");
    let session_id = SessionId::from_random(5);
    let append = |id: u128| Command::Append {
        session_id,
        event_id: EventId::from_random(id),
        payload: EventPayload::user_text("hi"),
        processed_at_ms: 2,
        epoch: None,
    };
    let delete = |workspace: &str| Command::DeleteSession {
        session_id,
        workspace: workspace.into(),
        event_id: EventId::from_random(50),
        at_ms: 3,
    };
    let responses = apply(
        &mut shard,
        1,
        vec![create_session(session_id, "a", 1), append(1), delete("b"), delete("a"), delete("a"), append(2)],
    )
    .await;
    assert!(matches!(rejection(&responses[2]), ApiError::NotFound { .. }), "another workspace deleted it");
    assert_eq!(responses[3], CommandResponse::Appended { seq: 2, duplicate: false });
    assert_eq!(responses[4], CommandResponse::Appended { seq: 2, duplicate: true });
    assert!(matches!(rejection(&responses[5]), ApiError::InvalidRequest { .. }));
    let events = reader.events_from(session_id, 1).expect("events");
    assert_eq!(events.last().map(|event| &event.payload), Some(&EventPayload::SessionDeleted));
    let view = reader.session_view(session_id).expect("read").expect("kept");
    assert!(view.details.deleted_at_ms.is_some());
    let query = SessionQuery {
        agent: None,
        agent_version: None,
        statuses: vec![],
        include_archived: true,
        created: CreatedWithin::default(),
        order: Order::Ascending,
        after: None,
        limit: 10,
    };
    assert!(reader.sessions_page("a", &query).expect("page").sessions.is_empty(), "a deleted session is listed");
}

#[tokio::test]
async fn a_sessions_usage_sums_each_requests_model_usage_and_old_usage_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open");
    let (mut shard, reader) = db.state_machine(GroupId::Shard(SHARD)).expect("state machine");
    let session_id = SessionId::from_random(6);
    let runtime = |id: u128, payload: EventPayload| Command::Append {
        session_id,
        event_id: EventId::from_random(id),
        payload,
        processed_at_ms: 2,
        epoch: Some(1),
    };
    let start = EventId::from_random(10);
    let model_usage = ModelUsage {
        input_tokens: 100,
        output_tokens: 20,
        cache_creation_input_tokens: 3,
        cache_read_input_tokens: 40,
    };
    let commands = vec![
        create_session(session_id, "a", 1),
        Command::ClaimEpoch { session_id },
        runtime(10, EventPayload::SpanModelRequestStart { model: "m".into() }),
        runtime(11, EventPayload::SpanModelRequestEnd { model_request_start_id: start, is_error: false, model_usage }),
        // As a log written before usage moved onto the span's end has it.
        runtime(12, EventPayload::SpanModelRequestStart { model: "m".into() }),
        runtime(13, EventPayload::SpanModelRequestEndWithoutUsage { model_request_start_id: start, is_error: false }),
        runtime(14, EventPayload::SessionUsage { input_tokens: 5, output_tokens: 7 }),
    ];
    let responses = apply(&mut shard, 1, commands).await;
    assert_eq!(responses[1], CommandResponse::Epoch(1));
    assert!(
        responses[2..].iter().all(|response| matches!(response, CommandResponse::Appended { .. })),
        "{responses:?}"
    );
    let usage = reader.session_view(session_id).expect("read").expect("exists").usage;
    assert_eq!(
        (usage.model_requests, usage.input_tokens, usage.output_tokens),
        (2, 105, 27),
        "both requests, each counted once"
    );
    assert_eq!((usage.cache_creation_input_tokens, usage.cache_read_input_tokens), (3, 40));
}
