//! `agentd hands`: the agent inside a sandbox. Serves the built-in tools of a
//! [`LocalSandbox`] over QUIC (ALPN `agentd-hands/1`, mutual TLS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agentd_actors::sandbox::{Limits, LocalSandbox, LocalShell, Sandbox, SandboxError, Secret, ToolCall};
use agentd_protocol::hands::HANDS_PROTOCOL_VERSION;
use agentd_protocol::hands::{HandsCall, HandsError, HandsRequest, HandsResponse};
use agentd_protocol::limits::HANDS_FRAME_BYTES_MAX;
use agentd_transport::tls::HandsIdentity;
use anyhow::{Context, Result};

/// What `agentd hands` serves, and how.
#[derive(Debug, Clone)]
pub struct HandsAgentOptions {
    pub listen: SocketAddr,
    pub workspace: PathBuf,
    pub ledger: PathBuf,
    /// The CA certificate, and this agent's certificate and key (PEM text).
    pub identity: HandsIdentity,
    pub limits: Limits,
    /// How the tools' shell starts (program, user, network namespace).
    pub shell: LocalShell,
}

/// A running agent: its address, and the task serving it.
pub struct HandsAgent {
    endpoint: quinn::Endpoint,
    sandbox: Arc<LocalSandbox>,
}

impl HandsAgent {
    /// Opens the sandbox and binds the endpoint; `serve` then answers calls.
    pub fn bind(options: HandsAgentOptions) -> Result<HandsAgent> {
        let sandbox = LocalSandbox::open(&options.workspace, &options.ledger, options.shell, options.limits)
            .context("cannot open the sandbox")?;
        let config = options.identity.agent_server_config().context("bad agent certificate")?;
        let endpoint = quinn::Endpoint::server(config, options.listen)
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        Ok(HandsAgent { endpoint, sandbox: Arc::new(sandbox) })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Serves until the endpoint is closed. A failed handshake (no certificate, or one
    /// the CA did not issue) ends only that connection.
    pub async fn serve(self) -> Result<()> {
        while let Some(incoming) = self.endpoint.accept().await {
            let sandbox = self.sandbox.clone();
            tokio::spawn(async move {
                let connection = match incoming.await {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::info!(%error, "refused a hands connection");
                        return;
                    }
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    tokio::spawn(serve_stream(sandbox.clone(), send, recv));
                }
            });
        }
        self.sandbox.destroy().await.ok();
        Ok(())
    }
}

async fn serve_stream(sandbox: Arc<LocalSandbox>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let response = match agentd_transport::wire::read_frame::<_, HandsRequest>(&mut recv, HANDS_FRAME_BYTES_MAX).await {
        Ok(Some(request)) => answer(&sandbox, request).await,
        Ok(None) => return,
        Err(agentd_transport::Error::Protocol(error)) => HandsResponse::Error(HandsError::from(error)),
        Err(error) => HandsResponse::Error(HandsError::Malformed { message: error.to_string() }),
    };
    if let Err(error) = agentd_transport::wire::write_frame(&mut send, &response, HANDS_FRAME_BYTES_MAX).await {
        tracing::debug!(%error, "could not answer a hands call");
        return;
    }
    let _ = send.finish();
    // Wait until the peer has read the answer (or gone), so that it is not cut off.
    let _ = send.stopped().await;
}

async fn answer(sandbox: &LocalSandbox, request: HandsRequest) -> HandsResponse {
    if request.version != HANDS_PROTOCOL_VERSION {
        return HandsResponse::Error(HandsError::UnsupportedVersion {
            requested: request.version,
            supported: HANDS_PROTOCOL_VERSION,
        });
    }
    match request.body {
        HandsCall::Ping => HandsResponse::Pong,
        HandsCall::Execute { name, input_json, idempotency_key, secrets } => {
            let secrets = secrets.into_iter().map(|(name, value)| Secret { name, value }).collect();
            match sandbox.execute(ToolCall { name, input_json, idempotency_key, secrets }).await {
                Ok(output) => HandsResponse::Output { content: output.content, is_error: output.is_error },
                Err(error) => HandsResponse::Error(match error {
                    SandboxError::Unavailable(message) => HandsError::Unavailable { message },
                    SandboxError::Crashed(message) => HandsError::Crashed { message },
                    SandboxError::Io(message) => HandsError::Io { message },
                }),
            }
        }
    }
}
