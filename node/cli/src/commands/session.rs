//! `agentd session`: create sessions, send events, read and follow them.

use agentd_protocol::api::Consistency;
use agentd_protocol::api::SessionStatus;
use agentd_protocol::event::{Confirmation, ContentBlock, EventPayload};
use agentd_protocol::ids::{AgentId, EnvironmentId, EventId, SessionId};
use agentd_protocol::resource::{CreatedWithin, Order, SessionQuery, SessionView};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::Target;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session; prints its id.
    Create {
        #[command(flatten)]
        target: Target,
        /// Run this agent (its current version) in the session.
        #[arg(long)]
        agent: Option<AgentId>,
        #[arg(long)]
        environment: Option<EnvironmentId>,
    },
    /// Answer a tool use that waits for confirmation.
    Confirm {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        event: EventId,
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        allow: bool,
        #[arg(long)]
        deny: bool,
        /// Why the call is denied (shown to the model).
        #[arg(long, requires = "deny")]
        message: Option<String>,
    },
    /// Answer a custom tool use with its result.
    ToolResult {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        event: EventId,
        #[arg(long)]
        text: String,
        #[arg(long)]
        error: bool,
    },
    /// List the sessions of the key's workspace across the cluster, newest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Only sessions in this status (repeatable): idle, running, terminated.
        #[arg(long = "status", value_enum)]
        statuses: Vec<StatusArg>,
        /// Only sessions of this agent.
        #[arg(long)]
        agent: Option<AgentId>,
        /// Archived sessions too.
        #[arg(long)]
        include_archived: bool,
        /// At most this many sessions (all when not given).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a session: status, pinned agent, pending actions, last stop reason.
    Get {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
    /// Resume a dead-lettered session (idle after its model retries ran out).
    Retry {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
    /// End a session for good: its turn stops, its sandbox and workspace are destroyed,
    /// and it takes no more events. Prints the sequence number of session.status_terminated.
    Terminate {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
    /// Stop the agent's current turn.
    Interrupt {
        #[command(flatten)]
        target: Target,
        session: SessionId,
    },
    /// Append a user.message; prints its sequence number once committed.
    Send {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        #[arg(long)]
        text: String,
    },
    /// Print a session's events.
    Events {
        #[command(flatten)]
        target: Target,
        session: SessionId,
        /// First sequence number to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep printing new events as they commit.
        #[arg(long)]
        follow: bool,
        /// Read the replica on the addressed node instead of the leader's.
        #[arg(long, conflicts_with = "follow")]
        local: bool,
    },
}

pub async fn run(command: SessionCommand) -> Result<()> {
    match command {
        SessionCommand::Create { target, agent, environment } => {
            let info = target.client()?.create_session_with(agent, environment).await?;
            if target.json {
                outln!(
                    "{}",
                    json!({"session_id": info.session_id.to_string(), "shard": info.shard.0, "created_at_ms": info.created_at_ms})
                );
            } else {
                outln!("{}", info.session_id);
            }
        }
        SessionCommand::Confirm { target, session, event, allow, message, .. } => {
            let result = if allow { Confirmation::Allow } else { Confirmation::Deny };
            let payload = EventPayload::UserToolConfirmation { tool_use_id: event, result, deny_message: message };
            print_seq(&target, session, target.client()?.append(session, payload).await?);
        }
        SessionCommand::ToolResult { target, session, event, text, error } => {
            let payload = EventPayload::UserCustomToolResult {
                custom_tool_use_id: event,
                content: vec![ContentBlock::text(text)],
                is_error: error,
            };
            print_seq(&target, session, target.client()?.append(session, payload).await?);
        }
        SessionCommand::Get { target, session } => get(target, session).await?,
        SessionCommand::List { target, statuses, agent, include_archived, limit } => {
            let statuses = statuses.into_iter().map(StatusArg::status).collect();
            list(target, statuses, agent, include_archived, limit).await?
        }
        SessionCommand::Retry { target, session } => {
            print_seq(&target, session, target.client()?.retry_session(session).await?);
        }
        SessionCommand::Terminate { target, session } => {
            print_seq(&target, session, target.client()?.terminate_session(session).await?);
        }
        SessionCommand::Interrupt { target, session } => {
            print_seq(&target, session, target.client()?.append(session, EventPayload::UserInterrupt).await?);
        }
        SessionCommand::Send { target, session, text } => {
            let seq = target.client()?.append(session, EventPayload::user_text(text)).await?;
            if target.json {
                outln!("{}", json!({"session_id": session.to_string(), "seq": seq}));
            } else {
                outln!("{seq}");
            }
        }
        SessionCommand::Events { target, session, from, follow, local } => {
            events(target, session, from, follow, local).await?
        }
    }
    Ok(())
}

fn print_seq(target: &Target, session: SessionId, seq: u64) {
    if target.json {
        outln!("{}", json!({"session_id": session.to_string(), "seq": seq}));
    } else {
        outln!("{seq}");
    }
}

/// `agentd session get`: status, pinned agent, pending actions, last stop reason.
async fn get(target: Target, session: SessionId) -> Result<()> {
    let info = target.client()?.get_session(session).await?;
    let stop_reason = info.stop_reason.as_ref().map(|reason| match reason {
        agentd_protocol::event::StopReason::EndTurn => "end_turn",
        agentd_protocol::event::StopReason::RequiresAction { .. } => "requires_action",
        agentd_protocol::event::StopReason::RetriesExhausted => "retries_exhausted",
    });
    let value = json!({
        "session_id": info.session_id.to_string(),
        "shard": info.shard.0,
        "status": format!("{:?}", info.status).to_lowercase(),
        "stop_reason": stop_reason,
        "dead_lettered": stop_reason == Some("retries_exhausted"),
        "agent": info.agent.map(|agent| json!({"id": agent.id.to_string(), "version": agent.version})),
        "environment": info.environment.map(|environment| environment.to_string()),
        "last_seq": info.last_seq,
        "epoch": info.epoch,
        "pending_actions": info.pending_actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    outln!("{}", if target.json { value.to_string() } else { serde_json::to_string_pretty(&value)? });
    Ok(())
}

/// `agentd session events`: every event from `from`, from the leader or this
/// node's replica; with `follow`, new ones as they commit, forever.
async fn events(target: Target, session: SessionId, from: u64, follow: bool, local: bool) -> Result<()> {
    let client = target.client()?;
    let print = |events: &[agentd_protocol::event::Event]| {
        for event in events {
            if target.json {
                outln!("{}", output::event(event));
            } else {
                outln!("{}", output::summary(event));
            }
        }
    };
    if !follow {
        let consistency = if local { Consistency::Local } else { Consistency::Leader };
        let mut next = from;
        loop {
            let (events, next_seq) =
                client.read_events(session, next, agentd_protocol::limits::EVENTS_PER_PAGE_MAX, consistency).await?;
            if events.is_empty() {
                break;
            }
            print(&events);
            next = next_seq;
        }
        return Ok(());
    }
    // Follow, resuming from the last printed event if a node goes away.
    let mut subscription = client.subscribe(session, from);
    loop {
        print(&subscription.next().await?);
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Idle,
    Running,
    Terminated,
}

impl StatusArg {
    fn status(self) -> SessionStatus {
        match self {
            StatusArg::Idle => SessionStatus::Idle,
            StatusArg::Running => SessionStatus::Running,
            StatusArg::Terminated => SessionStatus::Terminated,
        }
    }
}

/// `agentd session list`: every page of the workspace's sessions, newest first.
async fn list(
    target: Target,
    statuses: Vec<SessionStatus>,
    agent: Option<AgentId>,
    include_archived: bool,
    limit: Option<usize>,
) -> Result<()> {
    let client = target.client()?;
    let mut query = SessionQuery {
        agent,
        agent_version: None,
        statuses,
        include_archived,
        created: CreatedWithin::default(),
        order: Order::Descending,
        after: None,
        limit: agentd_protocol::limits::LIST_LIMIT_MAX,
    };
    let mut printed = 0;
    if !target.json {
        outln!("{:<38} {:<11} {:>8} {:<38} TITLE", "SESSION", "STATUS", "EVENTS", "AGENT");
    }
    loop {
        let page = client.list_sessions(query.clone()).await?;
        for view in &page.sessions {
            if limit.is_some_and(|limit| printed >= limit) {
                return Ok(());
            }
            print_session_line(&target, view);
            printed += 1;
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(()),
        }
    }
}

fn print_session_line(target: &Target, view: &SessionView) {
    let status = format!("{:?}", view.info.status).to_lowercase();
    let agent = view.info.agent.map(|agent| format!("{} v{}", agent.id, agent.version)).unwrap_or_default();
    if target.json {
        outln!(
            "{}",
            json!({
                "session_id": view.info.session_id.to_string(),
                "status": status,
                "created_at_ms": view.info.created_at_ms,
                "last_seq": view.info.last_seq,
                "agent": agent,
                "title": view.details.title,
                "workspace": view.details.workspace,
            })
        );
    } else {
        let title = view.details.title.clone().unwrap_or_default();
        outln!("{:<38} {:<11} {:>8} {:<38} {title}", view.info.session_id, status, view.info.last_seq, agent);
    }
}
