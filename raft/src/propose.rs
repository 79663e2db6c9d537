//! The one door into Raft for a command: propose it to a group this node
//! leads, wait until it is committed and applied, and answer what the state
//! machine answered, with every openraft failure translated for the caller.

use agentd_protocol::command::{Command, CommandResponse};
use agentd_protocol::ApiError;
use openraft::errors::{ClientWriteError, RaftError};

use crate::host::GroupHandle;
use crate::types::TypeConfig;

/// Proposes `command` to `group` and returns the state machine's answer; a
/// command the state machine rejected is the error it gave.
pub async fn propose(group: &GroupHandle, command: Command) -> Result<CommandResponse, ApiError> {
    match group.raft.client_write(command).await {
        Ok(response) => match response.data {
            CommandResponse::Rejected(error) => Err(error),
            other => Ok(other),
        },
        Err(error) => Err(write_error(error)),
    }
}

/// What a caller of a failed proposal should be told.
fn write_error(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ApiError {
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
