//! `scripted:echo`: answers with the text of the last user message.

use futures_util::future::BoxFuture;

use super::script;
use crate::model::{Block, ModelError, ModelProvider, ModelRequest, ModelResponse, Role, StopReason};

/// What echo answers when the last user message has no text (only tool
/// results, say).
pub const ECHO_NO_TEXT: &str = "(no text)";

/// A deterministic provider that repeats the last user message's text
/// blocks, joined by newlines, and ends its turn.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoProvider;

impl EchoProvider {
    /// The answer to `request`; pure, so the simulator can call it directly.
    pub fn answer(request: &ModelRequest) -> ModelResponse {
        let last_user = request.messages.iter().rev().find(|message| message.role == Role::User);
        let text = last_user.map(|message| message.texts().collect::<Vec<_>>().join("\n")).unwrap_or_default();
        let text = if text.is_empty() { ECHO_NO_TEXT.to_string() } else { text };
        let content = vec![Block::Text { text }];
        let usage = script::estimate_usage(request, &content);
        ModelResponse { content, stop_reason: StopReason::EndTurn, usage }
    }
}

impl ModelProvider for EchoProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>> {
        Box::pin(async move { Ok(EchoProvider::answer(&request)) })
    }
}
