//! What a model answered.

use agentd_protocol::event::ModelUsage;

use super::Block;

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    /// Any other reason, with the provider's name for it.
    Other(String),
}

/// One model answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelResponse {
    /// Only `Block::Text` and `Block::ToolUse`.
    pub content: Vec<Block>,
    pub stop_reason: StopReason,
    pub usage: ModelUsage,
}
