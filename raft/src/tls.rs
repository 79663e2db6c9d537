//! TLS identities for QUIC (being written).
pub const SERVER_NAME: &str = "agentd.cluster";
