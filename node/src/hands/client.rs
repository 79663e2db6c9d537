//! The node's side of ALPN `agentd-hands/1`: a [`Sandbox`] whose calls run in
//! the `agentd hands` agent at one address.

use std::net::SocketAddr;
use std::time::Duration;

use agentd_actors::sandbox::{Sandbox, SandboxError, ToolCall, ToolOutput};
use agentd_protocol::frame::encoded_len;
use agentd_protocol::hands::{HandsCall, HandsError, HandsRequest, HandsResponse};
use agentd_protocol::limits::HANDS_FRAME_BYTES_MAX;
use agentd_raft::tls::HandsIdentities;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

/// How long a connection to the agent may take to establish.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Time an answer may take beyond the tool's own wall-clock limit (ledger
/// writes, a shell start, the network).
const ANSWER_MARGIN_MS: u64 = 30_000;

/// Calls one sandbox's agent. One cached connection, one stream per call; a
/// call that finds the connection closed reconnects once (the agent's ledger
/// makes a repeated key safe).
pub struct HandsClient {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    /// The longest a call may wait for its answer.
    answer_timeout: Duration,
    connection: tokio::sync::Mutex<Option<quinn::Connection>>,
    destroyed: std::sync::atomic::AtomicBool,
}

impl HandsClient {
    /// A client for the agent at `addr`, presenting `identities.node` and checking the
    /// agent's certificate names `identities.server_name`. `wall_clock_ms` is the
    /// sandbox's per-call limit, which bounds how long an answer may take.
    pub fn new(
        addr: SocketAddr,
        identities: &HandsIdentities,
        wall_clock_ms: u64,
    ) -> Result<HandsClient, SandboxError> {
        let config = identities
            .node
            .node_client_config()
            .map_err(|error| SandboxError::Unavailable(format!("hands client certificate: {error}")))?;
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|error| SandboxError::Unavailable(format!("cannot open a UDP socket: {error}")))?;
        endpoint.set_default_client_config(config);
        Ok(HandsClient {
            endpoint,
            addr,
            server_name: identities.server_name.clone(),
            answer_timeout: Duration::from_millis(wall_clock_ms.saturating_add(ANSWER_MARGIN_MS)),
            connection: tokio::sync::Mutex::new(None),
            destroyed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the agent answers.
    pub async fn ping(&self) -> Result<(), SandboxError> {
        match self.call(HandsCall::Ping).await? {
            HandsResponse::Pong => Ok(()),
            other => Err(SandboxError::Crashed(format!("unexpected answer to a ping: {other:?}"))),
        }
    }

    /// Sends one call and waits for its answer.
    pub async fn call(&self, call: HandsCall) -> Result<HandsResponse, SandboxError> {
        if self.destroyed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(SandboxError::Crashed("the sandbox was destroyed".to_owned()));
        }
        // Resending after the call went out could run it twice, unless the agent's
        // ledger recognises it (a non-empty idempotency key) or it has no effect.
        let resend_safe = match &call {
            HandsCall::Ping => true,
            HandsCall::Execute { idempotency_key, .. } => !idempotency_key.is_empty(),
        };
        let request = HandsRequest::new(call);
        match self.exchange(&request, false, resend_safe).await {
            Err(Retry::Reconnect(_)) => {}
            Err(Retry::No(error)) => return Err(error),
            Ok(response) => return Ok(response),
        }
        match self.exchange(&request, true, resend_safe).await {
            Ok(response) => Ok(response),
            Err(Retry::Reconnect(error) | Retry::No(error)) => Err(error),
        }
    }

    async fn exchange(&self, request: &HandsRequest, fresh: bool, resend_safe: bool) -> Result<HandsResponse, Retry> {
        let after_sending = |error: SandboxError| if resend_safe { Retry::Reconnect(error) } else { Retry::No(error) };
        let connection = self.connection(fresh).await.map_err(Retry::No)?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|error| Retry::Reconnect(crashed(format!("cannot open a stream to the agent: {error}"))))?;
        let exchange = async {
            agentd_raft::wire::write_frame(&mut send, request, HANDS_FRAME_BYTES_MAX)
                .await
                .map_err(|error| after_sending(crashed(format!("cannot send to the agent: {error}"))))?;
            let _ = send.finish();
            agentd_raft::wire::read_frame::<_, HandsResponse>(&mut recv, HANDS_FRAME_BYTES_MAX)
                .await
                .map_err(|error| after_sending(crashed(format!("no answer from the agent: {error}"))))?
                .ok_or_else(|| after_sending(crashed("the agent closed the stream without answering")))
        };
        tokio::time::timeout(self.answer_timeout, exchange).await.map_err(|_| {
            Retry::No(crashed(format!("the agent did not answer within {} ms", self.answer_timeout.as_millis())))
        })?
    }

    async fn connection(&self, fresh: bool) -> Result<quinn::Connection, SandboxError> {
        let mut cached = self.connection.lock().await;
        if let Some(connection) = cached.as_ref() {
            if !fresh && connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect(self.addr, &self.server_name)
            .map_err(|error| crashed(format!("cannot connect to the agent at {}: {error}", self.addr)))?;
        let connection = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
            .await
            .map_err(|_| crashed(format!("the agent at {} did not answer within {CONNECT_TIMEOUT_MS} ms", self.addr)))?
            .map_err(|error| crashed(format!("cannot connect to the agent at {}: {error}", self.addr)))?;
        *cached = Some(connection.clone());
        Ok(connection)
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.destroyed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops calling the agent and closes the connection.
    pub fn close(&self) {
        self.destroyed.store(true, std::sync::atomic::Ordering::Release);
        self.endpoint.close(quinn::VarInt::from_u32(0), b"sandbox destroyed");
    }
}

enum Retry {
    /// The connection failed: a fresh one may succeed.
    Reconnect(SandboxError),
    No(SandboxError),
}

fn crashed(message: impl Into<String>) -> SandboxError {
    SandboxError::Crashed(message.into())
}

impl Sandbox for HandsClient {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        async move {
            let call = HandsCall::Execute {
                name: call.name,
                input_json: call.input_json,
                idempotency_key: call.idempotency_key,
                secrets: call.secrets.into_iter().map(|secret| (secret.name, secret.value)).collect(),
            };
            // Too large for one frame is the tool input's fault (a huge `write`), not the sandbox's.
            let size = encoded_len(&HandsRequest::new(call.clone()))
                .map_err(|error| SandboxError::Io(format!("encoding the call: {error}")))?;
            if size > HANDS_FRAME_BYTES_MAX {
                return Ok(ToolOutput::failure(format!(
                    "the tool input is {size} bytes; at most {HANDS_FRAME_BYTES_MAX} bytes can be sent to the sandbox"
                )));
            }
            match self.call(call).await? {
                HandsResponse::Output { content, is_error } => Ok(ToolOutput { content, is_error }),
                HandsResponse::Error(error) => Err(match error {
                    HandsError::Unavailable { message } => SandboxError::Unavailable(message),
                    HandsError::Crashed { message } => SandboxError::Crashed(message),
                    HandsError::Io { message } => SandboxError::Io(message),
                    other => SandboxError::Unavailable(format!("the sandbox agent refused the call: {other}")),
                }),
                HandsResponse::Pong => Err(crashed("the agent answered a call with a pong")),
            }
        }
        .boxed()
    }

    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        async move {
            self.close();
            Ok(())
        }
        .boxed()
    }
}
