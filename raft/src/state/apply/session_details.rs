//! Shard commands about what the API shows of a session besides its log:
//! its workspace, title, labels and vaults, its archiving and its deletion.

use agentd_protocol::api::SessionStatus;
use agentd_protocol::command::CommandResponse;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::resource::{patch_metadata, CreationCursor, SessionDetails, SessionUpdate, SessionView};
use agentd_protocol::ApiError;

use super::ApplyBatch;
use crate::state::group_state::SessionRecord;
use crate::store::keys::{self, Index};
use crate::Error;

fn not_found(session_id: SessionId) -> CommandResponse {
    CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") })
}

impl ApplyBatch<'_> {
    fn details(&self, session_id: SessionId, record: &SessionRecord) -> Result<SessionDetails, Error> {
        match self.session_details.get(&session_id) {
            Some(details) => Ok(details.clone()),
            None => self.state.session_details(session_id, record.created_at_ms),
        }
    }

    fn put_details(&mut self, session_id: SessionId, details: SessionDetails) -> Result<(), Error> {
        self.put(keys::session_details_key(self.state.group(), session_id), &details)?;
        self.session_details.insert(session_id, details);
        Ok(())
    }

    /// The session and its details if it exists in `workspace` and is not deleted.
    fn owned_session(
        &self,
        session_id: SessionId,
        workspace: &str,
    ) -> Result<Option<(SessionRecord, SessionDetails)>, Error> {
        let Some(record) = self.session(session_id)? else { return Ok(None) };
        let details = self.details(session_id, &record)?;
        Ok((details.workspace == workspace && details.deleted_at_ms.is_none()).then_some((record, details)))
    }

    fn view(
        &self,
        session_id: SessionId,
        record: &SessionRecord,
        details: SessionDetails,
    ) -> Result<SessionView, Error> {
        let usage = match self.session_usage.get(&session_id) {
            Some(usage) => *usage,
            None => self.state.session_usage(session_id)?,
        };
        Ok(SessionView { info: record.info(session_id), details, usage })
    }

    /// Creates a session with its details and indexes it for its workspace's
    /// lists. Creating it again answers the existing session, unchanged.
    pub(super) fn create_session_in(
        &mut self,
        session_id: SessionId,
        record: SessionRecord,
        details: SessionDetails,
    ) -> Result<CommandResponse, Error> {
        if let Some(existing) = self.session(session_id)? {
            let existing_details = self.details(session_id, &existing)?;
            if existing_details.workspace != details.workspace {
                return Ok(CommandResponse::Rejected(ApiError::Conflict {
                    message: format!("session id {session_id} is taken"),
                }));
            }
            return Ok(CommandResponse::Session { info: existing.info(session_id), created: false });
        }
        let position = CreationCursor { created_at_ms: record.created_at_ms, id: session_id.0 };
        self.put(Index::sessions().key(self.state.group(), &details.workspace, position), &())?;
        let info = record.info(session_id);
        self.put_session(session_id, record)?;
        self.put_details(session_id, details)?;
        Ok(CommandResponse::Session { info, created: true })
    }

    pub(super) fn update_session(
        &mut self,
        session_id: SessionId,
        workspace: &str,
        update: SessionUpdate,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let Some((record, mut details)) = self.owned_session(session_id, workspace)? else {
            return Ok(not_found(session_id));
        };
        if let Some(title) = update.title {
            details.title = title;
        }
        details.metadata = patch_metadata(&details.metadata, &update.metadata);
        details.updated_at_ms = at_ms;
        self.put_details(session_id, details.clone())?;
        Ok(CommandResponse::SessionView(Box::new(self.view(session_id, &record, details)?)))
    }

    pub(super) fn archive_session(
        &mut self,
        session_id: SessionId,
        workspace: &str,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let Some((record, mut details)) = self.owned_session(session_id, workspace)? else {
            return Ok(not_found(session_id));
        };
        if details.archived_at_ms.is_none() {
            details.archived_at_ms = Some(at_ms);
            details.updated_at_ms = at_ms;
            self.put_details(session_id, details.clone())?;
        }
        Ok(CommandResponse::SessionView(Box::new(self.view(session_id, &record, details)?)))
    }

    /// Deletes a session: a new epoch fences a running orchestrator, the log
    /// ends with `session.deleted` (which also terminates it), and the
    /// session leaves its workspace's index. Deleting it again answers the
    /// same sequence number.
    pub(super) fn delete_session(
        &mut self,
        session_id: SessionId,
        workspace: &str,
        event_id: EventId,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.session(session_id)? else { return Ok(not_found(session_id)) };
        let mut details = self.details(session_id, &record)?;
        if details.workspace != workspace {
            return Ok(not_found(session_id));
        }
        if details.deleted_at_ms.is_some() {
            return Ok(CommandResponse::Appended { seq: record.last_seq, duplicate: true });
        }
        let position = CreationCursor { created_at_ms: record.created_at_ms, id: session_id.0 };
        self.batch.delete(keys::STATE_CF, Index::sessions().key(self.state.group(), workspace, position));
        details.deleted_at_ms = Some(at_ms);
        details.updated_at_ms = at_ms;
        self.put_details(session_id, details)?;
        record.epoch += 1;
        record.status = SessionStatus::Terminated;
        record.pending_actions.clear();
        let seq = self.write_event(session_id, record, event_id, EventPayload::SessionDeleted, at_ms)?;
        Ok(CommandResponse::Appended { seq, duplicate: false })
    }
}
