//! The session rules the state machine enforces: orchestrator epochs fence
//! stale writers, client events may only answer what is pending, status
//! events move the session's status, and agents are versioned.

use agentd_protocol::agent::{AgentSpec, BuiltInTool, PermissionPolicy};
use agentd_protocol::api::SessionStatus;
use agentd_protocol::command::{Command, CommandResponse};
use agentd_protocol::event::{Confirmation, ContentBlock, EventPayload, JsonText, StopReason};
use agentd_protocol::ids::{AgentId, EventId, GroupId, SessionId, ShardId};
use agentd_protocol::ApiError;
use agentd_raft::state::{StateMachine, StateReader};
use agentd_raft::store::Db;
use agentd_raft::types::{Entry, LogId, TypeConfig};
use openraft::entry::RaftEntry;

const SHARD: ShardId = ShardId(0);

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, index)
}

/// Applies commands one entry each and returns their responses.
fn apply(state_machine: &mut StateMachine, first_index: u64, commands: Vec<Command>) -> Vec<CommandResponse> {
    let entries: Vec<Entry> = commands
        .into_iter()
        .enumerate()
        .map(|(offset, command)| Entry::new_normal(log_id(first_index + offset as u64), command))
        .collect();
    state_machine.apply_entries(entries).expect("apply")
}

fn append(session_id: SessionId, id: u128, payload: EventPayload, epoch: Option<u64>) -> Command {
    Command::Append { session_id, event_id: EventId::from_random(id), payload, processed_at_ms: 1, epoch }
}

#[test]
fn stale_epochs_never_append_and_answers_must_match_pending_actions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let (mut shard, reader) = db.state_machine(GroupId::Shard(SHARD)).unwrap();
    let session = SessionId::from_random(1);
    let tool_use = EventId::from_random(100);
    let agent_text = EventPayload::AgentMessage { content: vec![ContentBlock::text("hi")] };

    let responses = apply(
        &mut shard,
        1,
        vec![
            Command::CreateSession {
                session_id: session,
                shard: SHARD,
                created_at_ms: 1,
                agent: None,
                environment: None,
            },
            Command::ClaimEpoch { session_id: session },
            Command::ClaimEpoch { session_id: session },
            // The first run (epoch 1) was superseded by epoch 2.
            append(session, 1, agent_text.clone(), Some(1)),
            append(session, 2, EventPayload::SessionStatusRunning, Some(2)),
            // A client cannot write agent events, nor the runtime user events.
            append(session, 3, agent_text.clone(), None),
            append(session, 4, EventPayload::user_text("x"), Some(2)),
            // A confirmation that answers nothing.
            append(
                session,
                5,
                EventPayload::UserToolConfirmation {
                    tool_use_id: tool_use,
                    result: Confirmation::Allow,
                    deny_message: None,
                },
                None,
            ),
        ],
    );
    assert_eq!(responses[1], CommandResponse::Epoch(1));
    assert_eq!(responses[2], CommandResponse::Epoch(2));
    assert_eq!(responses[3], CommandResponse::Rejected(ApiError::StaleEpoch { epoch: 1, current: 2 }));
    assert_eq!(responses[4], CommandResponse::Appended { seq: 1, duplicate: false });
    assert!(matches!(responses[5], CommandResponse::Rejected(ApiError::InvalidRequest { .. })), "{:?}", responses[5]);
    assert!(matches!(responses[6], CommandResponse::Rejected(ApiError::InvalidRequest { .. })), "{:?}", responses[6]);
    assert!(matches!(responses[7], CommandResponse::Rejected(ApiError::InvalidRequest { .. })), "{:?}", responses[7]);
    assert_eq!(reader.session(session).unwrap().unwrap().status, SessionStatus::Running);

    confirmations_answer_once_and_nothing_follows_termination(&mut shard, &reader, session, tool_use);
}

/// The second half of `stale_epochs_never_append_and_answers_must_match_pending_actions`,
/// on a session running in epoch 2 with four events.
fn confirmations_answer_once_and_nothing_follows_termination(
    shard: &mut StateMachine,
    reader: &StateReader,
    session: SessionId,
    tool_use: EventId,
) {
    // The orchestrator asks for confirmation; the client answers it once.
    let confirmation =
        EventPayload::UserToolConfirmation { tool_use_id: tool_use, result: Confirmation::Deny, deny_message: None };
    let responses = apply(
        shard,
        9,
        vec![
            append(
                session,
                6,
                EventPayload::AgentToolUse { name: "bash".into(), input: JsonText::parse("{}").expect("JSON") },
                Some(2),
            ),
            append(
                session,
                7,
                EventPayload::SessionStatusIdle {
                    stop_reason: StopReason::RequiresAction { event_ids: vec![tool_use] },
                },
                Some(2),
            ),
            append(session, 8, confirmation.clone(), None),
            append(session, 9, confirmation, None),
            append(session, 10, EventPayload::SessionStatusTerminated, Some(2)),
            append(session, 11, EventPayload::user_text("too late"), None),
        ],
    );
    assert_eq!(responses[0], CommandResponse::Appended { seq: 2, duplicate: false });
    assert_eq!(responses[1], CommandResponse::Appended { seq: 3, duplicate: false });
    assert_eq!(responses[2], CommandResponse::Appended { seq: 4, duplicate: false });
    assert!(matches!(responses[3], CommandResponse::Rejected(ApiError::InvalidRequest { .. })), "answered twice");
    assert_eq!(responses[4], CommandResponse::Appended { seq: 5, duplicate: false });
    assert!(matches!(responses[5], CommandResponse::Rejected(ApiError::InvalidRequest { .. })), "terminated");
    let info = reader.session(session).expect("read").expect("the session");
    assert_eq!(
        (info.status, info.epoch, info.last_seq, info.pending_actions),
        (SessionStatus::Terminated, 2, 5, vec![])
    );
}

#[test]
fn agents_gain_versions_and_retries_add_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let (mut metadata, reader) = db.state_machine(GroupId::Metadata).unwrap();
    let agent_id = AgentId::from_random(5);
    let spec = |model: &str| AgentSpec {
        name: "helper".into(),
        model: model.into(),
        system: None,
        tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow }],
        custom_tools: vec![],
        max_model_calls_per_turn: 5,
        mcp_servers: vec![],
        mcp_toolsets: vec![],
    };
    let put = |model: &str| Command::PutAgent { agent_id, spec: spec(model), at_ms: 7 };
    let responses = apply(&mut metadata, 1, vec![put("scripted:echo"), put("scripted:echo"), put("scripted:other")]);
    let versions = |response: &CommandResponse| match response {
        CommandResponse::Agent(agent) => agent.versions.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(responses.iter().map(versions).collect::<Vec<_>>(), vec![1, 1, 2]);
    let agent = reader.agent(agent_id).unwrap().unwrap();
    assert_eq!(agent.version(1).unwrap().model, "scripted:echo");
    assert_eq!(agent.version(2).unwrap().model, "scripted:other");
    assert!(reader.agent(AgentId::from_random(6)).unwrap().is_none());
}

#[test]
fn environments_gain_versions_too() {
    use agentd_protocol::agent::{EnvironmentSpec, Network};
    use agentd_protocol::ids::EnvironmentId;

    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let (mut metadata, reader) = db.state_machine(GroupId::Metadata).unwrap();
    let environment_id = EnvironmentId::from_random(3);
    let spec = |unrestricted: bool| EnvironmentSpec {
        name: "default".into(),
        driver: "namespace".into(),
        network: if unrestricted { Network::Unrestricted } else { Network::None },
        tool_timeout_ms: 1000,
        eager_provisioning: false,
        vaults: vec![],
        resources: Default::default(),
    };
    let put = |network| Command::PutEnvironment { environment_id, spec: spec(network), at_ms: 1 };
    apply(&mut metadata, 1, vec![put(false), put(false), put(true)]);
    let environment = reader.environment(environment_id).unwrap().unwrap();
    assert_eq!(environment.versions, vec![spec(false), spec(true)]);
    assert_eq!(environment.latest(), Some(&spec(true)));
}

#[test]
fn terminating_fences_the_running_orchestrator_and_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let (mut shard, reader) = db.state_machine(GroupId::Shard(SHARD)).unwrap();
    let session = SessionId::from_random(7);
    let terminate = |id: u128| Command::Terminate { session_id: session, event_id: EventId::from_random(id), at_ms: 2 };
    let create =
        Command::CreateSession { session_id: session, shard: SHARD, created_at_ms: 1, agent: None, environment: None };
    let responses = apply(
        &mut shard,
        1,
        vec![
            create,
            Command::ClaimEpoch { session_id: session },
            append(session, 1, EventPayload::SessionStatusRunning, Some(1)),
            terminate(2),
            // The run that was going on when the client terminated the session.
            append(session, 3, EventPayload::AgentMessage { content: vec![ContentBlock::text("late")] }, Some(1)),
            // A newer run, and a client, cannot append either.
            Command::ClaimEpoch { session_id: session },
            append(session, 4, EventPayload::SessionStatusRunning, Some(3)),
            append(session, 5, EventPayload::user_text("more"), None),
            // A retried terminate answers the terminated event again.
            terminate(6),
            Command::Terminate { session_id: SessionId::from_random(99), event_id: EventId::from_random(7), at_ms: 2 },
        ],
    );
    assert_eq!(responses[2], CommandResponse::Appended { seq: 1, duplicate: false });
    assert_eq!(responses[3], CommandResponse::Appended { seq: 2, duplicate: false });
    assert_eq!(responses[4], CommandResponse::Rejected(ApiError::StaleEpoch { epoch: 1, current: 2 }));
    assert_eq!(responses[5], CommandResponse::Epoch(3));
    assert!(matches!(responses[6], CommandResponse::Rejected(ApiError::InvalidRequest { .. })), "{:?}", responses[6]);
    assert!(matches!(responses[7], CommandResponse::Rejected(ApiError::InvalidRequest { .. })), "{:?}", responses[7]);
    assert_eq!(responses[8], CommandResponse::Appended { seq: 2, duplicate: true });
    assert!(matches!(responses[9], CommandResponse::Rejected(ApiError::NotFound { .. })), "{:?}", responses[9]);
    let info = reader.session(session).unwrap().unwrap();
    assert_eq!((info.status, info.last_seq), (SessionStatus::Terminated, 2));
}

/// A tool use whose recorded gate reserves it for approvers is answered only
/// by an approver's decision, which is stored with the gate's policy version;
/// a flagged custom tool's result waits for a confirmation that allowed it.
#[test]
#[allow(clippy::too_many_lines, reason = "one log of commands and the answer to each, read top to bottom")]
fn gated_tool_uses_take_answers_as_their_gate_says() {
    use agentd_protocol::approval::{ApprovalGate, Decider};
    use agentd_protocol::ids::ApiKeyId;
    use agentd_protocol::tenancy::Role;

    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let (mut shard, reader) = db.state_machine(GroupId::Shard(SHARD)).unwrap();
    let session = SessionId::from_random(1);
    let (bash, lookup) = (EventId::from_random(10), EventId::from_random(11));
    let gate = ApprovalGate { policy_version: 4, rule: "*".into(), approver_only: true };
    let gated = |name: &str, custom: bool| EventPayload::AgentGatedToolUse {
        name: name.into(),
        input: JsonText::parse("{}").unwrap(),
        custom,
        gate: gate.clone(),
    };
    let decider = |role: Role| Decider { key_id: ApiKeyId::from_random(7), key_name: "kim".into(), role };
    let decision = |tool_use_id: EventId, role: Role| EventPayload::UserToolDecision {
        tool_use_id,
        result: Confirmation::Allow,
        deny_message: None,
        decided_by: Some(decider(role)),
        policy_version: None,
    };
    let create =
        Command::CreateSession { session_id: session, shard: SHARD, created_at_ms: 1, agent: None, environment: None };
    let waiting = StopReason::RequiresAction { event_ids: vec![bash, lookup] };
    let responses = apply(
        &mut shard,
        1,
        vec![
            create,
            Command::ClaimEpoch { session_id: session },
            Command::Append {
                session_id: session,
                event_id: bash,
                payload: gated("bash", false),
                processed_at_ms: 1,
                epoch: Some(1),
            },
            Command::Append {
                session_id: session,
                event_id: lookup,
                payload: gated("lookup", true),
                processed_at_ms: 1,
                epoch: Some(1),
            },
            append(session, 3, EventPayload::SessionStatusIdle { stop_reason: waiting }, Some(1)),
            // A member's decision, a bare confirmation, a result before any allow: refused.
            append(session, 4, decision(bash, Role::Member), None),
            append(
                session,
                5,
                EventPayload::UserToolConfirmation {
                    tool_use_id: bash,
                    result: Confirmation::Allow,
                    deny_message: None,
                },
                None,
            ),
            append(
                session,
                6,
                EventPayload::UserCustomToolResult { custom_tool_use_id: lookup, content: vec![], is_error: false },
                None,
            ),
            // An approver's: taken.
            append(session, 7, decision(bash, Role::Approver), None),
        ],
    );
    for refused in &responses[5..7] {
        assert!(
            matches!(refused, CommandResponse::Rejected(ApiError::PermissionDenied { message }) if message.contains("reserved for approvers")),
            "{refused:?}"
        );
    }
    assert!(
        matches!(&responses[7], CommandResponse::Rejected(ApiError::InvalidRequest { message }) if message.contains("waits for the confirmation")),
        "{:?}",
        responses[7]
    );
    let CommandResponse::Appended { seq, .. } = responses[8] else {
        panic!("the approver's decision: {:?}", responses[8])
    };
    let stored = reader.event(session, seq).unwrap().expect("stored");
    assert_eq!(
        stored.payload,
        EventPayload::UserToolDecision {
            tool_use_id: bash,
            result: Confirmation::Allow,
            deny_message: None,
            decided_by: Some(decider(Role::Approver)),
            policy_version: Some(4),
        }
    );

    // Once an approver allowed the custom tool, its result is taken.
    let waiting = StopReason::RequiresAction { event_ids: vec![lookup] };
    let responses = apply(
        &mut shard,
        10,
        vec![
            append(session, 8, EventPayload::SessionStatusIdle { stop_reason: waiting.clone() }, Some(1)),
            append(session, 9, decision(lookup, Role::Approver), None),
            append(session, 12, EventPayload::SessionStatusIdle { stop_reason: waiting }, Some(1)),
            append(
                session,
                13,
                EventPayload::UserCustomToolResult { custom_tool_use_id: lookup, content: vec![], is_error: false },
                None,
            ),
        ],
    );
    assert!(responses.iter().all(|response| matches!(response, CommandResponse::Appended { .. })), "{responses:?}");
}
