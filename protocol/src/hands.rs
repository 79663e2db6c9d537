//! The sandbox agent's protocol (ALPN `agentd-hands/1`): a node asks the
//! `agentd hands` agent inside a sandbox to run one tool call. One
//! bidirectional QUIC stream per call: the node writes one [`HandsRequest`]
//! frame and finishes its side; the agent answers with one [`HandsResponse`]
//! frame. Both ends present certificates issued by the cluster CA.

use serde::{Deserialize, Serialize};

/// The version of the hands protocol (ALPN `agentd-hands/1`), which a node
/// and the `agentd hands` agent inside a sandbox speak. It moves on its own:
/// the client protocol's versions do not concern sandboxes.
pub const HANDS_PROTOCOL_VERSION: u16 = 1;

/// The envelope of every call to a sandbox agent; `version` is the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandsRequest {
    pub version: u16,
    pub body: HandsCall,
}

impl HandsRequest {
    pub fn new(body: HandsCall) -> Self {
        Self { version: HANDS_PROTOCOL_VERSION, body }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandsCall {
    /// Answers [`HandsResponse::Pong`]: the agent is up (used after a boot).
    Ping,
    /// Runs one built-in tool (`bash`, `read`, `write`, `edit`, `glob`,
    /// `grep`). A repeated non-empty `idempotency_key` is answered with the
    /// recorded output without running the tool again.
    Execute {
        name: String,
        /// The tool input as a JSON object, exactly as the model produced it.
        input_json: String,
        idempotency_key: String,
        /// `(name, value)` credentials exported to `bash` for this call only
        /// and scrubbed from the output before it is recorded or answered.
        secrets: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandsResponse {
    Pong,
    /// What the tool produced; a failing tool is an output with `is_error`.
    Output {
        content: String,
        is_error: bool,
    },
    /// The call did not run (or the sandbox failed before the tool did).
    Error(HandsError),
}

/// Why a call to a sandbox agent was not answered with a tool output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HandsError {
    #[error("unsupported protocol version {requested}; this agent speaks {supported}")]
    UnsupportedVersion { requested: u16, supported: u16 },
    #[error("malformed request: {message}")]
    Malformed { message: String },
    #[error("request of {bytes} bytes exceeds the limit of {max_bytes} bytes")]
    PayloadTooLarge { bytes: u64, max_bytes: u64 },
    /// The sandbox cannot run tools here (a missing program, say).
    #[error("sandbox unavailable: {message}")]
    Unavailable { message: String },
    /// The sandbox's shell could not be started or died; the next call may succeed.
    #[error("sandbox crashed: {message}")]
    Crashed { message: String },
    /// The agent could not read or write its own files (workspace, ledger).
    #[error("sandbox io: {message}")]
    Io { message: String },
}

impl From<crate::Error> for HandsError {
    fn from(error: crate::Error) -> Self {
        match error {
            crate::Error::FrameTooLarge { len, max } => {
                HandsError::PayloadTooLarge { bytes: len as u64, max_bytes: max as u64 }
            }
            other => HandsError::Malformed { message: other.to_string() },
        }
    }
}
