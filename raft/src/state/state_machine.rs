//! The state machine of one group: sessions and their events on a shard, the
//! cluster's shape on the metadata group.
//!
//! The state lives in the `state` column family, not in memory, so applying
//! is a RocksDB write and a snapshot is a scan of the group's key range.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::disk::Batch;
use agentd_protocol::event::Event;
use agentd_protocol::ids::GroupId;
use agentd_protocol::limits::{FOLLOW_BUFFER_EVENTS_MAX, WRITE_BATCH_ENTRIES_MAX};
use futures_util::{Stream, StreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::OptionalSend;
use tokio::sync::{broadcast, watch};

use super::apply::{AppliedBatch, ApplyBatch};
use super::snapshot::{self, SnapshotBuilder};
use super::StateReader;
use crate::state::group_state::{AppliedState, GroupState};
use crate::store::codec::{encode, io_error};
use crate::store::keys::{self, SNAPSHOT_CF, STATE_CF};
use crate::store::Db;
use agentd_protocol::command::CommandResponse;

use crate::types::{Entry, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::Error;

/// The state machine of one Raft group. Applied events are published to the
/// group's [`StateReader`]s.
pub struct StateMachine {
    state: GroupState,
    events: broadcast::Sender<Event>,
    applied: watch::Sender<u64>,
    current_snapshot_lock: Arc<Mutex<()>>,
}

impl StateMachine {
    pub(crate) fn open(db: Db, group: GroupId) -> Result<(StateMachine, StateReader), Error> {
        let state = GroupState::new(db, group);
        let (events, _) = broadcast::channel(FOLLOW_BUFFER_EVENTS_MAX);
        let (applied, applied_receiver) = watch::channel(state.applied()?.index());
        let reader = StateReader::new(state.clone(), events.downgrade(), applied_receiver);
        let state_machine = StateMachine { state, events, applied, current_snapshot_lock: Arc::new(Mutex::new(())) };
        Ok((state_machine, reader))
    }

    /// The group this state machine belongs to.
    pub fn group(&self) -> GroupId {
        self.state.group()
    }

    /// Applies entries in log order and returns the response to each: the
    /// logic of [`RaftStateMachine::apply`] for callers that have no Raft
    /// proposer waiting (tests, tools). Effects are returned as data so that
    /// they can be asserted exactly.
    pub fn apply_entries(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<Vec<CommandResponse>, Error> {
        let mut batch = ApplyBatch::new(&self.state, self.state.applied()?);
        let mut responses = Vec::new();
        for entry in entries {
            responses.push(batch.apply(entry)?);
            if batch.len() >= WRITE_BATCH_ENTRIES_MAX {
                let applied = self.commit(batch)?;
                batch = ApplyBatch::new(&self.state, applied);
            }
        }
        if batch.len() > 0 {
            self.commit(batch)?;
        }
        Ok(responses)
    }

    /// Writes a batch, then tells readers. Nothing is announced before it is
    /// written, so a reader never sees an event it cannot read back.
    fn commit(&self, batch: ApplyBatch<'_>) -> Result<AppliedState, Error> {
        let AppliedBatch { applied, events } = batch.commit()?;
        metrics::counter!("agentd_events_applied_total").increment(events.len() as u64);
        for event in events {
            // No subscriber is not an error: followers come and go.
            let _ = self.events.send(event);
        }
        self.applied.send_replace(applied.index());
        Ok(applied)
    }

    fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), Error> {
        let records = snapshot::decode_records(&self.state, &data)?;
        let group = self.state.group();
        let db = self.state.db();
        let prefix = keys::group_prefix(group);
        let applied = AppliedState { last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        let current = snapshot::encode_record(&Snapshot { meta: meta.clone(), snapshot: data })?;

        // One batch replaces the whole state, so a crash leaves either the
        // old state or the new one, never a mix.
        let mut batch = Batch::default();
        batch.delete_range(STATE_CF, prefix.clone(), keys::group_end(group));
        for (suffix, value) in records {
            let mut key = prefix.clone();
            key.extend_from_slice(&suffix);
            batch.put(STATE_CF, key, value);
        }
        batch.put(STATE_CF, keys::applied_key(group), encode(&applied)?);
        batch.put(SNAPSHOT_CF, keys::snapshot_key(group), current);

        let _guard = self.current_snapshot_lock.lock().unwrap_or_else(PoisonError::into_inner);
        db.write(batch)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.state.applied().map_err(io_error)?;
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let applied = self.state.applied().map_err(io_error)?;
        let mut batch = ApplyBatch::new(&self.state, applied);
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = batch.apply(entry).map_err(io_error)?;
            // Entries without a waiting proposer (on followers, blanks,
            // replays) need no response.
            if let Some(responder) = responder {
                responders.push((responder, response));
            }
            // Bound the size of one write batch; the overlay restarts from
            // what has been written.
            if batch.len() >= WRITE_BATCH_ENTRIES_MAX {
                let applied = self.commit(batch).map_err(io_error)?;
                respond(&mut responders);
                batch = ApplyBatch::new(&self.state, applied);
            }
        }
        if batch.len() > 0 {
            self.commit(batch).map_err(io_error)?;
            respond(&mut responders);
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::new(self.state.clone(), Arc::clone(&self.current_snapshot_lock))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        self.install(meta, snapshot).map_err(io_error)?;
        // A follower acknowledges an installed snapshot, so it must be durable.
        self.state.db().synced().await?;
        let index = meta.last_log_id.as_ref().map_or(0, |log_id| log_id.index);
        self.applied.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        snapshot::read_current(&self.state).map_err(io_error)
    }
}

/// Answers proposers, in log order, once their entries are written.
fn respond(responders: &mut Vec<(ApplyResponder<TypeConfig>, CommandResponse)>) {
    for (responder, response) in responders.drain(..) {
        responder.send(response);
    }
}
