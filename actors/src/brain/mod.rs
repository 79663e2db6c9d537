//! The brain: the agent loop, stateless over the session log.

mod orchestrator;
mod plan;
mod tools;

pub use orchestrator::{idempotency_key, Brain, BrainError, Hands, Models, RunOutcome, SessionLog};
pub use plan::{conversation, plan, Step};
pub use tools::tool_specs;
