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
    /// Credentials for this call only: exported to `bash` as environment
    /// variables, and scrubbed from the output of every tool before it is
    /// recorded or returned.
    pub secrets: Vec<Secret>,
}

/// A credential injected into one tool call. Its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Secret").field("name", &self.name).field("value", &"[hidden]").finish()
    }
}

impl Secret {
    pub fn is_valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
    }
}

/// Replaces every secret value in `text` with `[REDACTED:NAME]`, longest
/// values first so that a secret containing another is scrubbed whole.
pub fn redact(text: &str, secrets: &[Secret]) -> String {
    let mut ordered: Vec<&Secret> = secrets.iter().filter(|secret| !secret.value.is_empty()).collect();
    ordered.sort_by_key(|secret| std::cmp::Reverse(secret.value.len()));
    ordered
        .iter()
        .fold(text.to_string(), |text, secret| text.replace(&secret.value, &format!("[REDACTED:{}]", secret.name)))
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
