/// Errors of the transport: certificates, TLS configuration, the network and framing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tls: {0}")]
    Tls(String),
    #[error("certificate: {0}")]
    Certificate(String),
    /// A frame that does not decode, or is too large.
    #[error(transparent)]
    Protocol(#[from] agentd_protocol::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("network: {0}")]
    Network(String),
}
