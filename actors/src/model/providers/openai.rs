//! OpenAI-style chat completions (`POST {base}/chat/completions`), as
//! served by OpenAI, vLLM, llama.cpp and Ollama.

use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::anthropic::json_object;
use crate::model::http::HttpClient;
use crate::model::{
    Block, Message, ModelError, ModelProvider, ModelRequest, ModelResponse, ModelUsage, Role, StopReason,
};

/// The prefix of model strings routed here; it is stripped before sending.
pub const OPENAI_MODEL_PREFIX: &str = "openai:";
/// Chat completions have no error flag on tool results, so failed results
/// are marked in their text.
pub const TOOL_ERROR_PREFIX: &str = "[tool error] ";

/// A client of an OpenAI-compatible chat completions endpoint.
#[derive(Clone, Debug)]
pub struct OpenAiProvider {
    http: HttpClient,
    completions_url: String,
    api_key: Option<String>,
}

impl OpenAiProvider {
    /// `base_url` includes the version, e.g. `https://api.openai.com/v1`.
    /// Local servers often need no key.
    pub fn new(http: HttpClient, base_url: &str, api_key: Option<String>) -> OpenAiProvider {
        let completions_url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        OpenAiProvider { http, completions_url, api_key }
    }

    async fn call(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = request_body(&request)?;
        let headers: Vec<(&'static str, String)> =
            self.api_key.iter().map(|key| ("authorization", format!("Bearer {key}"))).collect();
        let response = self.http.post_json(&self.completions_url, &headers, body.to_string().into_bytes()).await?;
        parse_response(&response.body)
    }
}

impl ModelProvider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelResponse, ModelError>> {
        Box::pin(self.call(request))
    }
}

/// The JSON body for `request`.
pub fn request_body(request: &ModelRequest) -> Result<Value, ModelError> {
    let model = request.model.strip_prefix(OPENAI_MODEL_PREFIX).unwrap_or(&request.model);
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        push_message(&mut messages, message)?;
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(request.max_tokens));
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                let schema = json_object(&tool.input_schema_json, || format!("input schema of tool {:?}", tool.name))?;
                Ok(json!({
                    "type": "function",
                    "function": {"name": tool.name, "description": tool.description, "parameters": schema},
                }))
            })
            .collect::<Result<Vec<Value>, ModelError>>()?;
        body.insert("tools".into(), Value::Array(tools));
    }
    Ok(Value::Object(body))
}

/// Appends the chat messages for one of ours. A user message becomes its
/// tool results as `tool` messages first (they must directly follow the
/// assistant's `tool_calls`), then its text, if any, as a `user` message.
fn push_message(messages: &mut Vec<Value>, message: &Message) -> Result<(), ModelError> {
    let text = message.texts().collect::<Vec<_>>().join("\n");
    match message.role {
        Role::User => {
            for block in &message.content {
                if let Block::ToolResult { tool_use_id, content, is_error } = block {
                    let content = if *is_error { format!("{TOOL_ERROR_PREFIX}{content}") } else { content.clone() };
                    messages.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}));
                }
            }
            if !text.is_empty() {
                messages.push(json!({"role": "user", "content": text}));
            }
        }
        Role::Assistant => {
            let tool_calls = message
                .content
                .iter()
                .filter_map(|block| match block {
                    Block::ToolUse { id, name, input_json } => Some((id, name, input_json)),
                    _ => None,
                })
                .map(|(id, name, input_json)| {
                    // Validated so that a bad input fails here, not at the server.
                    json_object(input_json, || format!("input of tool_use {id:?}"))?;
                    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input_json}}))
                })
                .collect::<Result<Vec<Value>, ModelError>>()?;
            let mut assistant = Map::new();
            assistant.insert("role".into(), json!("assistant"));
            let has_text = !text.is_empty();
            // Content may be null only next to tool calls.
            let content = if has_text || tool_calls.is_empty() { json!(text) } else { Value::Null };
            assistant.insert("content".into(), content);
            if !tool_calls.is_empty() {
                assistant.insert("tool_calls".into(), Value::Array(tool_calls));
            }
            messages.push(Value::Object(assistant));
        }
    }
    Ok(())
}

/// Parses a chat completion answer (the first choice).
pub fn parse_response(body: &[u8]) -> Result<ModelResponse, ModelError> {
    let invalid = |what: String| ModelError::InvalidResponse(format!("chat completion answer: {what}"));
    let value: Value = serde_json::from_slice(body).map_err(|error| invalid(format!("not JSON: {error}")))?;
    let choice = value.pointer("/choices/0").ok_or_else(|| invalid("no choices[0]".into()))?;
    let message = choice.get("message").filter(|message| message.is_object());
    let message = message.ok_or_else(|| invalid("choices[0] has no message object".into()))?;
    let mut content = Vec::new();
    match message.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => content.push(Block::Text { text: text.clone() }),
        Some(_) => return Err(invalid("message content is neither a string nor null".into())),
    }
    let tool_calls = match message.get("tool_calls") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(calls)) => calls.as_slice(),
        Some(_) => return Err(invalid("tool_calls is not an array".into())),
    };
    for (index, call) in tool_calls.iter().enumerate() {
        content.push(parse_tool_call(call).map_err(|what| invalid(format!("tool_calls[{index}]: {what}")))?);
    }
    let has_tool_calls = !tool_calls.is_empty();
    let stop_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        // Some servers (older Ollama) say "stop" even when they call tools;
        // what the brain must do next is run the tools.
        _ if has_tool_calls => StopReason::ToolUse,
        Some("stop") => StopReason::EndTurn,
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_string()),
        None => return Err(invalid("choices[0] has no finish_reason".into())),
    };
    let usage = value.get("usage");
    let count = |name: &str| usage.and_then(|usage| usage.get(name)).and_then(Value::as_u64).unwrap_or(0);
    let cached = usage.and_then(|usage| usage.pointer("/prompt_tokens_details/cached_tokens")).and_then(Value::as_u64);
    let usage = ModelUsage {
        input_tokens: count("prompt_tokens"),
        output_tokens: count("completion_tokens"),
        cache_read_input_tokens: cached.unwrap_or(0),
        ..ModelUsage::default()
    };
    Ok(ModelResponse { content, stop_reason, usage })
}

fn parse_tool_call(call: &Value) -> Result<Block, String> {
    let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()).ok_or("a tool call without an id")?;
    let function = call.get("function").ok_or("a tool call without a function")?;
    let name = function.get("name").and_then(Value::as_str).filter(|name| !name.is_empty());
    let name = name.ok_or("a tool call without a name")?;
    // OpenAI sends arguments as a JSON string; some local servers send the object itself.
    let arguments = match function.get("arguments") {
        Some(Value::String(text)) if text.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(text)) => {
            serde_json::from_str(text).map_err(|error| format!("arguments of {name:?} are not JSON: {error}"))?
        }
        Some(object @ Value::Object(_)) => object.clone(),
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(_) => return Err(format!("arguments of {name:?} are neither a string nor an object")),
    };
    if !arguments.is_object() {
        return Err(format!("arguments of {name:?} are not a JSON object"));
    }
    Ok(Block::ToolUse { id: id.to_string(), name: name.to_string(), input_json: arguments.to_string() })
}
