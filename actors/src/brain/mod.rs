//! The brain: the agent loop, stateless over the session log.

mod plan;

pub use plan::{conversation, plan, Step};
