//! Model providers against a local HTTP server that speaks the API shapes.

// Test helpers fail loudly on setup errors; unwrap is the point.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_actors::model::{
    provider_for, Block, BreakerState, CircuitBreaker, Message, ModelError, ModelProvider, ModelRequest, ModelUsage,
    ProviderConfig, ResilientProvider, RetryPolicy, Role, StopReason, ToolSpec, ECHO_NO_TEXT, SCRIPT_FINISHED,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// One canned answer of the test server.
#[derive(Clone, Debug)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    delay: Duration,
}

impl Canned {
    fn json(status: u16, body: Value) -> Canned {
        Canned {
            status,
            headers: vec![("content-type", "application/json")],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    fn raw(status: u16, body: &str) -> Canned {
        Canned { status, headers: Vec::new(), body: body.to_string(), delay: Duration::ZERO }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Canned {
        self.headers.push((name, value));
        self
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct ServerState {
    answers: Mutex<VecDeque<Canned>>,
    seen: Mutex<Vec<Seen>>,
}

/// A local server that plays `answers` in order, repeating the last one.
struct TestServer {
    base_url: String,
    state: Arc<ServerState>,
}

impl TestServer {
    async fn start(answers: Vec<Canned>) -> TestServer {
        assert!(!answers.is_empty());
        let state = Arc::new(ServerState { answers: Mutex::new(answers.into()), seen: Mutex::default() });
        let app = Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestServer { base_url: format!("http://{address}"), state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    fn set_answers(&self, answers: Vec<Canned>) {
        *self.state.answers.lock().unwrap() = answers.into();
    }
}

async fn answer(State(state): State<Arc<ServerState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.seen.lock().unwrap().push(Seen { path: uri.path().to_string(), headers, body });
    let canned = {
        let mut answers = state.answers.lock().unwrap();
        if answers.len() > 1 {
            answers.pop_front().unwrap()
        } else {
            answers.front().unwrap().clone()
        }
    };
    tokio::time::sleep(canned.delay).await;
    let mut response = (StatusCode::from_u16(canned.status).unwrap(), canned.body).into_response();
    for (name, value) in canned.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

fn config_for(server: &TestServer) -> ProviderConfig {
    ProviderConfig {
        anthropic_base_url: server.base_url.clone(),
        anthropic_api_key: Some("sk-ant-test".to_string()),
        openai_base_url: format!("{}/v1", server.base_url),
        openai_api_key: Some("sk-openai-test".to_string()),
        ..ProviderConfig::default()
    }
}

fn text(text: &str) -> Block {
    Block::Text { text: text.to_string() }
}

fn request(model: &str, messages: Vec<Message>) -> ModelRequest {
    ModelRequest { model: model.to_string(), system: None, messages, tools: Vec::new(), max_tokens: 1024 }
}

/// A conversation with a finished tool round trip, and a tool list.
fn tool_conversation(model: &str) -> ModelRequest {
    ModelRequest {
        model: model.to_string(),
        system: Some("You are terse.".to_string()),
        messages: vec![
            Message::user_text("list the files"),
            Message {
                role: Role::Assistant,
                content: vec![
                    text("Let me look."),
                    Block::ToolUse {
                        id: "toolu_1".into(),
                        name: "bash".into(),
                        input_json: r#"{"command":"ls"}"#.into(),
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    Block::ToolResult {
                        tool_use_id: "toolu_1".into(),
                        content: "a.txt\nb.txt".into(),
                        is_error: false,
                    },
                    text("and now?"),
                ],
            },
        ],
        tools: vec![ToolSpec {
            name: "bash".into(),
            description: "Runs a command.".into(),
            input_schema_json: r#"{"type":"object","properties":{"command":{"type":"string"}}}"#.into(),
        }],
        max_tokens: 512,
    }
}

// ---------------------------------------------------------------- scripted

#[tokio::test]
async fn echo_repeats_the_last_user_text() {
    let provider = provider_for("scripted:echo", &ProviderConfig::default()).unwrap();
    let messages = vec![
        Message::user_text("first"),
        Message::assistant_text("ignored"),
        Message { role: Role::User, content: vec![text("hello"), text("world")] },
    ];
    let response = provider.complete(request("scripted:echo", messages)).await.unwrap();
    assert_eq!(provider.name(), "scripted");
    assert_eq!(response.content, vec![text("hello\nworld")]);
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    // Twelve bytes of request text and eleven of answer, a quarter each, rounded up.
    assert_eq!(response.usage, ModelUsage { input_tokens: 6, output_tokens: 3, ..ModelUsage::default() });
}

#[tokio::test]
async fn echo_without_user_text_says_so() {
    let provider = provider_for("scripted:echo", &ProviderConfig::default()).unwrap();
    let messages = vec![Message {
        role: Role::User,
        content: vec![Block::ToolResult { tool_use_id: "t".into(), content: "out".into(), is_error: false }],
    }];
    let response = provider.complete(request("scripted:echo", messages)).await.unwrap();
    assert_eq!(response.content, vec![text(ECHO_NO_TEXT)]);
    assert_eq!(response.stop_reason, StopReason::EndTurn);
}

fn scripts_dir_with(name: &str, script: &str) -> (tempfile::TempDir, ProviderConfig) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), script).unwrap();
    let config = ProviderConfig { scripts_dir: Some(dir.path().to_path_buf()), ..ProviderConfig::default() };
    (dir, config)
}

#[tokio::test]
async fn script_turn_is_chosen_by_the_number_of_assistant_messages() {
    let script = json!([
        [{"type": "text", "text": "Listing."}, {"type": "tool_use", "name": "bash", "input": {"command": "ls"}}],
        [{"type": "text", "text": "Done."}],
    ]);
    let (_dir, config) = scripts_dir_with("demo.json", &script.to_string());
    let provider = provider_for("scripted:demo.json", &config).unwrap();

    let first = request("scripted:demo.json", vec![Message::user_text("go")]);
    let response = provider.complete(first.clone()).await.unwrap();
    assert_eq!(
        response.content,
        vec![
            text("Listing."),
            Block::ToolUse {
                id: "toolu_scripted_0_1".into(),
                name: "bash".into(),
                input_json: r#"{"command":"ls"}"#.into()
            },
        ]
    );
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    // A redo of the same call (a brain that crashed mid-call) gets the same turn.
    assert_eq!(provider.complete(first).await.unwrap(), response);

    let mut second = request("scripted:demo.json", vec![Message::user_text("go")]);
    second.messages.push(Message { role: Role::Assistant, content: response.content.clone() });
    second.messages.push(Message {
        role: Role::User,
        content: vec![Block::ToolResult {
            tool_use_id: "toolu_scripted_0_1".into(),
            content: "a".into(),
            is_error: false,
        }],
    });
    let response = provider.complete(second.clone()).await.unwrap();
    assert_eq!(response.content, vec![text("Done.")]);
    assert_eq!(response.stop_reason, StopReason::EndTurn);

    second.messages.push(Message::assistant_text("Done."));
    second.messages.push(Message::user_text("more?"));
    let response = provider.complete(second).await.unwrap();
    assert_eq!(response.content, vec![text(SCRIPT_FINISHED)]);
    assert_eq!(response.stop_reason, StopReason::EndTurn);
}

#[tokio::test]
async fn malformed_scripts_are_permanent_errors_naming_the_file() {
    let cases = [
        ("not json", "not JSON"),
        (r#"{"turns": []}"#, "array of turns"),
        (r#"[{"type": "text", "text": "x"}]"#, "turn 0 must be an array"),
        (
            r#"[[{"type": "tool_use", "input": {}}]]"#,
            "turn 0 block 0: a tool_use block needs a non-empty string \"name\"",
        ),
        (r#"[[{"type": "tool_use", "name": "x", "input": [1]}]]"#, "must be a JSON object"),
        (r#"[[{"type": "image"}]]"#, "unknown block type"),
    ];
    for (script, expected) in cases {
        let (_dir, config) = scripts_dir_with("bad.json", script);
        let provider = provider_for("scripted:bad.json", &config).unwrap();
        let error = provider.complete(request("scripted:bad.json", vec![Message::user_text("go")])).await.unwrap_err();
        let ModelError::Permanent(message) = &error else { panic!("{script}: expected Permanent, got {error:?}") };
        assert!(message.contains("bad.json"), "{script}: {message}");
        assert!(message.contains(expected), "{script}: {message}");
    }
}

#[tokio::test]
async fn missing_scripts_and_escaping_paths_are_permanent_errors() {
    let (_dir, config) = scripts_dir_with("demo.json", "[]");
    let provider = provider_for("scripted:missing.json", &config).unwrap();
    let error = provider.complete(request("scripted:missing.json", vec![])).await.unwrap_err();
    assert!(matches!(&error, ModelError::Permanent(message) if message.contains("missing.json")), "{error:?}");
    for model in ["scripted:../demo.json", "scripted:/etc/passwd", "scripted:"] {
        let error = provider_for(model, &config).err().unwrap();
        assert!(matches!(error, ModelError::Permanent(_)), "{model}: {error:?}");
    }
}

#[test]
fn scripts_need_a_scripts_directory_and_symlinks_may_not_lead_out() {
    // Without --scripts-dir no file is read, absolute or relative.
    for model in ["scripted:/etc/passwd", "scripted:demo.json"] {
        let error = provider_for(model, &ProviderConfig::default()).err().unwrap();
        assert!(
            matches!(&error, ModelError::Permanent(message) if message.contains("--scripts-dir")),
            "{model}: {error:?}"
        );
    }
    assert_eq!(provider_for("scripted:echo", &ProviderConfig::default()).unwrap().name(), "scripted");

    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.json"), "[]").unwrap();
    let (dir, config) = scripts_dir_with("demo.json", "[]");
    std::os::unix::fs::symlink(outside.path().join("secret.json"), dir.path().join("link.json")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    for model in ["scripted:link.json", "scripted:out/secret.json"] {
        let error = provider_for(model, &config).err().unwrap();
        assert!(
            matches!(&error, ModelError::Permanent(message) if message.contains("outside the scripts directory")),
            "{model}: {error:?}"
        );
    }
    // A symlink that stays inside is fine.
    std::os::unix::fs::symlink(dir.path().join("demo.json"), dir.path().join("alias.json")).unwrap();
    assert!(provider_for("scripted:alias.json", &config).is_ok());
}

#[test]
fn unknown_models_and_missing_keys_are_refused() {
    let error = provider_for("gpt-4o", &ProviderConfig::default()).err().unwrap();
    assert!(matches!(error, ModelError::Permanent(_)), "{error:?}");
    let error = provider_for("claude-sonnet-4-5", &ProviderConfig::default()).err().unwrap();
    assert!(matches!(error, ModelError::Auth(_)), "{error:?}");
    // Local OpenAI-style servers need no key.
    assert_eq!(provider_for("openai:llama3", &ProviderConfig::default()).unwrap().name(), "openai");
}

// --------------------------------------------------------------- anthropic

fn anthropic_answer() -> Value {
    json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Reading it."},
            {"type": "tool_use", "id": "toolu_9", "name": "read", "input": {"path": "a.txt"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 120, "output_tokens": 33,
                  "cache_creation_input_tokens": 7, "cache_read_input_tokens": 64},
    })
}

#[tokio::test]
async fn anthropic_sends_the_messages_api_shape_and_parses_tool_use() {
    let server = TestServer::start(vec![Canned::json(200, anthropic_answer())]).await;
    let provider = provider_for("anthropic:claude-test", &config_for(&server)).unwrap();
    assert_eq!(provider.name(), "anthropic");
    let response = provider.complete(tool_conversation("anthropic:claude-test")).await.unwrap();

    assert_eq!(
        response.content,
        vec![
            text("Reading it."),
            Block::ToolUse { id: "toolu_9".into(), name: "read".into(), input_json: r#"{"path":"a.txt"}"#.into() },
        ]
    );
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    let usage = ModelUsage {
        input_tokens: 120,
        output_tokens: 33,
        cache_creation_input_tokens: 7,
        cache_read_input_tokens: 64,
    };
    assert_eq!(response.usage, usage);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-test");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(
        seen.body,
        json!({
            "model": "claude-test",
            "max_tokens": 512,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "list the files"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt\nb.txt", "is_error": false},
                    {"type": "text", "text": "and now?"},
                ]},
            ],
            "tools": [{
                "name": "bash",
                "description": "Runs a command.",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
            }],
        })
    );
}

#[tokio::test]
async fn claude_model_strings_go_to_anthropic_unchanged() {
    let answer = json!({"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                        "usage": {"input_tokens": 1, "output_tokens": 2}});
    let server = TestServer::start(vec![Canned::json(200, answer)]).await;
    let provider = provider_for("claude-sonnet-4-5", &config_for(&server)).unwrap();
    let response = provider.complete(request("claude-sonnet-4-5", vec![Message::user_text("hi")])).await.unwrap();
    assert_eq!(response.content, vec![text("hi")]);
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let seen = server.seen();
    assert_eq!(seen[0].body["model"], "claude-sonnet-4-5");
    assert!(seen[0].body.get("system").is_none());
    assert!(seen[0].body.get("tools").is_none());
}

async fn anthropic_error_for(canned: Canned) -> ModelError {
    let server = TestServer::start(vec![canned]).await;
    let provider = provider_for("anthropic:claude-test", &config_for(&server)).unwrap();
    provider.complete(request("anthropic:claude-test", vec![Message::user_text("hi")])).await.unwrap_err()
}

fn anthropic_error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[tokio::test]
async fn anthropic_http_errors_are_classified() {
    let error = anthropic_error_for(Canned::json(401, anthropic_error_body("authentication_error", "bad key"))).await;
    assert!(matches!(&error, ModelError::Auth(message) if message.contains("bad key")), "{error:?}");
    let error = anthropic_error_for(Canned::json(403, anthropic_error_body("permission_error", "no"))).await;
    assert!(matches!(error, ModelError::Auth(_)), "{error:?}");

    let rate_limited =
        Canned::json(429, anthropic_error_body("rate_limit_error", "slow down")).header("retry-after", "7");
    let error = anthropic_error_for(rate_limited).await;
    assert!(
        matches!(&error, ModelError::RateLimited { retry_after_ms: Some(7000), message } if message.contains("slow down")),
        "{error:?}"
    );
    let error = anthropic_error_for(Canned::json(429, anthropic_error_body("rate_limit_error", "x"))).await;
    assert!(matches!(error, ModelError::RateLimited { retry_after_ms: None, .. }), "{error:?}");

    for status in [408, 409, 500, 503, 529] {
        let error = anthropic_error_for(Canned::json(status, anthropic_error_body("overloaded_error", "busy"))).await;
        assert!(matches!(error, ModelError::Transient(_)), "{status}: {error:?}");
    }
    let error =
        anthropic_error_for(Canned::json(400, anthropic_error_body("invalid_request_error", "bad field"))).await;
    assert!(matches!(&error, ModelError::Permanent(message) if message.contains("bad field")), "{error:?}");
    let error = anthropic_error_for(Canned::raw(404, "not here")).await;
    assert!(matches!(&error, ModelError::Permanent(message) if message.contains("not here")), "{error:?}");
}

#[tokio::test]
async fn anthropic_invalid_answers_are_invalid_response() {
    let bodies = [
        Canned::raw(200, "<html>gateway</html>"),
        Canned::json(200, json!({"content": "text", "stop_reason": "end_turn"})),
        Canned::json(200, json!({"content": [{"type": "text", "text": "x"}]})),
        Canned::json(
            200,
            json!({"content": [{"type": "tool_use", "id": "t", "input": {}}], "stop_reason": "tool_use"}),
        ),
        Canned::json(
            200,
            json!({"content": [{"type": "tool_use", "id": "t", "name": "n", "input": "x"}], "stop_reason": "tool_use"}),
        ),
    ];
    for canned in bodies {
        let body = canned.body.clone();
        let error = anthropic_error_for(canned).await;
        assert!(matches!(error, ModelError::InvalidResponse(_)), "{body}: {error:?}");
    }
}

#[tokio::test]
async fn connection_failures_and_timeouts_are_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let config = ProviderConfig {
        anthropic_base_url: format!("http://{address}"),
        anthropic_api_key: Some("k".into()),
        ..ProviderConfig::default()
    };
    let provider = provider_for("anthropic:claude-test", &config).unwrap();
    let error = provider.complete(request("anthropic:claude-test", vec![Message::user_text("hi")])).await.unwrap_err();
    assert!(matches!(error, ModelError::Transient(_)), "{error:?}");

    let mut slow = Canned::json(200, anthropic_answer());
    slow.delay = Duration::from_secs(5);
    let server = TestServer::start(vec![slow]).await;
    let config = ProviderConfig { request_timeout_ms: 100, ..config_for(&server) };
    let provider = provider_for("anthropic:claude-test", &config).unwrap();
    let error = provider.complete(request("anthropic:claude-test", vec![Message::user_text("hi")])).await.unwrap_err();
    assert!(matches!(&error, ModelError::Transient(message) if message.contains("within 100 ms")), "{error:?}");
}

#[tokio::test]
async fn https_to_a_server_that_does_not_speak_tls_is_a_transient_error() {
    // The default client speaks TLS: a plain-HTTP server on the other end
    // makes the handshake fail, which is a connection problem, not a TLS
    // configuration one.
    let server = TestServer::start(vec![Canned::json(200, anthropic_answer())]).await;
    let plain = config_for(&server);
    let config = ProviderConfig {
        anthropic_base_url: plain.anthropic_base_url.replace("http://", "https://"),
        request_timeout_ms: 5_000,
        ..plain
    };
    let provider = provider_for("anthropic:claude-test", &config).unwrap();
    let error = provider.complete(request("anthropic:claude-test", vec![Message::user_text("hi")])).await.unwrap_err();
    assert!(matches!(&error, ModelError::Transient(_)), "{error:?}");
}

#[tokio::test]
async fn bad_tool_input_in_the_request_is_a_permanent_error_before_sending() {
    let server = TestServer::start(vec![Canned::json(200, anthropic_answer())]).await;
    let provider = provider_for("anthropic:claude-test", &config_for(&server)).unwrap();
    let mut bad = tool_conversation("anthropic:claude-test");
    bad.tools[0].input_schema_json = "{not json".into();
    let error = provider.complete(bad).await.unwrap_err();
    assert!(matches!(error, ModelError::Permanent(_)), "{error:?}");
    assert_eq!(server.calls(), 0);
}

// ------------------------------------------------------------------ openai

fn openai_answer() -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Reading it.",
                "tool_calls": [{"id": "call_7", "type": "function",
                                "function": {"name": "read", "arguments": "{\"path\": \"a.txt\"}"}}],
            },
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59,
                  "prompt_tokens_details": {"cached_tokens": 32}},
    })
}

#[tokio::test]
async fn openai_sends_the_chat_completions_shape_and_parses_tool_calls() {
    let server = TestServer::start(vec![Canned::json(200, openai_answer())]).await;
    let provider = provider_for("openai:llama3", &config_for(&server)).unwrap();
    let mut conversation = tool_conversation("openai:llama3");
    conversation.messages.push(Message::assistant_text("Two files."));
    conversation.messages.push(Message {
        role: Role::User,
        content: vec![Block::ToolResult { tool_use_id: "toolu_2".into(), content: "denied".into(), is_error: true }],
    });
    let response = provider.complete(conversation).await.unwrap();

    assert_eq!(
        response.content,
        vec![
            text("Reading it."),
            Block::ToolUse { id: "call_7".into(), name: "read".into(), input_json: r#"{"path":"a.txt"}"#.into() },
        ]
    );
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    let usage = ModelUsage { input_tokens: 50, output_tokens: 9, cache_read_input_tokens: 32, ..ModelUsage::default() };
    assert_eq!(response.usage, usage);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.headers["authorization"], "Bearer sk-openai-test");
    assert_eq!(
        seen.body,
        json!({
            "model": "llama3",
            "max_tokens": 512,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "list the files"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt\nb.txt"},
                {"role": "user", "content": "and now?"},
                {"role": "assistant", "content": "Two files."},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "[tool error] denied"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "bash",
                "description": "Runs a command.",
                "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
            }}],
        })
    );
}

#[tokio::test]
async fn openai_finish_reasons_and_missing_key() {
    let answer = |finish_reason: &str| json!({"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": finish_reason}]});
    let server = TestServer::start(vec![
        Canned::json(200, answer("stop")),
        Canned::json(200, answer("length")),
        Canned::json(200, answer("content_filter")),
    ])
    .await;
    let config = ProviderConfig { openai_api_key: None, ..config_for(&server) };
    let provider = provider_for("openai:llama3", &config).unwrap();
    let mut stop_reasons = Vec::new();
    for _ in 0..3 {
        let response = provider.complete(request("openai:llama3", vec![Message::user_text("hi")])).await.unwrap();
        assert_eq!(response.content, vec![text("ok")]);
        assert_eq!(response.usage, ModelUsage::default());
        stop_reasons.push(response.stop_reason);
    }
    assert_eq!(stop_reasons, [StopReason::EndTurn, StopReason::MaxTokens, StopReason::Other("content_filter".into())]);
    assert!(server.seen().iter().all(|seen| !seen.headers.contains_key("authorization")));
}

#[tokio::test]
async fn openai_errors_are_classified() {
    type ErrorCheck = fn(&ModelError) -> bool;
    let cases: Vec<(Canned, ErrorCheck)> = vec![
        (Canned::json(401, json!({"error": {"message": "bad key"}})), |e| matches!(e, ModelError::Auth(_))),
        (Canned::json(429, json!({"error": {"message": "slow"}})).header("retry-after-ms", "250"), |e| {
            matches!(e, ModelError::RateLimited { retry_after_ms: Some(250), .. })
        }),
        (Canned::json(503, json!({"error": {"message": "loading"}})), |e| matches!(e, ModelError::Transient(_))),
        (Canned::json(404, json!({"error": {"message": "no model"}})), |e| matches!(e, ModelError::Permanent(_))),
        (Canned::raw(200, "garbage"), |e| matches!(e, ModelError::InvalidResponse(_))),
        (Canned::json(200, json!({"choices": []})), |e| matches!(e, ModelError::InvalidResponse(_))),
        (
            Canned::json(
                200,
                json!({"choices": [{"message": {"content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "x", "arguments": "{broken"}}]},
                "finish_reason": "tool_calls"}]}),
            ),
            |e| matches!(e, ModelError::InvalidResponse(_)),
        ),
        (
            Canned::json(
                200,
                json!({"choices": [{"message": {"content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"arguments": "{}"}}]},
                "finish_reason": "tool_calls"}]}),
            ),
            |e| matches!(e, ModelError::InvalidResponse(_)),
        ),
    ];
    for (canned, expected) in cases {
        let body = canned.body.clone();
        let server = TestServer::start(vec![canned]).await;
        let provider = provider_for("openai:llama3", &config_for(&server)).unwrap();
        let error = provider.complete(request("openai:llama3", vec![Message::user_text("hi")])).await.unwrap_err();
        assert!(expected(&error), "{body}: {error:?}");
    }
}

// --------------------------------------------------------------- resilient

fn fast_policy(attempts_max: u32) -> RetryPolicy {
    RetryPolicy { attempts_max, backoff_base_ms: 1, backoff_max_ms: 5 }
}

fn resilient(server: &TestServer, policy: RetryPolicy, breaker: Arc<CircuitBreaker>) -> ResilientProvider {
    let inner = provider_for("anthropic:claude-test", &config_for(server)).unwrap();
    ResilientProvider::new(inner, policy, breaker, 7)
}

fn overloaded() -> Canned {
    Canned::json(503, anthropic_error_body("overloaded_error", "busy"))
}

fn hello() -> ModelRequest {
    request("anthropic:claude-test", vec![Message::user_text("hi")])
}

#[tokio::test]
async fn resilient_retries_transient_failures_until_success() {
    let server = TestServer::start(vec![overloaded(), overloaded(), Canned::json(200, anthropic_answer())]).await;
    let provider = resilient(&server, fast_policy(5), Arc::new(CircuitBreaker::default()));
    let response = provider.complete(hello()).await.unwrap();
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    assert_eq!(server.calls(), 3);
    assert_eq!(provider.breaker().state(), BreakerState::Closed { consecutive_failures: 0 });
}

#[tokio::test]
async fn resilient_returns_the_last_error_when_retries_are_exhausted() {
    let server = TestServer::start(vec![overloaded()]).await;
    let provider = resilient(&server, fast_policy(3), Arc::new(CircuitBreaker::default()));
    let error = provider.complete(hello()).await.unwrap_err();
    assert!(matches!(&error, ModelError::Transient(message) if message.contains("503")), "{error:?}");
    assert_eq!(server.calls(), 3);

    let rate_limited =
        Canned::json(429, anthropic_error_body("rate_limit_error", "slow")).header("retry-after-ms", "1");
    let server = TestServer::start(vec![rate_limited]).await;
    let provider = resilient(&server, fast_policy(2), Arc::new(CircuitBreaker::default()));
    let error = provider.complete(hello()).await.unwrap_err();
    assert!(matches!(error, ModelError::RateLimited { retry_after_ms: Some(1), .. }), "{error:?}");
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn resilient_does_not_retry_permanent_errors() {
    for canned in [
        Canned::json(400, anthropic_error_body("invalid_request_error", "bad")),
        Canned::json(401, anthropic_error_body("authentication_error", "bad key")),
        Canned::raw(200, "garbage"),
    ] {
        let server = TestServer::start(vec![canned]).await;
        let provider = resilient(&server, fast_policy(5), Arc::new(CircuitBreaker::default()));
        let error = provider.complete(hello()).await.unwrap_err();
        assert!(!matches!(error, ModelError::Transient(_) | ModelError::RateLimited { .. }), "{error:?}");
        assert_eq!(server.calls(), 1, "{error:?}");
    }
}

#[tokio::test]
async fn breaker_opens_rejects_without_calling_and_half_opens_after_the_cool_down() {
    let server = TestServer::start(vec![overloaded()]).await;
    let breaker = Arc::new(CircuitBreaker::new(3, Duration::from_millis(300)));
    let provider = resilient(&server, fast_policy(1), breaker.clone());
    for _ in 0..3 {
        let error = provider.complete(hello()).await.unwrap_err();
        assert!(matches!(error, ModelError::Transient(_)), "{error:?}");
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let error = provider.complete(hello()).await.unwrap_err();
    assert_eq!(error, ModelError::CircuitOpen { provider: "anthropic".into() });
    assert!(error.is_retryable());
    assert_eq!(server.calls(), 3, "an open breaker must not call the provider");

    // After the cool-down one probe goes through; it fails, so the breaker re-opens.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen { probe_in_flight: false });
    let error = provider.complete(hello()).await.unwrap_err();
    assert!(matches!(error, ModelError::Transient(_)), "{error:?}");
    assert_eq!(server.calls(), 4);
    assert_eq!(breaker.state(), BreakerState::Open);
    let error = provider.complete(hello()).await.unwrap_err();
    assert!(matches!(error, ModelError::CircuitOpen { .. }), "{error:?}");
    assert_eq!(server.calls(), 4);

    // The next probe succeeds and closes it.
    server.set_answers(vec![Canned::json(200, anthropic_answer())]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    provider.complete(hello()).await.unwrap();
    assert_eq!(server.calls(), 5);
    assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 0 });
}

#[tokio::test(start_paused = true)]
async fn half_open_breaker_admits_a_single_probe() {
    let breaker = CircuitBreaker::new(2, Duration::from_secs(30));
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 1 });
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 0 });
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert!(breaker.try_acquire().is_none());

    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_none(), "only one probe while half-open");
    // A cancelled probe frees the slot without closing the breaker.
    drop(probe);
    assert_eq!(breaker.state(), BreakerState::HalfOpen { probe_in_flight: false });
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 0 });
}

#[test]
fn backoff_is_full_jitter_bounded_and_seeded() {
    use rand::SeedableRng;
    let policy = RetryPolicy { attempts_max: 10, backoff_base_ms: 100, backoff_max_ms: 1_000 };
    let draw = |seed: u64| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..40).map(|retry| policy.backoff(retry, None, &mut rng)).collect::<Vec<_>>()
    };
    let delays = draw(1);
    assert_eq!(delays, draw(1), "the same seed gives the same delays");
    assert_ne!(delays, draw(2));
    for (retry, delay) in delays.iter().enumerate() {
        let ceiling_ms = (100u64 << retry.min(20)).min(1_000);
        assert!(delay.as_millis() < u128::from(ceiling_ms), "retry {retry}: {delay:?}");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    assert!(policy.backoff(0, Some(5_000), &mut rng) >= Duration::from_secs(5), "retry-after is a lower bound");
    let zero = RetryPolicy { attempts_max: 3, backoff_base_ms: 0, backoff_max_ms: 0 };
    assert_eq!(zero.backoff(4, None, &mut rng), Duration::ZERO);
}

#[test]
fn retryable_errors_are_documented_ones() {
    assert!(ModelError::Transient("x".into()).is_retryable());
    assert!(ModelError::RateLimited { retry_after_ms: None, message: "x".into() }.is_retryable());
    assert!(ModelError::CircuitOpen { provider: "x".into() }.is_retryable());
    assert!(!ModelError::Permanent("x".into()).is_retryable());
    assert!(!ModelError::Auth("x".into()).is_retryable());
    assert!(!ModelError::InvalidResponse("x".into()).is_retryable());
}

// ------------------------------------------------------- anthropic streaming

/// Renders events as a `text/event-stream` body, with CRLF line ends to
/// check that they are accepted too.
fn event_stream(events: &[Value]) -> String {
    events
        .iter()
        .map(|event| format!("event: {}\r\ndata: {}\r\n\r\n", event["type"].as_str().unwrap(), event))
        .collect()
}

fn streamed_tool_use_events() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
               "content": [], "model": "claude-test", "stop_reason": null,
               "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Reading "}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "it."}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2,
               "content_block": {"type": "tool_use", "id": "toolu_9", "name": "read", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 2,
               "delta": {"type": "input_json_delta", "partial_json": "{\"path\": \"a."}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "txt\"}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"output_tokens": 40}}),
        json!({"type": "message_stop"}),
    ]
}

fn streaming_config(server: &TestServer) -> ProviderConfig {
    ProviderConfig { anthropic_streaming: true, ..config_for(server) }
}

#[tokio::test]
async fn anthropic_streaming_assembles_the_same_response() {
    let stream =
        Canned::raw(200, &event_stream(&streamed_tool_use_events())).header("content-type", "text/event-stream");
    let server = TestServer::start(vec![stream]).await;
    let provider = provider_for("anthropic:claude-test", &streaming_config(&server)).unwrap();
    let response = provider.complete(tool_conversation("anthropic:claude-test")).await.unwrap();
    assert_eq!(
        response.content,
        vec![
            text("Reading it."),
            Block::ToolUse { id: "toolu_9".into(), name: "read".into(), input_json: r#"{"path":"a.txt"}"#.into() },
        ]
    );
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    assert_eq!(response.usage, ModelUsage { input_tokens: 25, output_tokens: 40, ..ModelUsage::default() });
    let seen = server.seen();
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].headers["accept"], "text/event-stream");
    assert_eq!(seen[0].body["system"], "You are terse.");
}

#[tokio::test]
async fn anthropic_streaming_accepts_a_plain_json_answer() {
    let server = TestServer::start(vec![Canned::json(200, anthropic_answer())]).await;
    let provider = provider_for("anthropic:claude-test", &streaming_config(&server)).unwrap();
    let response = provider.complete(hello()).await.unwrap();
    assert_eq!(response.stop_reason, StopReason::ToolUse);
}

#[tokio::test]
async fn anthropic_streaming_failures_are_classified() {
    let mut cut_short = streamed_tool_use_events();
    cut_short.truncate(8);
    let mut bad_input = streamed_tool_use_events();
    bad_input[12] = json!({"type": "content_block_delta", "index": 2,
                           "delta": {"type": "input_json_delta", "partial_json": "txt"}});
    let mut nameless_tool = streamed_tool_use_events();
    nameless_tool[9] = json!({"type": "content_block_start", "index": 2,
                              "content_block": {"type": "tool_use", "id": "toolu_9", "input": {}}});
    let mut overloaded = streamed_tool_use_events();
    overloaded.truncate(3);
    overloaded.push(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    let mut unopened = streamed_tool_use_events();
    unopened.remove(5);

    type ErrorCheck = fn(&ModelError) -> bool;
    let cases: Vec<(&str, String, ErrorCheck)> = vec![
        ("cut short", event_stream(&cut_short), |e| matches!(e, ModelError::Transient(_))),
        ("bad tool input", event_stream(&bad_input), |e| matches!(e, ModelError::InvalidResponse(_))),
        ("nameless tool", event_stream(&nameless_tool), |e| matches!(e, ModelError::InvalidResponse(_))),
        (
            "overloaded",
            event_stream(&overloaded),
            |e| matches!(e, ModelError::Transient(m) if m.contains("Overloaded")),
        ),
        ("delta for an unopened block", event_stream(&unopened), |e| matches!(e, ModelError::InvalidResponse(_))),
        ("garbage", "data: {not json\n\n".to_string(), |e| matches!(e, ModelError::InvalidResponse(_))),
    ];
    for (name, body, expected) in cases {
        let server = TestServer::start(vec![Canned::raw(200, &body)]).await;
        let provider = provider_for("anthropic:claude-test", &streaming_config(&server)).unwrap();
        let error = provider.complete(hello()).await.unwrap_err();
        assert!(expected(&error), "{name}: {error:?}");
    }
}

/// A server whose every answer is `chunks`, sent `gap` apart.
async fn start_chunked_server(chunks: Vec<Vec<u8>>, gap: Duration) -> String {
    let app = Router::new().fallback(move || {
        let chunks = chunks.clone();
        async move {
            let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut chunks| async move {
                let chunk = chunks.next()?;
                tokio::time::sleep(gap).await;
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), chunks))
            });
            ([("content-type", "text/event-stream")], axum::body::Body::from_stream(stream)).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// The event stream of a text answer cut into pieces of `size` bytes, so
/// pieces end mid-line and mid-character.
fn chunked_text_answer(text: &str, size: usize) -> Vec<Vec<u8>> {
    let events = [
        json!({"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 0}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        json!({"type": "message_stop"}),
    ];
    event_stream(&events).into_bytes().chunks(size).map(<[u8]>::to_vec).collect()
}

#[tokio::test]
async fn anthropic_streaming_reads_chunks_as_they_come_and_bounds_silences_only() {
    let chunks = chunked_text_answer("héllo wörld", 13);
    assert!(chunks.len() > 40);
    // The whole answer takes well over the timeout, but no silence does.
    let base_url = start_chunked_server(chunks, Duration::from_millis(10)).await;
    let config = ProviderConfig {
        anthropic_base_url: base_url,
        anthropic_api_key: Some("k".into()),
        anthropic_streaming: true,
        request_timeout_ms: 200,
        ..ProviderConfig::default()
    };
    let provider = provider_for("anthropic:claude-test", &config).unwrap();
    let response = provider.complete(hello()).await.unwrap();
    assert_eq!(response.content, vec![text("héllo wörld")]);
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    assert_eq!(response.usage, ModelUsage { input_tokens: 3, output_tokens: 4, ..ModelUsage::default() });
}

#[tokio::test]
async fn anthropic_streaming_silence_is_a_transient_error() {
    let chunks = chunked_text_answer("hello", 400);
    let base_url = start_chunked_server(chunks, Duration::from_secs(5)).await;
    let config = ProviderConfig {
        anthropic_base_url: base_url,
        anthropic_api_key: Some("k".into()),
        anthropic_streaming: true,
        request_timeout_ms: 100,
        ..ProviderConfig::default()
    };
    let provider = provider_for("anthropic:claude-test", &config).unwrap();
    let error = provider.complete(hello()).await.unwrap_err();
    assert!(matches!(&error, ModelError::Transient(message) if message.contains("sent nothing")), "{error:?}");
}

#[test]
fn sse_decoder_gives_the_same_events_for_any_chunking() {
    use agentd_actors::model::SseDecoder;
    let body =
        "event: a\ndata: {\"x\": 1}\n\n: comment\r\nevent: b\r\ndata: line one\r\ndata: line two\r\n\r\ndata: last";
    let whole = {
        let mut decoder = SseDecoder::default();
        let mut events = decoder.push(body.as_bytes()).unwrap();
        events.extend(decoder.finish().unwrap());
        events
    };
    assert_eq!(whole, ["{\"x\": 1}", "line one\nline two", "last"]);
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    for byte in body.as_bytes() {
        events.extend(decoder.push(std::slice::from_ref(byte)).unwrap());
    }
    events.extend(decoder.finish().unwrap());
    assert_eq!(events, whole);
}

#[tokio::test]
async fn resilient_does_not_wait_out_a_pause_longer_than_its_longest_backoff() {
    let rate_limited = Canned::json(429, anthropic_error_body("rate_limit_error", "slow")).header("retry-after", "60");
    let server = TestServer::start(vec![rate_limited]).await;
    let provider = resilient(&server, fast_policy(5), Arc::new(CircuitBreaker::default()));
    let error = provider.complete(hello()).await.unwrap_err();
    assert!(matches!(error, ModelError::RateLimited { retry_after_ms: Some(60_000), .. }), "{error:?}");
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn empty_text_blocks_are_not_sent_to_anthropic_and_openai_content_is_never_null_alone() {
    let server = TestServer::start(vec![Canned::json(200, anthropic_answer())]).await;
    let provider = provider_for("anthropic:claude-test", &config_for(&server)).unwrap();
    let messages = vec![
        Message::user_text("hi"),
        Message {
            role: Role::Assistant,
            content: vec![
                text(""),
                Block::ToolUse { id: "toolu_1".into(), name: "bash".into(), input_json: "{}".into() },
            ],
        },
    ];
    provider.complete(request("anthropic:claude-test", messages.clone())).await.unwrap();
    assert_eq!(
        server.seen()[0].body["messages"][1]["content"],
        json!([{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}])
    );

    let server = TestServer::start(vec![Canned::json(200, openai_answer())]).await;
    let provider = provider_for("openai:llama3", &config_for(&server)).unwrap();
    let mut messages = messages;
    messages.push(Message {
        role: Role::User,
        content: vec![Block::ToolResult { tool_use_id: "toolu_1".into(), content: "ok".into(), is_error: false }],
    });
    messages.push(Message { role: Role::Assistant, content: vec![] });
    provider.complete(request("openai:llama3", messages)).await.unwrap();
    let sent = &server.seen()[0].body["messages"];
    assert_eq!(sent[1]["content"], Value::Null);
    assert_eq!(sent[1]["tool_calls"][0]["function"]["arguments"], "{}");
    assert_eq!(sent[2], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}));
    assert_eq!(sent[3], json!({"role": "assistant", "content": ""}));
}
