//! What the brain asks a model.

use super::Message;

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema object as text.
    pub input_schema_json: String,
}

/// One model call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRequest {
    /// The agent's model string. Providers strip their own prefix
    /// (`anthropic:`, `openai:`) before sending it.
    pub model: String,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
}
