//! The RocksDB log store and state machine: openraft's conformance suite,
//! isolation between groups sharing one database, the command logic, and
//! durability across reopening.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use agentd_protocol::api::SessionInfo;
use agentd_protocol::command::{Command, CommandResponse};
use agentd_protocol::event::{Event, EventPayload};
use agentd_protocol::ids::{EventId, GroupId, SessionId, ShardId};
use agentd_protocol::ApiError;
use agentd_raft::state::{StateMachine, StateReader};
use agentd_raft::store::{Batch, Cf, Db, Disk, LogStore, RocksDisk, STORE_FORMAT};
use agentd_raft::types::{Entry, LogId, TypeConfig, Vote};
use futures_util::stream;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{Membership, StorageError};
use tempfile::TempDir;

const SHARD: ShardId = ShardId(3);
const GROUP: GroupId = GroupId::Shard(SHARD);

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn blank(index: u64) -> Entry {
    Entry::new_blank(log_id(1, index))
}

fn normal(index: u64, command: Command) -> Entry {
    Entry::new_normal(log_id(1, index), command)
}

fn session(n: u128) -> SessionId {
    SessionId::from_random(n)
}

fn event_id(n: u128) -> EventId {
    EventId::from_random(n)
}

fn create(session_id: SessionId, created_at_ms: u64) -> Command {
    Command::CreateSession { session_id, shard: SHARD, created_at_ms, agent: None, environment: None }
}

fn append_text(session_id: SessionId, event: EventId, text: &str, processed_at_ms: u64) -> Command {
    Command::Append {
        session_id,
        event_id: event,
        payload: EventPayload::user_text(text),
        processed_at_ms,
        epoch: None,
    }
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Appends entries and waits until the store reports them durable.
async fn append_durably(store: &mut LogStore, entries: Vec<Entry>) {
    let (sender, receiver) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(sender)).await.expect("append");
    receiver.await.expect("the callback is called").expect("the entries are durable");
}

/// Opens a fresh database per build: the suite on the metadata group, whose
/// prefix is the largest one and so has no successor.
struct FreshDbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FreshDbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempdir();
        let db = Db::open(dir.path()).expect("open the database");
        let (state_machine, _reader) = db.state_machine(GroupId::Metadata).expect("open the state machine");
        Ok((dir, db.log_store(GroupId::Metadata), state_machine))
    }
}

/// Hands out a new group of one shared database per build, so each test of
/// the suite runs next to the data of every earlier one.
struct SharedDbBuilder {
    db: Db,
    next_shard: AtomicU32,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine> for SharedDbBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let group = GroupId::Shard(ShardId(self.next_shard.fetch_add(1, Ordering::Relaxed)));
        let (state_machine, _reader) = self.db.state_machine(group).expect("open the state machine");
        Ok(((), self.db.log_store(group), state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_a_fresh_db_per_test() {
    Suite::test_all(FreshDbBuilder).await.expect("conformance suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_many_groups_in_one_db() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");

    // Neighbours on both sides of the groups the suite uses, with data the
    // suite must not disturb.
    let neighbours = [GroupId::Shard(ShardId(0)), GroupId::Metadata];
    for group in neighbours {
        let mut store = db.log_store(group);
        append_durably(&mut store, (1..=5).map(blank).collect()).await;
        store.save_vote(&Vote::new(7, 1)).await.expect("save vote");
    }

    let builder = SharedDbBuilder { db: db.clone(), next_shard: AtomicU32::new(1) };
    Suite::test_all(builder).await.expect("conformance suite");

    for group in neighbours {
        let mut store = db.log_store(group);
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, None, "{group}");
        assert_eq!(state.last_log_id, Some(log_id(1, 5)), "{group}");
        assert_eq!(store.try_get_log_entries(..).await.expect("read").len(), 5, "{group}");
        assert_eq!(store.read_vote().await.expect("read vote"), Some(Vote::new(7, 1)), "{group}");
    }
}

#[tokio::test]
async fn adjacent_groups_do_not_see_each_other() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");
    let group_a = GroupId::Shard(ShardId(1));
    let group_b = GroupId::Shard(ShardId(2));
    let mut store_a = db.log_store(group_a);
    let mut store_b = db.log_store(group_b);

    append_durably(&mut store_a, (1..=5).map(blank).collect()).await;
    store_a.save_vote(&Vote::new(3, 1)).await.expect("save vote");
    store_a.save_committed(Some(log_id(1, 4))).await.expect("save committed");

    assert_eq!(store_b.get_log_state().await.expect("log state").last_log_id, None);
    assert!(store_b.try_get_log_entries(..).await.expect("read").is_empty());
    assert_eq!(store_b.read_vote().await.expect("read vote"), None);
    assert_eq!(store_b.read_committed().await.expect("read committed"), None);

    // Deleting all of B, and purging A, touch only their own group.
    append_durably(&mut store_b, (1..=3).map(blank).collect()).await;
    store_b.truncate_after(None).await.expect("truncate");
    store_a.purge(log_id(1, 2)).await.expect("purge");
    let entries_a = store_a.try_get_log_entries(..).await.expect("read");
    let indexes: Vec<u64> = entries_a.iter().map(|entry| entry.index()).collect();
    assert_eq!(indexes, vec![3, 4, 5]);
    let state_b = store_b.get_log_state().await.expect("log state");
    assert_eq!((state_b.last_purged_log_id, state_b.last_log_id), (None, None));

    let (mut state_machine_a, _) = db.state_machine(group_a).expect("state machine");
    let (mut state_machine_b, reader_b) = db.state_machine(group_b).expect("state machine");
    state_machine_a
        .apply_entries([normal(
            1,
            Command::CreateSession {
                session_id: session(1),
                shard: ShardId(1),
                created_at_ms: 10,
                agent: None,
                environment: None,
            },
        )])
        .expect("apply");
    assert_eq!(state_machine_b.applied_state().await.expect("applied").0, None);
    assert!(reader_b.session_ids().expect("session ids").is_empty());
}

#[tokio::test]
async fn sessions_and_events_are_applied_with_exact_responses() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");
    let (mut state_machine, reader) = db.state_machine(GROUP).expect("state machine");
    let mut events = reader.subscribe();
    let mut applied = reader.applied();
    assert_eq!(*applied.borrow_and_update(), 0);
    let (alice, bob, nobody) = (session(1), session(2), session(99));

    // One batch: create, two appends to the same session, a retried append.
    let responses = state_machine
        .apply_entries([
            blank(1),
            normal(2, create(alice, 1000)),
            normal(3, append_text(alice, event_id(1), "one", 1001)),
            normal(4, append_text(alice, event_id(2), "two", 1002)),
            normal(5, append_text(alice, event_id(1), "one again", 1003)),
            normal(6, append_text(nobody, event_id(3), "lost", 1004)),
        ])
        .expect("apply");
    let alice_info = |last_seq| new_session_info(alice, 1000, last_seq);
    assert_eq!(
        responses,
        vec![
            CommandResponse::Done,
            CommandResponse::Session { info: alice_info(0), created: true },
            CommandResponse::Appended { seq: 1, duplicate: false },
            CommandResponse::Appended { seq: 2, duplicate: false },
            CommandResponse::Appended { seq: 1, duplicate: true },
            CommandResponse::Rejected(ApiError::NotFound { what: format!("session {nobody}") }),
        ]
    );

    // Later batches see what earlier ones wrote.
    let responses = state_machine
        .apply_entries([
            normal(7, create(alice, 5000)),
            normal(8, append_text(alice, event_id(2), "two again", 5001)),
            normal(9, create(bob, 5002)),
            normal(10, append_text(bob, event_id(1), "bob's first", 5003)),
            normal(11, append_text(alice, event_id(4), "three", 5004)),
        ])
        .expect("apply");
    assert_eq!(
        responses,
        vec![
            CommandResponse::Session { info: alice_info(2), created: false },
            CommandResponse::Appended { seq: 2, duplicate: true },
            CommandResponse::Session { info: new_session_info(bob, 5002, 0), created: true },
            CommandResponse::Appended { seq: 1, duplicate: false },
            CommandResponse::Appended { seq: 3, duplicate: false },
        ]
    );

    let expected_alice = alice_events(alice);
    assert_reads(&reader, (alice, bob, nobody), &expected_alice);
    assert_eq!(reader.session(alice).expect("session"), Some(alice_info(3)));
    let mut sessions = vec![alice, bob];
    sessions.sort();
    assert_eq!(reader.session_ids().expect("session ids"), sessions);

    // Followers saw every new event once, in commit order; readers saw the applied index.
    let mut published = Vec::new();
    while let Ok(event) = events.try_recv() {
        published.push((event.session_id, event.seq));
    }
    assert_eq!(published, vec![(alice, 1), (alice, 2), (bob, 1), (alice, 3)]);
    assert!(applied.has_changed().expect("state machine alive"));
    assert_eq!(*applied.borrow_and_update(), 11);
    assert_eq!(state_machine.applied_state().await.expect("applied").0, Some(log_id(1, 11)));

    // A metadata command is refused by a shard.
    let responses = state_machine
        .apply_entries([normal(12, Command::InitCluster { shards: 4, replication_factor: 3 })])
        .expect("apply");
    assert!(matches!(responses[..], [CommandResponse::Rejected(ApiError::InvalidRequest { .. })]));
    assert_eq!(reader.cluster_config().expect("cluster config"), None);

    // Dropping the state machine closes the followers' channel.
    drop(state_machine);
    assert!(matches!(events.recv().await, Err(tokio::sync::broadcast::error::RecvError::Closed)));
}

/// The events `sessions_and_events_are_applied_with_exact_responses` appends to `alice`.
fn alice_events(alice: SessionId) -> Vec<Event> {
    vec![
        Event {
            session_id: alice,
            seq: 1,
            id: event_id(1),
            processed_at_ms: 1001,
            payload: EventPayload::user_text("one"),
        },
        Event {
            session_id: alice,
            seq: 2,
            id: event_id(2),
            processed_at_ms: 1002,
            payload: EventPayload::user_text("two"),
        },
        Event {
            session_id: alice,
            seq: 3,
            id: event_id(4),
            processed_at_ms: 5004,
            payload: EventPayload::user_text("three"),
        },
    ]
}

/// Reads of every kind see exactly what was applied: pages, a start before
/// the first event, past the end, and sessions that do not exist.
fn assert_reads(
    reader: &StateReader,
    (alice, bob, nobody): (SessionId, SessionId, SessionId),
    expected_alice: &[Event],
) {
    assert_eq!(reader.events(alice, 1, 100).expect("events"), expected_alice);
    assert_eq!(reader.events(alice, 0, 100).expect("events"), expected_alice);
    assert_eq!(reader.events(alice, 2, 1).expect("events"), expected_alice[1..2]);
    assert_eq!(reader.events(alice, 4, 100).expect("events"), vec![]);
    assert_eq!(reader.events(bob, 1, 100).expect("events").len(), 1);
    assert_eq!(reader.events(nobody, 1, 100).expect("events"), vec![]);
    assert_eq!(reader.session(nobody).expect("session"), None);
}

#[tokio::test]
async fn openraft_apply_records_membership_and_applied_state() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");
    let (mut state_machine, reader) = db.state_machine(GROUP).expect("state machine");
    let membership = Membership::new_with_defaults(vec![[1, 2, 3].into()], []);
    let entries = vec![
        Entry::new_membership(log_id(1, 1), membership.clone()),
        normal(2, create(session(1), 7)),
        normal(3, append_text(session(1), event_id(1), "hi", 8)),
    ];
    state_machine.apply(stream::iter(entries.into_iter().map(|entry| Ok((entry, None))))).await.expect("apply");
    let (last_applied, stored) = state_machine.applied_state().await.expect("applied");
    assert_eq!(last_applied, Some(log_id(1, 3)));
    assert_eq!(stored.log_id(), &Some(log_id(1, 1)));
    assert_eq!(stored.membership(), &membership);
    assert_eq!(reader.events(session(1), 1, 10).expect("events").len(), 1);
    assert_eq!(*reader.applied().borrow(), 3);
}

#[tokio::test]
async fn metadata_commands_build_the_cluster_map() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");
    let (mut state_machine, reader) = db.state_machine(GroupId::Metadata).expect("state machine");
    let responses = state_machine
        .apply_entries([
            normal(1, Command::InitCluster { shards: 4, replication_factor: 3 }),
            normal(2, Command::InitCluster { shards: 8, replication_factor: 1 }),
            normal(3, Command::AddNode { node_id: 20, addr: "10.0.0.20:7000".into() }),
            normal(4, Command::AddNode { node_id: 3, addr: "10.0.0.3:7000".into() }),
            normal(5, Command::AddNode { node_id: 20, addr: "10.0.0.21:7000".into() }),
            normal(6, Command::SetPlacement { shard: ShardId(1), replicas: vec![3, 20] }),
            normal(7, Command::SetPlacement { shard: ShardId(0), replicas: vec![20] }),
            normal(8, create(session(1), 1)),
        ])
        .expect("apply");
    assert_eq!(responses[0], CommandResponse::Done);
    assert!(matches!(
        &responses[1],
        CommandResponse::Rejected(ApiError::InvalidRequest { message }) if message.contains("already initialised")
    ));
    assert!(responses[2..7].iter().all(|response| *response == CommandResponse::Done));
    assert!(matches!(responses[7], CommandResponse::Rejected(ApiError::InvalidRequest { .. })));

    assert_eq!(reader.cluster_config().expect("cluster config"), Some((4, 3)));
    assert_eq!(
        reader.nodes().expect("nodes"),
        vec![(3, "10.0.0.3:7000".to_string()), (20, "10.0.0.21:7000".to_string())]
    );
    assert_eq!(reader.placements().expect("placements"), vec![(ShardId(0), vec![20]), (ShardId(1), vec![3, 20])]);
    assert!(reader.session_ids().expect("session ids").is_empty());
}

#[tokio::test]
async fn a_removed_node_is_forgotten_for_good() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");
    let (mut state_machine, reader) = db.state_machine(GroupId::Metadata).expect("state machine");
    let node = |node_id: u64| Command::AddNode { node_id, addr: format!("10.0.0.{node_id}:7000") };
    let place = |shard: u32, replicas: Vec<u64>| Command::SetPlacement { shard: ShardId(shard), replicas };
    // One batch: each command sees the batch's earlier writes.
    let responses = state_machine
        .apply_entries([
            normal(1, Command::InitCluster { shards: 2, replication_factor: 2 }),
            normal(2, node(1)),
            normal(3, node(2)),
            normal(4, node(3)),
            normal(5, place(0, vec![1, 2])),
            normal(6, Command::RemoveNode { node_id: 2 }),
            normal(7, place(0, vec![1, 3])),
            normal(8, Command::RemoveNode { node_id: 2 }),
            normal(9, node(2)),
            normal(10, place(1, vec![2, 3])),
            normal(11, Command::RemoveNode { node_id: 2 }),
            normal(12, Command::RemoveNode { node_id: 9 }),
        ])
        .expect("apply");
    assert!(responses[..5].iter().all(|response| *response == CommandResponse::Done), "{responses:?}");
    assert!(
        matches!(&responses[5], CommandResponse::Rejected(ApiError::InvalidRequest { message })
            if message.contains("shard-0") && message.contains("drain it first")),
        "a placed node was removed: {:?}",
        responses[5]
    );
    assert_eq!(responses[6], CommandResponse::Done);
    assert_eq!(responses[7], CommandResponse::Done);
    assert_eq!(responses[8], CommandResponse::Rejected(ApiError::NodeRemoved { node: 2 }));
    assert_eq!(responses[9], CommandResponse::Rejected(ApiError::NodeRemoved { node: 2 }));
    assert_eq!(responses[10], CommandResponse::Done, "removing again is a retry");
    assert!(matches!(responses[11], CommandResponse::Rejected(ApiError::NotFound { .. })));
    assert_eq!(reader.nodes().expect("nodes").into_iter().map(|(node, _)| node).collect::<Vec<_>>(), vec![1, 3]);
    assert!(reader.is_removed(2).expect("removed"));
    assert!(!reader.is_removed(3).expect("removed"));
    // A later batch reads the removal from the database.
    let responses = state_machine.apply_entries([normal(13, node(2))]).expect("apply");
    assert_eq!(responses[0], CommandResponse::Rejected(ApiError::NodeRemoved { node: 2 }));
}

#[tokio::test]
async fn appended_entries_vote_and_state_survive_reopening() {
    let dir = tempdir();
    let entries: Vec<Entry> =
        vec![blank(1), normal(2, create(session(1), 10)), normal(3, append_text(session(1), event_id(1), "kept", 11))];
    {
        let db = Db::open(dir.path()).expect("open the database");
        let mut store = db.log_store(GROUP);
        append_durably(&mut store, entries.clone()).await;
        store.save_vote(&Vote::new_committed(2, 1)).await.expect("save vote");
        store.save_committed(Some(log_id(1, 3))).await.expect("save committed");
        let (mut state_machine, _) = db.state_machine(GROUP).expect("state machine");
        state_machine.apply_entries(entries.clone()).expect("apply");
    }
    let db = Db::open(dir.path()).expect("reopen the database");
    let mut store = db.log_store(GROUP);
    assert_eq!(store.try_get_log_entries(1..=3).await.expect("read"), entries);
    assert_eq!(store.read_vote().await.expect("read vote"), Some(Vote::new_committed(2, 1)));
    assert_eq!(store.read_committed().await.expect("read committed"), Some(log_id(1, 3)));
    assert_eq!(store.get_log_state().await.expect("log state").last_log_id, Some(log_id(1, 3)));
    let (_state_machine, reader) = db.state_machine(GROUP).expect("state machine");
    assert_eq!(*reader.applied().borrow(), 3);
    assert_eq!(reader.events(session(1), 1, 10).expect("events").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_many_groups_all_become_durable() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");
    let mut tasks = Vec::new();
    for shard in 0..16 {
        let mut store = db.log_store(GroupId::Shard(ShardId(shard)));
        tasks.push(tokio::spawn(async move {
            for index in 1..=20 {
                append_durably(&mut store, vec![blank(index)]).await;
            }
            store.try_get_log_entries(..).await.expect("read").len()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 20);
    }
}

#[tokio::test]
async fn a_snapshot_moves_a_group_state_to_another_db_and_group() {
    let source_dir = tempdir();
    let target_dir = tempdir();
    let source_db = Db::open(source_dir.path()).expect("open the source database");
    let (mut source, source_reader) = source_db.state_machine(GROUP).expect("state machine");
    source
        .apply_entries([
            Entry::new_membership(log_id(1, 1), Membership::new_with_defaults(vec![[1, 2].into()], [])),
            normal(2, create(session(1), 10)),
            normal(3, create(session(2), 11)),
            normal(4, append_text(session(1), event_id(1), "a", 12)),
            normal(5, append_text(session(2), event_id(1), "b", 13)),
            normal(6, append_text(session(1), event_id(2), "c", 14)),
        ])
        .expect("apply");
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.expect("build snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 6)));
    // Applying after the builder was made does not change the built snapshot.
    let mut later_builder = source.get_snapshot_builder().await;
    source.apply_entries([normal(7, append_text(session(2), event_id(2), "d", 15))]).expect("apply");
    let later = later_builder.build_snapshot().await.expect("build snapshot");
    assert_eq!(later.meta.last_log_id, Some(log_id(1, 6)));
    let current = source.get_current_snapshot().await.expect("current snapshot").expect("a snapshot was built");
    assert_eq!(current.meta, snapshot.meta);

    let target_group = GroupId::Shard(ShardId(9));
    {
        let target_db = Db::open(target_dir.path()).expect("open the target database");
        let (mut target, target_reader) = target_db.state_machine(target_group).expect("state machine");
        // State the snapshot replaces.
        target
            .apply_entries([normal(
                1,
                Command::CreateSession {
                    session_id: session(77),
                    shard: ShardId(9),
                    created_at_ms: 1,
                    agent: None,
                    environment: None,
                },
            )])
            .expect("apply");
        target.install_snapshot(&current.meta, current.snapshot.clone()).await.expect("install snapshot");
        assert_eq!(*target_reader.applied().borrow(), 6);
    }

    // Installing is durable: check through a reopened database.
    let target_db = Db::open(target_dir.path()).expect("reopen the target database");
    let (mut target, target_reader) = target_db.state_machine(target_group).expect("state machine");
    assert_eq!(
        target.applied_state().await.expect("applied"),
        (snapshot.meta.last_log_id, snapshot.meta.last_membership.clone())
    );
    assert_eq!(target_reader.session_ids().expect("session ids"), vec![session(1), session(2)]);
    // The target holds the state as of the snapshot, under its own group.
    let info = |id, created_at_ms, last_seq| new_session_info(id, created_at_ms, last_seq);
    assert_eq!(target_reader.session(session(1)).expect("session"), Some(info(session(1), 10, 2)));
    assert_eq!(target_reader.session(session(2)).expect("session"), Some(info(session(2), 11, 1)));
    assert_eq!(target_reader.session(session(77)).expect("session"), None);
    assert_eq!(
        target_reader.events(session(1), 1, 10).expect("events"),
        source_reader.events(session(1), 1, 10).expect("events")
    );
    assert_eq!(target_reader.events(session(2), 1, 10).expect("events").len(), 1);
    let installed =
        target.get_current_snapshot().await.expect("current snapshot").expect("the installed snapshot is current");
    assert_eq!(installed.meta, snapshot.meta);
    assert_eq!(installed.snapshot, snapshot.snapshot);
}

/// Writes `value` under `key` of a column family with RocksDB directly,
/// while no `Db` has the directory open.
fn put_raw(path: &Path, column_family: &str, key: &[u8], value: &[u8]) {
    let options = rocksdb::Options::default();
    let families = ["log", "raft", "state", "snapshot"];
    let rocks = rocksdb::DB::open_cf(&options, path, families).expect("open with rocksdb");
    let handle = rocks.cf_handle(column_family).expect("column family");
    rocks.put_cf(handle, key, value).expect("put");
}

fn group_key(group: GroupId, rest: &[u8]) -> Vec<u8> {
    let mut key = group.storage_key().to_be_bytes().to_vec();
    key.extend_from_slice(rest);
    key
}

#[tokio::test]
async fn corrupt_records_are_errors_not_panics() {
    let dir = tempdir();
    {
        let db = Db::open(dir.path()).expect("open the database");
        let mut store = db.log_store(GROUP);
        append_durably(&mut store, (1..=3).map(blank).collect()).await;
        let (mut state_machine, _) = db.state_machine(GROUP).expect("state machine");
        state_machine.apply_entries([normal(1, create(session(1), 1))]).expect("apply");
    }
    let garbage = b"\xff\xfe not bincode";
    put_raw(dir.path(), "log", &group_key(GROUP, &2u64.to_be_bytes()), garbage);
    put_raw(dir.path(), "raft", &group_key(GROUP, &[1]), garbage);
    let mut session_key = group_key(GROUP, &[1]);
    session_key.extend_from_slice(&session(1).0);
    put_raw(dir.path(), "state", &session_key, garbage);

    let db = Db::open(dir.path()).expect("reopen the database");
    let mut store = db.log_store(GROUP);
    let error = store.try_get_log_entries(1..=3).await.expect_err("a corrupt entry is an error");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("log entry 2"), "{error}");
    // Entries around the corrupt one are still readable.
    assert_eq!(store.try_get_log_entries(3..).await.expect("read").len(), 1);
    let error = store.read_vote().await.expect_err("a corrupt vote is an error");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);

    let (_state_machine, reader) = db.state_machine(GROUP).expect("state machine");
    assert!(matches!(reader.session(session(1)), Err(agentd_raft::Error::Corrupt { .. })));

    // A corrupt last entry makes the log state unreadable rather than wrong.
    drop((store, reader, _state_machine, db));
    put_raw(dir.path(), "log", &group_key(GROUP, &3u64.to_be_bytes()), garbage);
    let db = Db::open(dir.path()).expect("reopen the database");
    let error = db.log_store(GROUP).get_log_state().await.expect_err("a corrupt last entry is an error");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn corrupt_snapshot_data_is_refused() {
    let dir = tempdir();
    let db = Db::open(dir.path()).expect("open the database");
    let (mut state_machine, _) = db.state_machine(GROUP).expect("state machine");
    let meta =
        agentd_raft::types::SnapshotMeta { last_log_id: Some(log_id(1, 5)), last_membership: Default::default() };
    let error = state_machine.install_snapshot(&meta, b"garbage".to_vec()).await.expect_err("garbage is refused");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert_eq!(state_machine.applied_state().await.expect("applied").0, None);
}

/// The info of an idle session without an agent on [`SHARD`].
fn new_session_info(session_id: SessionId, created_at_ms: u64, last_seq: u64) -> SessionInfo {
    SessionInfo {
        session_id,
        shard: SHARD,
        created_at_ms,
        last_seq,
        agent: None,
        environment: None,
        status: agentd_protocol::api::SessionStatus::Idle,
        epoch: 0,
        pending_actions: Vec::new(),
        stop_reason: None,
    }
}

/// A store written by an earlier format (data but no format record) or a
/// later one is refused with the formats named, never read as if it were
/// this build's.
#[tokio::test]
async fn a_store_of_another_format_is_refused() {
    let dir = tempdir();
    {
        let db = Db::open(dir.path()).expect("open the database");
        append_durably(&mut db.log_store(GROUP), vec![blank(1)]).await;
    }
    let format_key = [0u8];
    let rewrite_format = |value: Option<u32>| {
        let disk = RocksDisk::open(dir.path()).expect("open the disk");
        let mut batch = Batch::default();
        match value {
            Some(format) => batch.put(Cf::Raft, format_key, agentd_protocol::frame::encode_body(&format).unwrap()),
            None => batch.delete(Cf::Raft, format_key),
        }
        disk.write(batch).expect("rewrite the format record");
    };
    Db::open(dir.path()).expect("this build's own format opens again");

    rewrite_format(None);
    match Db::open(dir.path()) {
        Err(error @ agentd_raft::Error::UnsupportedFormat { found: 1, supported: STORE_FORMAT, .. }) => {
            assert!(error.to_string().contains("under a new node id"), "{error}");
        }
        other => panic!("a format 1 store must be refused, got {:?}", other.map(|_| ())),
    }

    rewrite_format(Some(STORE_FORMAT + 1));
    assert!(matches!(
        Db::open(dir.path()),
        Err(agentd_raft::Error::UnsupportedFormat { found, .. }) if found == STORE_FORMAT + 1
    ));
}
