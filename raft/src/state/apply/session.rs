//! Shard commands: creating sessions, appending their events, and the
//! session rules every replica enforces (epochs fence orchestrators; client
//! events must answer what is pending; nothing follows a termination).

use agentd_protocol::api::SessionStatus;
use agentd_protocol::approval::Decider;
use agentd_protocol::command::CommandResponse;
use agentd_protocol::event::{Confirmation, Event, EventPayload, StopReason};
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::resource::SessionUsageTotals;
use agentd_protocol::ApiError;

use super::ApplyBatch;
use crate::state::group_state::SessionRecord;
use crate::store::keys;
use crate::Error;

impl ApplyBatch<'_> {
    pub(super) fn session(&self, session_id: SessionId) -> Result<Option<SessionRecord>, Error> {
        match self.sessions.get(&session_id) {
            Some(record) => Ok(Some(record.clone())),
            None => self.state.session(session_id),
        }
    }

    pub(super) fn put_session(&mut self, session_id: SessionId, record: SessionRecord) -> Result<(), Error> {
        self.put(keys::session_key(self.state.group(), session_id), &record)?;
        self.sessions.insert(session_id, record);
        Ok(())
    }

    pub(super) fn event_seq(&self, session_id: SessionId, event_id: EventId) -> Result<Option<u64>, Error> {
        match self.event_seqs.get(&(session_id, event_id)) {
            Some(&seq) => Ok(Some(seq)),
            None => self.state.event_seq(session_id, event_id),
        }
    }

    pub(super) fn create_session(
        &mut self,
        session_id: SessionId,
        record: SessionRecord,
    ) -> Result<CommandResponse, Error> {
        if let Some(existing) = self.session(session_id)? {
            return Ok(CommandResponse::Session { info: existing.info(session_id), created: false });
        }
        let info = record.info(session_id);
        self.put_session(session_id, record)?;
        Ok(CommandResponse::Session { info, created: true })
    }

    pub(super) fn claim_epoch(&mut self, session_id: SessionId) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        record.epoch += 1;
        let epoch = record.epoch;
        self.put_session(session_id, record)?;
        Ok(CommandResponse::Epoch(epoch))
    }

    pub(super) fn reschedule(
        &mut self,
        session_id: SessionId,
        event_id: EventId,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        if let Some(seq) = self.event_seq(session_id, event_id)? {
            return Ok(CommandResponse::Appended { seq, duplicate: true });
        }
        let Some(record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        let dead_lettered =
            record.status == SessionStatus::Idle && record.stop_reason == Some(StopReason::RetriesExhausted);
        if !dead_lettered {
            return Ok(CommandResponse::Rejected(ApiError::InvalidRequest {
                message: format!("session {session_id} is not dead-lettered (idle after its retries ran out)"),
            }));
        }
        // Written by the runtime on the operator's behalf, in the current epoch.
        let epoch = Some(record.epoch);
        self.append(session_id, event_id, EventPayload::SessionStatusRescheduled, at_ms, epoch)
    }

    pub(super) fn terminate(
        &mut self,
        session_id: SessionId,
        event_id: EventId,
        at_ms: u64,
    ) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        if record.status == SessionStatus::Terminated {
            // A retried request: nothing comes after the terminated event, so it is the last.
            return Ok(CommandResponse::Appended { seq: record.last_seq, duplicate: true });
        }
        // A new epoch: a running orchestrator's next append is refused as stale.
        record.epoch += 1;
        let epoch = record.epoch;
        self.put_session(session_id, record)?;
        self.append(session_id, event_id, EventPayload::SessionStatusTerminated, at_ms, Some(epoch))
    }

    pub(super) fn append(
        &mut self,
        session_id: SessionId,
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
        epoch: Option<u64>,
    ) -> Result<CommandResponse, Error> {
        let Some(mut record) = self.session(session_id)? else {
            return Ok(CommandResponse::Rejected(ApiError::NotFound { what: format!("session {session_id}") }));
        };
        // The event id is the idempotency key: a retried append gets the
        // sequence number of the first one.
        if let Some(seq) = self.event_seq(session_id, event_id)? {
            return Ok(CommandResponse::Appended { seq, duplicate: true });
        }
        let payload = match epoch {
            None => match self.check_answer(session_id, &record, payload)? {
                Ok(payload) => payload,
                Err(error) => return Ok(CommandResponse::Rejected(error)),
            },
            Some(_) => payload,
        };
        let verdict = match epoch {
            None => admit_user_event(&mut record, &payload),
            Some(epoch) => admit_runtime_event(&mut record, &payload, epoch, self.state.db().bugs().skip_epoch_fence),
        };
        if let Err(error) = verdict {
            return Ok(CommandResponse::Rejected(error));
        }
        let seq = self.write_event(session_id, record, event_id, payload, processed_at_ms)?;
        Ok(CommandResponse::Appended { seq, duplicate: false })
    }

    /// Writes the next event of a session whose `record` the rules admitted
    /// it to (its status already moved), and counts its usage; returns its seq.
    pub(super) fn write_event(
        &mut self,
        session_id: SessionId,
        mut record: SessionRecord,
        event_id: EventId,
        payload: EventPayload,
        processed_at_ms: u64,
    ) -> Result<u64, Error> {
        let seq = record.last_seq + 1;
        self.count_usage(session_id, &payload)?;
        // Timestamps never go backwards within a session: a leader whose
        // clock is behind the previous one's stamps no earlier than the last
        // event (or the session's creation). Every replica computes the same.
        let processed_at_ms = processed_at_ms.max(self.last_processed_at_ms(session_id, &record)?);
        let event = Event { session_id, seq, id: event_id, processed_at_ms, payload };
        let group = self.state.group();
        self.put(keys::event_key(group, session_id, seq), &event)?;
        self.put(keys::event_id_key(group, session_id, event_id), &seq)?;
        self.event_seqs.insert((session_id, event_id), seq);
        record.last_seq = seq;
        self.put_session(session_id, record)?;
        self.events.push(event);
        Ok(seq)
    }

    /// The committed event at `seq`: from this batch if it was applied in it.
    fn event_at(&self, session_id: SessionId, seq: u64) -> Result<Option<Event>, Error> {
        let in_batch = self.events.iter().find(|event| event.session_id == session_id && event.seq == seq);
        match in_batch {
            Some(event) => Ok(Some(event.clone())),
            None => self.state.event(session_id, seq),
        }
    }

    /// Checks a client's answer to a tool use against what the workspace's
    /// approval policy decided about it (recorded in the tool use), and
    /// records the policy version in a confirmation: a use reserved for
    /// approvers is answered only by a key with the approver role, and a
    /// flagged custom tool's result is taken only once it was allowed.
    fn check_answer(
        &self,
        session_id: SessionId,
        record: &SessionRecord,
        payload: EventPayload,
    ) -> Result<Result<EventPayload, ApiError>, Error> {
        let answered = match &payload {
            EventPayload::UserToolConfirmation { tool_use_id, .. }
            | EventPayload::UserToolDecision { tool_use_id, .. } => *tool_use_id,
            EventPayload::UserCustomToolResult { custom_tool_use_id, .. } => *custom_tool_use_id,
            _ => return Ok(Ok(payload)),
        };
        let Some(seq) = self.event_seq(session_id, answered)? else { return Ok(Ok(payload)) };
        let gate = match self.event_at(session_id, seq)?.map(|event| event.payload) {
            Some(EventPayload::AgentMcpToolUse { gate, .. }) => gate,
            Some(EventPayload::AgentGatedToolUse { gate, custom, .. }) => {
                if custom && matches!(payload, EventPayload::UserCustomToolResult { .. }) {
                    return Ok(self
                        .allowed_since(session_id, answered, seq, record.last_seq)?
                        .then_some(payload)
                        .ok_or(ApiError::InvalidRequest {
                            message: format!(
                                "custom tool use {answered} waits for the confirmation the workspace's approval policy \
                                 asks for (version {}) before its result",
                                gate.policy_version
                            ),
                        }));
                }
                Some(gate)
            }
            _ => None,
        };
        let (result, deny_message, decided_by) = match payload {
            EventPayload::UserToolConfirmation { result, deny_message, .. } => (result, deny_message, None),
            EventPayload::UserToolDecision { result, deny_message, decided_by, .. } => {
                (result, deny_message, decided_by)
            }
            other => return Ok(Ok(other)),
        };
        if let Some(gate) = &gate {
            if !Decider::may_answer(decided_by.as_ref(), gate) {
                let who = decided_by.as_ref().map_or("a node's own caller".to_string(), |decider| {
                    format!("key {:?} ({}) has the {} role", decider.key_name, decider.key_id, decider.role.name())
                });
                return Ok(Err(ApiError::PermissionDenied {
                    message: format!(
                        "tool use {answered} is reserved for approvers by the workspace's approval policy \
                         (version {}, rule {:?}); {who}",
                        gate.policy_version, gate.rule
                    ),
                }));
            }
        }
        let policy_version = gate.map(|gate| gate.policy_version);
        Ok(Ok(EventPayload::UserToolDecision {
            tool_use_id: answered,
            result,
            deny_message,
            decided_by,
            policy_version,
        }))
    }

    /// Whether a confirmation allowed tool use `tool_use_id` (at `seq`)
    /// among the session's events up to `last_seq`.
    fn allowed_since(
        &self,
        session_id: SessionId,
        tool_use_id: EventId,
        seq: u64,
        last_seq: u64,
    ) -> Result<bool, Error> {
        for later in seq + 1..=last_seq {
            let Some(event) = self.event_at(session_id, later)? else { continue };
            let confirmation = event.payload.confirmation();
            if confirmation
                .is_some_and(|(answered, result, _)| answered == tool_use_id && result == Confirmation::Allow)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// When the session's last event was stamped: from this batch if it
    /// was applied in it, else from the store.
    fn last_processed_at_ms(&self, session_id: SessionId, record: &SessionRecord) -> Result<u64, Error> {
        if record.last_seq == 0 {
            return Ok(record.created_at_ms);
        }
        let in_batch = self.events.iter().rev().find(|event| event.session_id == session_id);
        if let Some(event) = in_batch.filter(|event| event.seq == record.last_seq) {
            return Ok(event.processed_at_ms);
        }
        let last = self.state.event(session_id, record.last_seq)?;
        Ok(last.map_or(record.created_at_ms, |event| event.processed_at_ms))
    }

    /// Adds a model request or its token counts to the session's usage.
    fn count_usage(&mut self, session_id: SessionId, payload: &EventPayload) -> Result<(), Error> {
        let mut usage = match payload {
            EventPayload::SpanModelRequestStart { .. }
            | EventPayload::SpanModelRequestEnd { .. }
            | EventPayload::SessionUsage { .. } => self.usage(session_id)?,
            _ => return Ok(()),
        };
        match payload {
            EventPayload::SpanModelRequestStart { .. } => usage.model_requests += 1,
            EventPayload::SpanModelRequestEnd { model_usage, .. } => {
                usage.input_tokens += model_usage.input_tokens;
                usage.output_tokens += model_usage.output_tokens;
                usage.cache_creation_input_tokens += model_usage.cache_creation_input_tokens;
                usage.cache_read_input_tokens += model_usage.cache_read_input_tokens;
            }
            // Logs written before usage moved onto the span's end.
            EventPayload::SessionUsage { input_tokens, output_tokens } => {
                usage.input_tokens += input_tokens;
                usage.output_tokens += output_tokens;
            }
            _ => {}
        }
        self.put(keys::session_usage_key(self.state.group(), session_id), &usage)?;
        self.session_usage.insert(session_id, usage);
        Ok(())
    }

    fn usage(&self, session_id: SessionId) -> Result<SessionUsageTotals, Error> {
        match self.session_usage.get(&session_id) {
            Some(usage) => Ok(*usage),
            None => self.state.session_usage(session_id),
        }
    }
}

/// Checks a client's event against the session and records what it answers.
fn admit_user_event(record: &mut SessionRecord, payload: &EventPayload) -> Result<(), ApiError> {
    let answered = agentd_protocol::rules::admit_user_event(record.status, &record.pending_actions, payload)?;
    if let Some(answered) = answered {
        record.pending_actions.retain(|pending| *pending != answered);
    }
    Ok(())
}

/// Checks an orchestrator's event: only the current epoch may write, and
/// status events move the session's status.
///
/// `skip_fence` is the simulator's planted bug (`--bug skip-epoch-fence`):
/// any epoch may write. Never set in production.
fn admit_runtime_event(
    record: &mut SessionRecord,
    payload: &EventPayload,
    epoch: u64,
    skip_fence: bool,
) -> Result<(), ApiError> {
    if epoch != record.epoch && !skip_fence {
        return Err(ApiError::StaleEpoch { epoch, current: record.epoch });
    }
    if record.status == SessionStatus::Terminated {
        return Err(ApiError::InvalidRequest { message: "the session is terminated".into() });
    }
    if payload.is_user_event() {
        return Err(ApiError::InvalidRequest { message: "the runtime does not append user events".into() });
    }
    match payload {
        EventPayload::SessionStatusRunning => record.status = SessionStatus::Running,
        EventPayload::SessionStatusRescheduled => record.stop_reason = None,
        EventPayload::SessionStatusIdle { stop_reason } => {
            record.status = SessionStatus::Idle;
            record.stop_reason = Some(stop_reason.clone());
            record.pending_actions = match stop_reason {
                StopReason::RequiresAction { event_ids } => event_ids.clone(),
                _ => Vec::new(),
            };
        }
        EventPayload::SessionStatusTerminated | EventPayload::SessionDeleted => {
            record.status = SessionStatus::Terminated
        }
        _ => {}
    }
    Ok(())
}
