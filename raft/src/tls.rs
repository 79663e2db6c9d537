//! TLS identities for QUIC (being written).
