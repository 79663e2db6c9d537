use agentd_protocol::ApiError;

/// Errors of the replication layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("corrupt {what}: {message}")]
    Corrupt { what: String, message: String },
    #[error(transparent)]
    Transport(#[from] agentd_transport::Error),
    #[error(transparent)]
    Protocol(#[from] agentd_protocol::Error),
    /// The store was written in a format this build does not read.
    #[error(
        "the store was written in format {found} and this build of agentd reads format {supported}: {reason}; \
         start this node's data directory with the agentd version that wrote it, or remove the node from the \
         cluster and bring the machine back with an empty data directory under a new node id"
    )]
    UnsupportedFormat { found: u32, supported: u32, reason: &'static str },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("network: {0}")]
    Network(String),
    #[error("raft: {0}")]
    Raft(String),
    /// This node refuses the request, with the answer the caller gets.
    #[error(transparent)]
    Refused(ApiError),
}

/// How a caller is told of a replication error, in one place. The network
/// is worth a retry; anything else (a store that cannot be read, a corrupt
/// record) is this node's failure, logged here, where it is answered.
impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        match error {
            Error::Network(message) => ApiError::Unavailable { message },
            Error::Transport(agentd_transport::Error::Network(message)) => ApiError::Unavailable { message },
            Error::Refused(error) => error,
            other => {
                tracing::error!(error = %other, "replication layer failed");
                ApiError::Internal { message: other.to_string() }
            }
        }
    }
}
