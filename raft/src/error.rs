/// Errors of the replication layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("corrupt {what}: {message}")]
    Corrupt { what: String, message: String },
    #[error("tls: {0}")]
    Tls(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Protocol(#[from] agentd_protocol::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("network: {0}")]
    Network(String),
    #[error("raft: {0}")]
    Raft(String),
}
