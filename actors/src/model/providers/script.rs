//! `scripted:FILE`: plays a JSON script of assistant turns.
//!
//! The file is a JSON array of turns; each turn is an array of blocks
//! `{"type":"text","text":"..."}` or
//! `{"type":"tool_use","name":"...","input":{...}}` (`input` defaults to
//! `{}`). The turn played is the number of assistant messages already in
//! the request, so the provider keeps no state: a brain that crashes
//! mid-call and redoes it gets the same turn.

use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::model::{Block, ModelError, ModelProvider, ModelRequest, ModelResponse, ModelUsage, Role, StopReason};

/// What a script answers once all its turns were played.
pub const SCRIPT_FINISHED: &str = "(script finished)";
/// Bound on a script file.
pub const SCRIPT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A deterministic provider that plays the turns of a JSON file.
#[derive(Clone, Debug)]
pub struct ScriptedProvider {
    path: PathBuf,
}

impl ScriptedProvider {
    /// A provider for the script at `path`. The file is read on every call,
    /// so an edited script takes effect without a restart.
    pub fn new(path: impl Into<PathBuf>) -> ScriptedProvider {
        ScriptedProvider { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Plays the turn `request` calls for from the script text `script`.
    pub fn answer(path: &Path, script: &[u8], request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let malformed = |what: String| ModelError::Permanent(format!("malformed script {}: {what}", path.display()));
        let turns: Value = serde_json::from_slice(script).map_err(|error| malformed(format!("not JSON: {error}")))?;
        let turns = turns.as_array().ok_or_else(|| malformed("the top level must be an array of turns".to_string()))?;
        let turn_index = request.messages.iter().filter(|message| message.role == Role::Assistant).count();
        let Some(turn) = turns.get(turn_index) else {
            let content = vec![Block::Text { text: SCRIPT_FINISHED.to_string() }];
            let usage = estimate_usage(request, &content);
            return Ok(ModelResponse { content, stop_reason: StopReason::EndTurn, usage });
        };
        let blocks =
            turn.as_array().ok_or_else(|| malformed(format!("turn {turn_index} must be an array of blocks")))?;
        let content = blocks
            .iter()
            .enumerate()
            .map(|(block_index, block)| {
                script_block(turn_index, block_index, block)
                    .map_err(|what| malformed(format!("turn {turn_index} block {block_index}: {what}")))
            })
            .collect::<Result<Vec<Block>, ModelError>>()?;
        let stop_reason = if content.iter().any(|block| matches!(block, Block::ToolUse { .. })) {
            StopReason::ToolUse
        } else {
            StopReason::EndTurn
        };
        let usage = estimate_usage(request, &content);
        Ok(ModelResponse { content, stop_reason, usage })
    }
}

impl ModelProvider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let script = read_script(&self.path).await?;
            ScriptedProvider::answer(&self.path, &script, &request)
        })
    }
}

async fn read_script(path: &Path) -> Result<Vec<u8>, ModelError> {
    let unreadable =
        |error: std::io::Error| ModelError::Permanent(format!("cannot read script {}: {error}", path.display()));
    let metadata = tokio::fs::metadata(path).await.map_err(unreadable)?;
    if metadata.len() > SCRIPT_BYTES_MAX {
        return Err(ModelError::Permanent(format!(
            "script {} has {} bytes, more than the {SCRIPT_BYTES_MAX} allowed",
            path.display(),
            metadata.len()
        )));
    }
    tokio::fs::read(path).await.map_err(unreadable)
}

fn script_block(turn_index: usize, block_index: usize, block: &Value) -> Result<Block, String> {
    let kind = block.get("type").and_then(Value::as_str).ok_or("a block needs a string \"type\"")?;
    match kind {
        "text" => {
            let text = block.get("text").and_then(Value::as_str).ok_or("a text block needs a string \"text\"")?;
            Ok(Block::Text { text: text.to_string() })
        }
        "tool_use" => {
            let name = block.get("name").and_then(Value::as_str).filter(|name| !name.is_empty());
            let name = name.ok_or("a tool_use block needs a non-empty string \"name\"")?;
            let input = match block.get("input") {
                None => Value::Object(serde_json::Map::new()),
                Some(input @ Value::Object(_)) => input.clone(),
                Some(_) => return Err("a tool_use \"input\" must be a JSON object".to_string()),
            };
            Ok(Block::ToolUse {
                id: format!("toolu_scripted_{turn_index}_{block_index}"),
                name: name.to_string(),
                input_json: input.to_string(),
            })
        }
        other => Err(format!("unknown block type {other:?} (expected \"text\" or \"tool_use\")")),
    }
}

/// A deterministic stand-in for token counts: a quarter of the bytes of
/// the request's and the answer's text, rounded up.
pub fn estimate_usage(request: &ModelRequest, content: &[Block]) -> ModelUsage {
    let system_bytes = request.system.as_ref().map_or(0, String::len);
    let request_bytes =
        system_bytes + request.messages.iter().map(|message| blocks_bytes(&message.content)).sum::<usize>();
    ModelUsage {
        input_tokens: bytes_to_tokens(request_bytes),
        output_tokens: bytes_to_tokens(blocks_bytes(content)),
        ..ModelUsage::default()
    }
}

fn blocks_bytes(blocks: &[Block]) -> usize {
    blocks
        .iter()
        .map(|block| match block {
            Block::Text { text } => text.len(),
            Block::ToolUse { name, input_json, .. } => name.len() + input_json.len(),
            Block::ToolResult { content, .. } => content.len(),
        })
        .sum()
}

fn bytes_to_tokens(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX)
}
