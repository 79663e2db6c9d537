//! The call a model makes and the answer it gets back.

use serde::{Deserialize, Serialize};

/// One tool call as the agent loop dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The tool's name (`bash`, `read`, `write`, `edit`, `glob`, `grep`).
    pub name: String,
    /// The tool input as a JSON object, exactly as the model produced it (untrusted).
    pub input_json: String,
    /// Repeating a key returns the recorded output instead of running the tool again.
    /// An empty key disables recording for this call.
    pub idempotency_key: String,
}

/// What a tool call produced. Tool failures are outputs with `is_error` set, not `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn success(content: impl Into<String>) -> ToolOutput {
        ToolOutput { content: content.into(), is_error: false }
    }

    pub fn failure(content: impl Into<String>) -> ToolOutput {
        ToolOutput { content: content.into(), is_error: true }
    }
}
