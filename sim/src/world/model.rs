//! The simulator's model: deterministic turns chosen from the request alone
//! (the number of assistant messages so far), as the scripted provider
//! does, with a latency also derived from the request, so concurrent
//! sessions cannot perturb each other's timing.
//!
//! Every turn of the agent runs two tool calls (the second prints the
//! vault's credential) and then ends.

use std::time::Duration;

use agentd_actors::model::{
    Block, ModelError, ModelProvider, ModelRequest, ModelResponse, ModelUsage, Role, StopReason,
};
use futures_util::future::BoxFuture;

/// The model name agents in the simulation use (served by [`SimModel`]).
pub const SIM_MODEL: &str = "scripted:sim-tools";

pub struct SimModel;

fn bash(step: usize, command: &str) -> Block {
    Block::ToolUse {
        id: format!("toolu_sim_{step}"),
        name: "bash".into(),
        input_json: serde_json::json!({ "command": command }).to_string(),
    }
}

impl ModelProvider for SimModel {
    fn name(&self) -> &str {
        "sim"
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let step = request.messages.iter().filter(|message| message.role == Role::Assistant).count();
            tokio::time::sleep(Duration::from_millis(5 + (step as u64 * 7) % 20)).await;
            let (content, stop_reason) = match step % 3 {
                0 => (vec![bash(step, "echo step >> effects.txt")], StopReason::ToolUse),
                1 => (vec![bash(step, "echo token=$SIM_TOKEN")], StopReason::ToolUse),
                _ => (vec![Block::Text { text: "done".into() }], StopReason::EndTurn),
            };
            Ok(ModelResponse {
                content,
                stop_reason,
                usage: ModelUsage { input_tokens: 10, output_tokens: 5, ..ModelUsage::default() },
            })
        })
    }
}
