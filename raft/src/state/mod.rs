//! What a group's committed entries mean: the state machine that openraft
//! drives (`state_machine.rs`), the deterministic command logic every
//! replica runs (`apply/`), the group's state as stored (`group_state.rs`),
//! the reader that serves queries and follows applies (`reader.rs`), and
//! snapshots of the whole state (`snapshot.rs`).
//!
//! **Invariant:** nothing here keeps a copy of the log or of the state in
//! memory; the store is the only source, so every clone of a reader sees
//! every completed write.

mod apply;
pub(crate) mod group_state;
mod queries;
mod reader;
pub(crate) mod snapshot;
mod state_machine;

pub use group_state::legacy_credential_id;
pub use reader::StateReader;
pub use snapshot::SnapshotBuilder;
pub use state_machine::StateMachine;
