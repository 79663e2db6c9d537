//! The brain: the agent loop, stateless over the session log.

mod orchestrator;
mod orchestrators;
mod plan;
mod tools;

pub use orchestrator::{idempotency_key, Brain, BrainError, Hands, McpServers, NoMcp, RunOutcome, SessionLog};
pub use orchestrators::{OrchestratorMessage, Orchestrators};
pub use plan::{conversation, plan, Step, MCP_INTERRUPTED_MESSAGE};
pub use tools::tool_specs;
