//! What a model answered.

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

/// Tokens billed for one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One model answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelResponse {
    /// Only `Block::Text` and `Block::ToolUse`.
    pub content: Vec<Block>,
    pub stop_reason: StopReason,
    pub usage: Usage,
}
