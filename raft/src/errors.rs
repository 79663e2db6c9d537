//! Translation of openraft's errors into the wire's [`ApiError`], in one place.

use agentd_protocol::ApiError;
use openraft::errors::{ClientWriteError, RaftError};

use crate::types::TypeConfig;

/// What a caller of a failed proposal should be told.
pub fn write_error(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ApiError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ApiError::NotLeader { leader: forward.leader_id.zip(forward.leader_node.map(|node| node.addr)) }
        }
        // The entry may or may not commit under the new leader; appends are
        // idempotent by event id, so the caller retries with the same id.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            ApiError::Unavailable { message: "leader changed while committing; retry with the same event id".into() }
        }
        RaftError::APIError(other) => ApiError::Unavailable { message: other.to_string() },
        RaftError::Fatal(fatal) => ApiError::Unavailable { message: format!("group is stopping: {fatal}") },
    }
}
