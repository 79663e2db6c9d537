//! The Anthropic Messages API (`POST {base}/v1/messages`).

use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::anthropic_stream::StreamAssembler;
use crate::model::http::{HttpClient, SseDecoder};
use crate::model::{Block, Message, ModelError, ModelProvider, ModelRequest, ModelResponse, ModelUsage, StopReason};

/// The API version this provider speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The prefix of model strings routed here; it is stripped before sending.
pub const ANTHROPIC_MODEL_PREFIX: &str = "anthropic:";

/// A client of the Anthropic Messages API.
#[derive(Clone, Debug)]
pub struct AnthropicProvider {
    http: HttpClient,
    messages_url: String,
    api_key: String,
    streaming: bool,
}

impl AnthropicProvider {
    /// `base_url` is e.g. `https://api.anthropic.com` (no `/v1`).
    pub fn new(http: HttpClient, base_url: &str, api_key: String) -> AnthropicProvider {
        let messages_url = format!("{}/v1/messages", base_url.trim_end_matches('/'));
        AnthropicProvider { http, messages_url, api_key, streaming: false }
    }

    /// Asks for a server-sent event stream (`"stream": true`) and assembles
    /// it into the same response. The answer is still returned whole, but
    /// the request timeout then bounds each silence in the stream instead of
    /// the whole call, so long generations are not cut off.
    pub fn with_streaming(mut self, streaming: bool) -> AnthropicProvider {
        self.streaming = streaming;
        self
    }

    async fn call(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let mut body = request_body(&request)?;
        let mut headers =
            vec![("x-api-key", self.api_key.clone()), ("anthropic-version", ANTHROPIC_VERSION.to_string())];
        if !self.streaming {
            let response = self.http.post_json(&self.messages_url, &headers, body.to_string().into_bytes()).await?;
            return parse_response(&response.body);
        }
        body["stream"] = Value::Bool(true);
        headers.push(("accept", "text/event-stream".to_string()));
        let mut stream =
            self.http.post_json_streaming(&self.messages_url, &headers, body.to_string().into_bytes()).await?;
        // A proxy may ignore `stream` and answer with one JSON object.
        if stream.content_type().starts_with("application/json") {
            return parse_response(&stream.collect().await?);
        }
        let mut decoder = SseDecoder::default();
        let mut assembler = StreamAssembler::default();
        while let Some(chunk) = stream.next_chunk().await? {
            for data in decoder.push(&chunk)? {
                assembler.apply_data(&data)?;
            }
        }
        if let Some(data) = decoder.finish()? {
            assembler.apply_data(&data)?;
        }
        assembler.finish()
    }
}

impl ModelProvider for AnthropicProvider {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>> {
        Box::pin(self.call(request))
    }
}

/// The JSON body for `request`.
pub fn request_body(request: &ModelRequest) -> Result<Value, ModelError> {
    let model = request.model.strip_prefix(ANTHROPIC_MODEL_PREFIX).unwrap_or(&request.model);
    let messages = request.messages.iter().map(message_json).collect::<Result<Vec<Value>, ModelError>>()?;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(request.max_tokens));
    if let Some(system) = &request.system {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                let schema = json_object(&tool.input_schema_json, || format!("input schema of tool {:?}", tool.name))?;
                Ok(json!({"name": tool.name, "description": tool.description, "input_schema": schema}))
            })
            .collect::<Result<Vec<Value>, ModelError>>()?;
        body.insert("tools".into(), Value::Array(tools));
    }
    Ok(Value::Object(body))
}

fn message_json(message: &Message) -> Result<Value, ModelError> {
    // The API refuses empty text blocks, and they say nothing.
    let content = message
        .content
        .iter()
        .filter(|block| !matches!(block, Block::Text { text } if text.is_empty()))
        .map(|block| match block {
            Block::Text { text } => Ok(json!({"type": "text", "text": text})),
            Block::ToolUse { id, name, input_json } => {
                let input = json_object(input_json, || format!("input of tool_use {id:?}"))?;
                Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
            }
            Block::ToolResult { tool_use_id, content, is_error } => Ok(json!({
                "type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error,
            })),
        })
        .collect::<Result<Vec<Value>, ModelError>>()?;
    Ok(json!({"role": message.role.as_str(), "content": content}))
}

/// Parses `text` as a JSON object; anything else is a bug in the request.
pub(crate) fn json_object(text: &str, what: impl FnOnce() -> String) -> Result<Value, ModelError> {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ModelError::Permanent(format!("{} is not a JSON object", what()))),
        Err(error) => Err(ModelError::Permanent(format!("{} is not JSON: {error}", what()))),
    }
}

/// Parses a non-streaming Messages API answer.
pub fn parse_response(body: &[u8]) -> Result<ModelResponse, ModelError> {
    let invalid = |what: String| ModelError::InvalidResponse(format!("Anthropic answer: {what}"));
    let value: Value = serde_json::from_slice(body).map_err(|error| invalid(format!("not JSON: {error}")))?;
    let blocks = value.get("content").and_then(Value::as_array).ok_or_else(|| invalid("no content array".into()))?;
    let mut content = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.iter().enumerate() {
        if let Some(block) = parse_block(block).map_err(|what| invalid(format!("content block {index}: {what}")))? {
            content.push(block);
        }
    }
    let stop_reason =
        value.get("stop_reason").and_then(Value::as_str).ok_or_else(|| invalid("no stop_reason".into()))?;
    Ok(ModelResponse { content, stop_reason: stop_reason_from(stop_reason), usage: parse_usage(value.get("usage")) })
}

/// One answer block; `None` for block kinds the brain does not use
/// (thinking, server tools), which are skipped.
fn parse_block(block: &Value) -> Result<Option<Block>, String> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = block.get("text").and_then(Value::as_str).ok_or("a text block without text")?;
            Ok(Some(Block::Text { text: text.to_string() }))
        }
        Some("tool_use") => {
            let id = block.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
            let id = id.ok_or("a tool_use without an id")?;
            let name = block.get("name").and_then(Value::as_str).filter(|name| !name.is_empty());
            let name = name.ok_or("a tool_use without a name")?;
            let input = match block.get("input") {
                Some(input @ Value::Object(_)) => input.to_string(),
                _ => return Err(format!("tool_use {id:?} has no JSON object input")),
            };
            Ok(Some(Block::ToolUse { id: id.to_string(), name: name.to_string(), input_json: input }))
        }
        Some(_) => Ok(None),
        None => Err("a block without a type".to_string()),
    }
}

pub(crate) fn stop_reason_from(reason: &str) -> StopReason {
    match reason {
        "end_turn" => StopReason::EndTurn,
        "tool_use" => StopReason::ToolUse,
        "max_tokens" => StopReason::MaxTokens,
        other => StopReason::Other(other.to_string()),
    }
}

/// Reads `{input_tokens, output_tokens, cache_creation_input_tokens,
/// cache_read_input_tokens}`; missing counts are zero.
pub(crate) fn parse_usage(usage: Option<&Value>) -> ModelUsage {
    let count = |name: &str| usage.and_then(|usage| usage.get(name)).and_then(Value::as_u64).unwrap_or(0);
    ModelUsage {
        input_tokens: count("input_tokens"),
        output_tokens: count("output_tokens"),
        cache_creation_input_tokens: count("cache_creation_input_tokens"),
        cache_read_input_tokens: count("cache_read_input_tokens"),
    }
}
