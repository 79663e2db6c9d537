//! The node's side of ALPN `agentd-hands/1`: a [`Sandbox`] whose calls run in
//! the `agentd hands` agent at one address.

use std::net::SocketAddr;
use std::time::Duration;

use agentd_actors::sandbox::{Sandbox, SandboxError, ToolCall, ToolOutput};
use agentd_protocol::frame::encoded_len;
use agentd_protocol::hands::{HandsCall, HandsError, HandsRequest, HandsResponse};
use agentd_protocol::limits::{HANDS_FRAME_BYTES_MAX, SANDBOX_HEALTH_TIMEOUT_MS};
use agentd_transport::tls::HandsIdentities;
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
        match self.call(HandsCall::Ping).await.map_err(|failure| failure.error)? {
            HandsResponse::Pong => Ok(()),
            other => Err(SandboxError::Crashed(format!("unexpected answer to a ping: {other:?}"))),
        }
    }

    /// A ping within `SANDBOX_HEALTH_TIMEOUT_MS`: the agent answers over this client's
    /// connection (reconnecting once if it broke).
    pub async fn health_check(&self) -> Result<(), SandboxError> {
        if self.is_closed() {
            return Err(crashed("the sandbox was destroyed"));
        }
        let timeout = Duration::from_millis(SANDBOX_HEALTH_TIMEOUT_MS);
        tokio::time::timeout(timeout, self.ping()).await.unwrap_or_else(|_| {
            Err(crashed(format!("the agent did not answer a ping within {SANDBOX_HEALTH_TIMEOUT_MS} ms")))
        })
    }

    /// Sends one call and waits for its answer.
    pub async fn call(&self, call: HandsCall) -> Result<HandsResponse, CallFailure> {
        if self.destroyed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(CallFailure { error: crashed("the sandbox was destroyed"), may_have_run: false });
        }
        // Resending after the call went out could run it twice, unless the agent's
        // ledger recognises it (a non-empty idempotency key) or it has no effect.
        let resend_safe = match &call {
            HandsCall::Ping => true,
            HandsCall::Execute { idempotency_key, .. } => !idempotency_key.is_empty(),
        };
        let request = HandsRequest::new(call);
        let mut may_have_run = false;
        let mut fresh = false;
        loop {
            let failed = match self.exchange(&request, fresh).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            may_have_run |= failed.sent;
            let retry = !fresh && failed.connection_lost && (!failed.sent || resend_safe);
            if !retry {
                return Err(CallFailure { error: failed.error, may_have_run });
            }
            fresh = true;
        }
    }

    async fn exchange(&self, request: &HandsRequest, fresh: bool) -> Result<HandsResponse, Failed> {
        let unsent = |error: SandboxError, connection_lost: bool| Failed { error, sent: false, connection_lost };
        let sent = |error: SandboxError| Failed { error, sent: true, connection_lost: true };
        let connection = self.connection(fresh).await.map_err(|error| unsent(error, false))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|error| unsent(crashed(format!("cannot open a stream to the agent: {error}")), true))?;
        let exchange = async {
            agentd_transport::wire::write_frame(&mut send, request, HANDS_FRAME_BYTES_MAX)
                .await
                .map_err(|error| sent(crashed(format!("cannot send to the agent: {error}"))))?;
            let _ = send.finish();
            agentd_transport::wire::read_frame::<_, HandsResponse>(&mut recv, HANDS_FRAME_BYTES_MAX)
                .await
                .map_err(|error| sent(crashed(format!("no answer from the agent: {error}"))))?
                .ok_or_else(|| sent(crashed("the agent closed the stream without answering")))
        };
        tokio::time::timeout(self.answer_timeout, exchange).await.map_err(|_| Failed {
            error: crashed(format!("the agent did not answer within {} ms", self.answer_timeout.as_millis())),
            sent: true,
            connection_lost: false,
        })?
    }

    /// Runs one tool call; a failure says whether the call may have run.
    pub async fn execute_call(&self, call: ToolCall) -> Result<ToolOutput, CallFailure> {
        let call = HandsCall::Execute {
            name: call.name,
            input_json: call.input_json,
            idempotency_key: call.idempotency_key,
            secrets: call.secrets.into_iter().map(|secret| (secret.name, secret.value)).collect(),
        };
        // Too large for one frame is the tool input's fault (a huge `write`), not the sandbox's.
        let size = encoded_len(&HandsRequest::new(call.clone())).map_err(|error| CallFailure {
            error: SandboxError::Io(format!("encoding the call: {error}")),
            may_have_run: false,
        })?;
        if size > HANDS_FRAME_BYTES_MAX {
            return Ok(ToolOutput::failure(format!(
                "the tool input is {size} bytes; at most {HANDS_FRAME_BYTES_MAX} bytes can be sent to the sandbox"
            )));
        }
        match self.call(call).await? {
            HandsResponse::Output { content, is_error } => Ok(ToolOutput { content, is_error }),
            // The agent's runner fails with Unavailable or Crashed only before the tool runs;
            // an Io failure may come from recording the output of a tool that ran.
            HandsResponse::Error(error) => Err(match error {
                HandsError::Unavailable { message } => {
                    CallFailure { error: SandboxError::Unavailable(message), may_have_run: false }
                }
                HandsError::Crashed { message } => {
                    CallFailure { error: SandboxError::Crashed(message), may_have_run: false }
                }
                HandsError::Io { message } => CallFailure { error: SandboxError::Io(message), may_have_run: true },
                other => CallFailure {
                    error: SandboxError::Unavailable(format!("the sandbox agent refused the call: {other}")),
                    may_have_run: false,
                },
            }),
            HandsResponse::Pong => {
                Err(CallFailure { error: crashed("the agent answered a call with a pong"), may_have_run: true })
            }
        }
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

/// A call that got no answer from the agent.
#[derive(Debug)]
pub struct CallFailure {
    pub error: SandboxError,
    /// Whether the request may have reached the agent (and so the tool may have run).
    pub may_have_run: bool,
}

/// One failed exchange.
struct Failed {
    error: SandboxError,
    /// The request was (at least partly) written.
    sent: bool,
    /// The connection broke: a fresh one may work.
    connection_lost: bool,
}

fn crashed(message: impl Into<String>) -> SandboxError {
    SandboxError::Crashed(message.into())
}

impl Sandbox for HandsClient {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        async move { self.execute_call(call).await.map_err(|failure| failure.error) }.boxed()
    }

    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        async move {
            self.close();
            Ok(())
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        self.health_check().boxed()
    }
}
