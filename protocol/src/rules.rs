//! Session rules that are pure functions of a session's state, shared by
//! the state machine (which enforces them on every replica) and the
//! session actor (which refuses bad input before it costs a Raft round).

use crate::api::SessionStatus;
use crate::event::EventPayload;
use crate::ids::EventId;
use crate::ApiError;

/// Checks a client's event against its session. Returns the pending tool
/// use the event answers, if it answers one.
pub fn admit_user_event(
    status: SessionStatus,
    pending_actions: &[EventId],
    payload: &EventPayload,
) -> Result<Option<EventId>, ApiError> {
    if !payload.is_user_event() {
        return Err(ApiError::InvalidRequest { message: format!("clients may not append {}", payload.type_name()) });
    }
    if status == SessionStatus::Terminated {
        return Err(ApiError::InvalidRequest { message: "the session is terminated".into() });
    }
    let answered = match (payload, payload.confirmation()) {
        (_, Some((tool_use_id, _, _))) => tool_use_id,
        (EventPayload::UserCustomToolResult { custom_tool_use_id, .. }, None) => *custom_tool_use_id,
        _ => return Ok(None),
    };
    if !pending_actions.contains(&answered) {
        return Err(ApiError::InvalidRequest {
            message: format!("{} answers {answered}, which is not waiting for an answer", payload.type_name()),
        });
    }
    Ok(Some(answered))
}
