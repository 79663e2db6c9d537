//! Snapshots: a group's whole state, as the list of its `(key, value)`
//! records without the group prefix, and the record of the group's current
//! snapshot in the `snapshot` column family.
//!
//! The stored record is the encoded metadata behind a 4-byte big-endian
//! length, followed by the snapshot data as is. Keeping the data outside the
//! bincode body lets a snapshot as large as the frame limit be stored, and
//! lets the metadata be read without decoding the data.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::RaftSnapshotBuilder;

use crate::state::group_state::{GroupState, Record};
use crate::store::codec::{decode, encode, io_error};
use crate::store::disk::Batch;
use crate::store::keys::{self, SNAPSHOT_CF};
use crate::types::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig};
use crate::Error;

const META_LEN_BYTES: usize = 4;

/// Builds the snapshot of a group's current state, read from one consistent
/// view of the database.
pub(crate) fn prepare(state: &GroupState) -> Result<Snapshot, Error> {
    let (applied, records) = state.export()?;
    Ok(Snapshot {
        meta: SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.membership },
        snapshot: encode(&records)?,
    })
}

/// Decodes snapshot data into records, refusing keys that break the key
/// layout (a snapshot comes from another node and is not trusted).
pub(crate) fn decode_records(state: &GroupState, data: &SnapshotData) -> Result<Vec<Record>, Error> {
    let records: Vec<Record> = decode(|| format!("snapshot data for {}", state.group()), data)?;
    if let Some((key, _)) = records.iter().find(|(key, _)| key.is_empty() || key.len() > keys::SUFFIX_BYTES_MAX) {
        return Err(Error::Corrupt {
            what: format!("snapshot data for {}", state.group()),
            message: format!("record key of {} bytes", key.len()),
        });
    }
    Ok(records)
}

pub(crate) fn encode_record(snapshot: &Snapshot) -> Result<Vec<u8>, Error> {
    let meta = encode(&snapshot.meta)?;
    let mut record = Vec::with_capacity(META_LEN_BYTES + meta.len() + snapshot.snapshot.len());
    // `encode` bounds a body by the frame limit, far below `u32::MAX`.
    record.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    record.extend_from_slice(&meta);
    record.extend_from_slice(&snapshot.snapshot);
    Ok(record)
}

/// Splits a stored record into its encoded metadata and its data.
fn split_record<'r>(state: &GroupState, record: &'r [u8]) -> Result<(&'r [u8], &'r [u8]), Error> {
    let corrupt = |message: String| Error::Corrupt { what: format!("current snapshot of {}", state.group()), message };
    let header: [u8; META_LEN_BYTES] = record
        .get(..META_LEN_BYTES)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| corrupt(format!("record of {} bytes has no header", record.len())))?;
    let meta_len = u32::from_be_bytes(header) as usize;
    let rest = &record[META_LEN_BYTES..];
    if rest.len() < meta_len {
        return Err(corrupt(format!("metadata of {meta_len} bytes in a record of {} bytes", record.len())));
    }
    Ok(rest.split_at(meta_len))
}

fn decode_meta(state: &GroupState, meta: &[u8]) -> Result<SnapshotMeta, Error> {
    decode(|| format!("current snapshot metadata of {}", state.group()), meta)
}

/// The group's current snapshot, if it has one.
pub(crate) fn read_current(state: &GroupState) -> Result<Option<Snapshot>, Error> {
    let Some(record) = state.db().get(SNAPSHOT_CF, &keys::snapshot_key(state.group()))? else {
        return Ok(None);
    };
    let (meta, data) = split_record(state, &record)?;
    Ok(Some(Snapshot { meta: decode_meta(state, meta)?, snapshot: data.to_vec() }))
}

/// The metadata of the group's current snapshot, without its data.
fn read_current_meta(state: &GroupState) -> Result<Option<SnapshotMeta>, Error> {
    let Some(record) = state.db().get(SNAPSHOT_CF, &keys::snapshot_key(state.group()))? else {
        return Ok(None);
    };
    let (meta, _) = split_record(state, &record)?;
    decode_meta(state, meta).map(Some)
}

/// A snapshot prepared when openraft asked for a builder, so that it is the
/// state of that moment even though openraft builds it later, on another
/// task, while the state machine goes on applying.
pub struct SnapshotBuilder {
    state: GroupState,
    /// Serialises replacing the group's current snapshot between builders and
    /// `install_snapshot`.
    current_snapshot_lock: Arc<Mutex<()>>,
    prepared: Result<Snapshot, io::Error>,
}

impl SnapshotBuilder {
    pub(crate) fn new(state: GroupState, current_snapshot_lock: Arc<Mutex<()>>) -> SnapshotBuilder {
        let prepared = prepare(&state).map_err(io_error);
        SnapshotBuilder { state, current_snapshot_lock, prepared }
    }

    /// Stores `snapshot` as the current one unless a newer one is stored
    /// already: a builder may finish after a later snapshot was installed.
    fn store_if_newer(&self, snapshot: &Snapshot) -> Result<(), Error> {
        let _guard = self.current_snapshot_lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = read_current_meta(&self.state)? {
            if current.last_log_id >= snapshot.meta.last_log_id {
                return Ok(());
            }
        }
        let mut batch = Batch::default();
        batch.put(SNAPSHOT_CF, keys::snapshot_key(self.state.group()), encode_record(snapshot)?);
        // Unsynced: the state it was built from is already in the database,
        // and the WAL keeps writes in order, so a log purge that relies on
        // this snapshot never survives a crash that this write does not.
        self.state.db().write(batch)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let snapshot = match &self.prepared {
            Ok(snapshot) => snapshot.clone(),
            Err(error) => return Err(io::Error::new(error.kind(), error.to_string())),
        };
        self.store_if_newer(&snapshot).map_err(io_error)?;
        Ok(snapshot)
    }
}
