use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// Errors from encoding, framing and parsing. Never a panic: every decoder
/// in this crate turns bad bytes into one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("empty frame")]
    EmptyFrame,
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("message could not be encoded: {0}")]
    Encode(String),
    #[error("{trailing} unexpected bytes after the message")]
    TrailingBytes { trailing: usize },
    #[error("invalid id {text:?}: expected {expected} followed by 32 hex digits")]
    InvalidId { text: String, expected: &'static str },
}

/// An error answered to a caller over the wire. Each variant tells the caller
/// what it can do next (retry, go elsewhere, fix the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    #[error("unsupported protocol version {requested}; this node speaks {supported}")]
    UnsupportedVersion { requested: u16, supported: u16 },
    #[error("malformed request: {message}")]
    Malformed { message: String },
    #[error("invalid request: {message}")]
    InvalidRequest { message: String },
    #[error("payload of {bytes} bytes exceeds the limit of {max_bytes} bytes")]
    PayloadTooLarge { bytes: u64, max_bytes: u64 },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("not the leader of this shard; leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("this node holds no replica of {group}")]
    NotReplica { group: String },
    #[error("temporarily unavailable: {message}")]
    Unavailable { message: String },
    #[error("stale orchestrator epoch {epoch}; the session's epoch is {current}")]
    StaleEpoch { epoch: u64, current: u64 },
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    #[error("internal error: {message}")]
    Internal { message: String },
    /// No API key, or one that is unknown, malformed or revoked.
    #[error("authentication failed: {message}")]
    Unauthenticated { message: String },
    /// The request conflicts with the object's current state (a conditional
    /// update whose version is not the current one); retrying it as it is
    /// cannot succeed.
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// The caller's API key made too many requests; retry after the pause.
    #[error("rate limited: retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// The node's data disk has less free space than its floor: it takes no
    /// new writes until space is freed (reads and follows still work). Other
    /// nodes of the cluster take the write.
    #[error(
        "storage full: node {node}'s data disk has {free_bytes} bytes free, under its floor of {floor_bytes} bytes; \
         it takes no new writes until space is freed (send writes to another node)"
    )]
    StorageFull { node: NodeId, free_bytes: u64, floor_bytes: u64 },
    /// The node has as many requests in flight as it admits; it refused
    /// this one at once, without reading it. Retry after the pause (another
    /// node may have room now).
    #[error("overloaded: this node is at its limit of requests in flight; retry after {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u64 },
    /// Another process speaks as this node (a copy of its data directory,
    /// say): the cluster takes one process per node id.
    #[error("node {node}'s identity is in use: {message}")]
    IdentityInUse { node: NodeId, message: String },
    /// The node was removed from the cluster (`agentd node remove`): its id
    /// never serves, votes or joins again.
    #[error(
        "node {node} was removed from the cluster: its id never serves again; bring the machine back with an \
         empty --data-dir, a new --node-id and --join"
    )]
    NodeRemoved { node: NodeId },
    /// A node-to-node call meant for node `expected` reached the process of
    /// node `found`: the address now belongs to another node (a machine
    /// brought back under a new id). It must not answer for the other.
    #[error("this address now serves node {found}, not node {expected}")]
    WrongNode { expected: NodeId, found: NodeId },
}

impl ApiError {
    /// Whether the same request may succeed if sent again later (possibly to
    /// another node). Appends are idempotent by event id, so retrying them is safe.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::NotLeader { .. }
                | ApiError::Unavailable { .. }
                | ApiError::RateLimited { .. }
                | ApiError::Overloaded { .. }
        )
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::FrameTooLarge { len, max } => ApiError::PayloadTooLarge { bytes: len as u64, max_bytes: max as u64 },
            Error::InvalidId { .. } => ApiError::InvalidRequest { message: error.to_string() },
            other => ApiError::Malformed { message: other.to_string() },
        }
    }
}
