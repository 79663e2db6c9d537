//! Assembles a streamed Messages API answer (server-sent events) into the
//! same `ModelResponse` a non-streaming call gives.

use std::collections::BTreeMap;

use serde_json::Value;

use super::anthropic::{parse_usage, stop_reason_from};
use crate::model::http::SseDecoder;
use crate::model::{Block, ModelError, ModelResponse, ModelUsage, StopReason};

/// Bound on the content blocks of one streamed answer.
pub const STREAM_BLOCKS_MAX: usize = 1024;

/// A content block being streamed.
#[derive(Debug)]
enum PartialBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input_json: String,
    },
    /// A block kind the brain does not use (thinking, server tools).
    Skipped,
}

/// Folds the events of one streamed answer, in order, into a response.
#[derive(Debug, Default)]
pub struct StreamAssembler {
    blocks: BTreeMap<u64, PartialBlock>,
    finished: Vec<(u64, Block)>,
    stop_reason: Option<StopReason>,
    usage: ModelUsage,
    stopped: bool,
}

impl StreamAssembler {
    /// Parses a whole `text/event-stream` body.
    pub fn assemble(body: &[u8]) -> Result<ModelResponse, ModelError> {
        let mut decoder = SseDecoder::default();
        let mut assembler = StreamAssembler::default();
        for data in decoder.push(body)? {
            assembler.apply_data(&data)?;
        }
        if let Some(data) = decoder.finish()? {
            assembler.apply_data(&data)?;
        }
        assembler.finish()
    }

    /// Applies the `data:` text of one event.
    pub fn apply_data(&mut self, data: &str) -> Result<(), ModelError> {
        let event: Value =
            serde_json::from_str(data).map_err(|error| invalid(format!("event data is not JSON: {error}")))?;
        self.apply(&event)
    }

    /// Applies one event's data.
    pub fn apply(&mut self, event: &Value) -> Result<(), ModelError> {
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                self.usage = parse_usage(event.pointer("/message/usage"));
            }
            Some("content_block_start") => {
                let index = block_index(event)?;
                if self.blocks.len() + self.finished.len() >= STREAM_BLOCKS_MAX {
                    return Err(invalid(format!("more than {STREAM_BLOCKS_MAX} content blocks")));
                }
                let block =
                    event.get("content_block").ok_or_else(|| invalid("a block start without a block".into()))?;
                let partial = start_block(block).map_err(|what| invalid(format!("content block {index}: {what}")))?;
                self.blocks.insert(index, partial);
            }
            Some("content_block_delta") => {
                let index = block_index(event)?;
                let block = self
                    .blocks
                    .get_mut(&index)
                    .ok_or_else(|| invalid(format!("a delta for block {index}, which is not open")))?;
                let delta = event.get("delta").ok_or_else(|| invalid("a delta event without a delta".into()))?;
                apply_delta(block, delta).map_err(|what| invalid(format!("content block {index}: {what}")))?;
            }
            Some("content_block_stop") => {
                let index = block_index(event)?;
                let block =
                    self.blocks.remove(&index).ok_or_else(|| invalid(format!("block {index} stopped but not open")))?;
                if let Some(block) =
                    finish_block(block).map_err(|what| invalid(format!("content block {index}: {what}")))?
                {
                    self.finished.push((index, block));
                }
            }
            Some("message_delta") => {
                if let Some(reason) = event.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(stop_reason_from(reason));
                }
                // The output count in message_delta is cumulative.
                if let Some(output_tokens) = event.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.output_tokens = output_tokens;
                }
                if let Some(input_tokens) = event.pointer("/usage/input_tokens").and_then(Value::as_u64) {
                    self.usage.input_tokens = input_tokens;
                }
            }
            Some("message_stop") => self.stopped = true,
            Some("error") => return Err(stream_error(event)),
            // Pings and event kinds added later carry nothing we need.
            Some(_) => {}
            None => return Err(invalid("an event without a type".into())),
        }
        Ok(())
    }

    /// The response, once `message_stop` was seen.
    pub fn finish(mut self) -> Result<ModelResponse, ModelError> {
        if !self.stopped {
            // A stream cut short is the network's fault, not the model's.
            return Err(ModelError::Transient("the event stream ended before message_stop".into()));
        }
        if let Some(index) = self.blocks.keys().next() {
            return Err(invalid(format!("content block {index} was never stopped")));
        }
        let stop_reason = self.stop_reason.ok_or_else(|| invalid("no stop_reason in the stream".into()))?;
        self.finished.sort_by_key(|(index, _)| *index);
        let content = self.finished.into_iter().map(|(_, block)| block).collect();
        Ok(ModelResponse { content, stop_reason, usage: self.usage })
    }
}

fn invalid(what: String) -> ModelError {
    ModelError::InvalidResponse(format!("Anthropic event stream: {what}"))
}

fn block_index(event: &Value) -> Result<u64, ModelError> {
    event.get("index").and_then(Value::as_u64).ok_or_else(|| invalid("a block event without an index".into()))
}

fn start_block(block: &Value) -> Result<PartialBlock, String> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = block.get("text").and_then(Value::as_str).unwrap_or_default();
            Ok(PartialBlock::Text { text: text.to_string() })
        }
        Some("tool_use") => {
            let id = block.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
            let id = id.ok_or("a tool_use without an id")?;
            let name = block.get("name").and_then(Value::as_str).filter(|name| !name.is_empty());
            let name = name.ok_or("a tool_use without a name")?;
            Ok(PartialBlock::ToolUse { id: id.to_string(), name: name.to_string(), input_json: String::new() })
        }
        Some(_) => Ok(PartialBlock::Skipped),
        None => Err("a block without a type".to_string()),
    }
}

fn apply_delta(block: &mut PartialBlock, delta: &Value) -> Result<(), String> {
    match (block, delta.get("type").and_then(Value::as_str)) {
        (PartialBlock::Text { text }, Some("text_delta")) => {
            text.push_str(delta.get("text").and_then(Value::as_str).ok_or("a text_delta without text")?);
        }
        (PartialBlock::ToolUse { input_json, .. }, Some("input_json_delta")) => {
            let partial = delta.get("partial_json").and_then(Value::as_str);
            input_json.push_str(partial.ok_or("an input_json_delta without partial_json")?);
        }
        (PartialBlock::Skipped, _) => {}
        (_, kind) => return Err(format!("a {kind:?} delta does not fit the block")),
    }
    Ok(())
}

fn finish_block(block: PartialBlock) -> Result<Option<Block>, String> {
    match block {
        PartialBlock::Text { text } => Ok(Some(Block::Text { text })),
        PartialBlock::ToolUse { id, name, input_json } => {
            // A tool without parameters streams no input at all.
            let input = if input_json.trim().is_empty() {
                Value::Object(serde_json::Map::new())
            } else {
                serde_json::from_str(&input_json)
                    .map_err(|error| format!("tool_use {id:?} input is not JSON: {error}"))?
            };
            if !input.is_object() {
                return Err(format!("tool_use {id:?} input is not a JSON object"));
            }
            Ok(Some(Block::ToolUse { id, name, input_json: input.to_string() }))
        }
        PartialBlock::Skipped => Ok(None),
    }
}

/// Maps an `error` event (sent after a 200 status) like its HTTP status
/// would have been mapped.
fn stream_error(event: &Value) -> ModelError {
    let kind = event.pointer("/error/type").and_then(Value::as_str).unwrap_or("unknown");
    let message = event.pointer("/error/message").and_then(Value::as_str).unwrap_or_default();
    let message = format!("stream error {kind}: {message}");
    match kind {
        "authentication_error" | "permission_error" => ModelError::Auth(message),
        "rate_limit_error" => ModelError::RateLimited { retry_after_ms: None, message },
        "invalid_request_error" | "not_found_error" | "request_too_large" => ModelError::Permanent(message),
        _ => ModelError::Transient(message),
    }
}
