//! An MCP client over the streamable HTTP transport: JSON-RPC 2.0 requests
//! POSTed to the server's one endpoint, each answered with a JSON body or an
//! event stream that carries the response. Only what the runtime needs:
//! `initialize` (and `notifications/initialized`), `tools/list`, `tools/call`.
//!
//! Why not the official Rust SDK (`rmcp`): it brings no HTTP client of its
//! own short of `reqwest` (a second HTTP stack with its own rustls setup), so
//! its `StreamableHttpClient` trait would have to be implemented over this
//! crate's hyper client anyway, which is about as much code as the three
//! calls below; it runs every connection as a background worker task with
//! its own session state machine, where the node wants one bounded exchange
//! per call with its own error classification (a refused credential versus
//! a server that is down); and it pulls a second major version of `sha2`
//! and `digest` and needs a newer Rust than the workspace states.
//!
//! Sessions: the server's `Mcp-Session-Id` is kept per server and
//! credential, so a call is one round trip after the first; a session the
//! server has forgotten (404) is opened again once.

use std::collections::HashMap;
use std::sync::Mutex;

use agentd_protocol::sync::lock;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::model::{HttpClient, ModelError, RawResponse, SseDecoder};

/// The protocol revision this client asks for; servers answer with theirs.
pub const MCP_PROTOCOL_VERSION: &str = "2025-06-18";
/// Pages of `tools/list` followed before the list is cut short.
const TOOL_LIST_PAGES_MAX: usize = 16;
/// How much of an error body goes into an error message.
const ERROR_BODY_CHARS_MAX: usize = 300;

/// Why an MCP exchange failed. A tool that ran and failed is not an error
/// here: it is a result with `is_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    /// The server could not be reached, answered with a server error, or
    /// answered outside the protocol.
    #[error("MCP server {url}: {message}")]
    Connection { url: String, message: String },
    /// The server refused the credential (401 or 403), or none was found.
    #[error("MCP server {url} refused the credential: {message}")]
    Authentication { url: String, message: String },
}

impl McpError {
    /// The `session.error` type the Managed Agents API gives this failure.
    pub fn error_type(&self) -> &'static str {
        match self {
            McpError::Connection { .. } => "mcp_connection_failed_error",
            McpError::Authentication { .. } => "mcp_authentication_failed_error",
        }
    }

    pub fn connection(url: &str, message: impl Into<String>) -> McpError {
        McpError::Connection { url: url.to_string(), message: message.into() }
    }

    pub fn authentication(url: &str, message: impl Into<String>) -> McpError {
        McpError::Authentication { url: url.to_string(), message: message.into() }
    }
}

/// One tool a server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpTool {
    pub name: String,
    pub description: String,
    /// The tool's `inputSchema`, as JSON text.
    pub input_schema_json: String,
}

/// What a `tools/call` answered: the content as text, and whether the tool
/// reported an error (a JSON-RPC error is one too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCallResult {
    pub text: String,
    pub is_error: bool,
}

/// The MCP client of one node, shared by every session.
pub struct McpClient {
    http: HttpClient,
    /// Session ids by server URL and credential digest.
    sessions: Mutex<HashMap<(String, [u8; 32]), String>>,
}

/// One server as a call addresses it.
struct Target<'a> {
    url: &'a str,
    token: Option<&'a str>,
    key: (String, [u8; 32]),
}

impl McpClient {
    pub fn new(http: HttpClient) -> McpClient {
        McpClient { http, sessions: Mutex::new(HashMap::new()) }
    }

    /// Every tool the server at `url` lists, following its pages.
    pub async fn list_tools(&self, url: &str, token: Option<&str>) -> Result<Vec<McpTool>, McpError> {
        let target = target(url, token);
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..TOOL_LIST_PAGES_MAX {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let result = self.request(&target, "tools/list", params).await?;
            let result =
                result.map_err(|message| McpError::connection(url, format!("tools/list failed: {message}")))?;
            let listed = result.get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
            tools.extend(listed.iter().filter_map(parse_tool));
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_string);
            if cursor.is_none() || tools.len() >= agentd_protocol::limits::MCP_TOOLS_PER_SERVER_MAX {
                break;
            }
        }
        tools.truncate(agentd_protocol::limits::MCP_TOOLS_PER_SERVER_MAX);
        Ok(tools)
    }

    /// Calls tool `name` with `arguments_json` (a JSON object as text).
    pub async fn call_tool(
        &self,
        url: &str,
        token: Option<&str>,
        name: &str,
        arguments_json: &str,
    ) -> Result<McpCallResult, McpError> {
        let target = target(url, token);
        let arguments: Value = match serde_json::from_str(arguments_json) {
            Ok(arguments @ Value::Object(_)) => arguments,
            _ => {
                let text = format!("the input of MCP tool {name} must be a JSON object");
                return Ok(McpCallResult { text, is_error: true });
            }
        };
        let params = json!({"name": name, "arguments": arguments});
        Ok(match self.request(&target, "tools/call", params).await? {
            Ok(result) => call_result(&result),
            Err(message) => McpCallResult { text: message, is_error: true },
        })
    }

    /// Sends request `method` in the server's session (opened first if
    /// needed, and once more if the server forgot it). The outer error is a
    /// failed exchange; the inner one a JSON-RPC error the server answered.
    async fn request(
        &self,
        target: &Target<'_>,
        method: &str,
        params: Value,
    ) -> Result<Result<Value, String>, McpError> {
        for attempt in 0..2 {
            let session = match self.session_of(target) {
                Some(session) => session,
                None => self.initialize(target).await?,
            };
            let body = json!({"jsonrpc": "2.0", "id": 2, "method": method, "params": params.clone()});
            let response = self.post(target, Some(&session), &body).await?;
            if response.status == 404 && attempt == 0 {
                // The server ended the session (a restart, an expiry): open a new one.
                lock(&self.sessions).remove(&target.key);
                continue;
            }
            check_status(target.url, &response)?;
            return rpc_result(target.url, &response, 2);
        }
        Err(McpError::connection(target.url, "the server kept refusing its own session"))
    }

    fn session_of(&self, target: &Target<'_>) -> Option<String> {
        lock(&self.sessions).get(&target.key).cloned()
    }

    /// `initialize`, then `notifications/initialized`; returns the session
    /// id (empty for a server that keeps no sessions).
    async fn initialize(&self, target: &Target<'_>) -> Result<String, McpError> {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "agentd", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let response = self.post(target, None, &body).await?;
        check_status(target.url, &response)?;
        let session = header(&response, "mcp-session-id").unwrap_or_default();
        rpc_result(target.url, &response, 1)?
            .map_err(|message| McpError::connection(target.url, format!("initialize failed: {message}")))?;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let response = self.post(target, Some(&session), &initialized).await?;
        check_status(target.url, &response)?;
        lock(&self.sessions).insert(target.key.clone(), session.clone());
        Ok(session)
    }

    async fn post(&self, target: &Target<'_>, session: Option<&str>, body: &Value) -> Result<RawResponse, McpError> {
        let mut headers = vec![("accept", "application/json, text/event-stream".to_string())];
        if let Some(token) = target.token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if let Some(session) = session.filter(|session| !session.is_empty()) {
            headers.push(("mcp-session-id", session.to_string()));
        }
        if session.is_some() {
            headers.push(("mcp-protocol-version", MCP_PROTOCOL_VERSION.to_string()));
        }
        let bytes = serde_json::to_vec(body).map_err(|error| McpError::connection(target.url, error.to_string()))?;
        self.http.post_raw(target.url, &headers, bytes).await.map_err(|error| match error {
            ModelError::Transient(message) | ModelError::Permanent(message) | ModelError::InvalidResponse(message) => {
                McpError::connection(target.url, message)
            }
            other => McpError::connection(target.url, other.to_string()),
        })
    }
}

fn target<'a>(url: &'a str, token: Option<&'a str>) -> Target<'a> {
    let digest: [u8; 32] = Sha256::digest(token.unwrap_or_default().as_bytes()).into();
    Target { url, token, key: (url.to_string(), digest) }
}

fn header(response: &RawResponse, name: &str) -> Option<String> {
    response.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

/// A refused credential, a server error, or anything but 2xx, as an error.
fn check_status(url: &str, response: &RawResponse) -> Result<(), McpError> {
    let status = response.status;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body: String = String::from_utf8_lossy(&response.body).chars().take(ERROR_BODY_CHARS_MAX).collect();
    let message = format!("HTTP {status}: {}", body.trim());
    if status == 401 || status == 403 {
        return Err(McpError::authentication(url, message));
    }
    Err(McpError::connection(url, message))
}

/// The JSON-RPC response with id `id` in a JSON or event-stream body: its
/// `result`, or its `error`'s message.
fn rpc_result(url: &str, response: &RawResponse, id: u64) -> Result<Result<Value, String>, McpError> {
    let content_type = header(response, "content-type").unwrap_or_default();
    let messages: Vec<Value> = if content_type.starts_with("text/event-stream") {
        let mut decoder = SseDecoder::default();
        let mut data = decoder.push(&response.body).map_err(|error| McpError::connection(url, error.to_string()))?;
        data.extend(decoder.finish().map_err(|error| McpError::connection(url, error.to_string()))?);
        data.iter().filter_map(|data| serde_json::from_str(data).ok()).collect()
    } else {
        match serde_json::from_slice::<Value>(&response.body) {
            Ok(Value::Array(batch)) => batch,
            Ok(message) => vec![message],
            Err(error) => return Err(McpError::connection(url, format!("the answer is not JSON: {error}"))),
        }
    };
    let answer = messages
        .into_iter()
        .find(|message| message.get("id").and_then(Value::as_u64) == Some(id))
        .ok_or_else(|| McpError::connection(url, format!("no JSON-RPC response to request {id} in the answer")))?;
    if let Some(error) = answer.get("error") {
        let message = error.get("message").and_then(Value::as_str).unwrap_or("an error without a message");
        let code = error.get("code").and_then(Value::as_i64).unwrap_or_default();
        return Ok(Err(format!("{message} (JSON-RPC error {code})")));
    }
    Ok(Ok(answer.get("result").cloned().unwrap_or(Value::Null)))
}

fn parse_tool(tool: &Value) -> Option<McpTool> {
    let name = tool.get("name")?.as_str()?.to_string();
    let description = tool.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
    let schema = tool.get("inputSchema").cloned().unwrap_or_else(|| json!({"type": "object"}));
    Some(McpTool { name, description, input_schema_json: schema.to_string() })
}

/// A `tools/call` result as text: its text blocks, a note for each block of
/// another kind, or the structured content when there is no content.
fn call_result(result: &Value) -> McpCallResult {
    let is_error = result.get("isError").and_then(Value::as_bool).unwrap_or(false);
    let blocks = result.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut parts: Vec<String> = blocks
        .iter()
        .map(|block| match block.get("type").and_then(Value::as_str) {
            Some("text") => block.get("text").and_then(Value::as_str).unwrap_or_default().to_string(),
            Some("resource") => {
                let resource = block.get("resource");
                let text = resource.and_then(|resource| resource.get("text")).and_then(Value::as_str);
                let uri = resource.and_then(|resource| resource.get("uri")).and_then(Value::as_str);
                text.map(str::to_string).unwrap_or_else(|| format!("[resource {}]", uri.unwrap_or("?")))
            }
            Some(kind) => {
                let mime = block.get("mimeType").and_then(Value::as_str).unwrap_or("unknown type");
                format!("[{kind} content ({mime}) not shown]")
            }
            None => String::new(),
        })
        .collect();
    if parts.is_empty() {
        if let Some(structured) = result.get("structuredContent") {
            parts.push(structured.to_string());
        }
    }
    McpCallResult { text: parts.join("\n"), is_error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(content_type: &str, body: &str) -> RawResponse {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("content-type", content_type.parse().expect("a valid header"));
        RawResponse { status: 200, headers, body: bytes::Bytes::from(body.to_string()) }
    }

    #[test]
    fn responses_are_read_from_json_and_event_streams() {
        let json = response("application/json", r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#);
        assert_eq!(rpc_result("u", &json, 2), Ok(Ok(json!({"tools": []}))));
        let stream = response(
            "text/event-stream",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n\
             event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":-32602,\"message\":\"no such tool\"}}\n\n",
        );
        assert_eq!(rpc_result("u", &stream, 2), Ok(Err("no such tool (JSON-RPC error -32602)".into())));
        let other = response("application/json", r#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
        assert!(matches!(rpc_result("u", &other, 2), Err(McpError::Connection { .. })));
    }

    #[test]
    fn statuses_are_classified() {
        let mut refused = response("text/plain", "bad token");
        refused.status = 401;
        assert!(matches!(check_status("u", &refused), Err(McpError::Authentication { .. })));
        refused.status = 502;
        assert!(matches!(check_status("u", &refused), Err(McpError::Connection { .. })));
        assert_eq!(McpError::authentication("u", "x").error_type(), "mcp_authentication_failed_error");
    }

    #[test]
    fn call_results_become_text() {
        let result = json!({"content": [{"type": "text", "text": "5"}, {"type": "image", "mimeType": "image/png"}], "isError": false});
        assert_eq!(
            call_result(&result),
            McpCallResult { text: "5\n[image content (image/png) not shown]".into(), is_error: false }
        );
        let structured = json!({"content": [], "structuredContent": {"sum": 5}, "isError": true});
        assert_eq!(call_result(&structured), McpCallResult { text: r#"{"sum":5}"#.into(), is_error: true });
    }
}
