//! The hands over QUIC: the `agentd hands` agent that runs inside a sandbox
//! ([`agent`]), the node's client for it ([`client`]), and the driver that
//! boots a QEMU microVM running the agent ([`microvm`]).
//!
//! # Protocol
//! ALPN `agentd-hands/1` (`agentd_protocol::hands`): one bidirectional stream
//! per call, one length-prefixed bincode [`HandsRequest`] frame carrying the
//! protocol version, one [`HandsResponse`] frame back. A request that does not
//! decode, is too large or carries another version is answered with a typed
//! [`HandsError`] and the agent keeps serving. Tool failures are outputs with
//! `is_error`, as with every sandbox.
//!
//! # Trust
//! Mutual TLS with certificates issued per sandbox by the cluster CA
//! (`ClusterCa::issue_hands`): the agent's certificate is for server auth only
//! and names `SANDBOX.hands.agentd.cluster`; the node's is for client auth
//! only. The agent refuses a client without a CA-issued client certificate at
//! the handshake. The agent's key lives inside the sandbox, where the tools
//! run, so tools can read it; it lets them answer as that one sandbox, nothing
//! more. The agent holds only the CA certificate, never its key.
//!
//! # Idempotency
//! The agent runs calls through the same `CallRunner` as the other drivers,
//! so a repeated idempotency key is answered from the agent's ledger without
//! running again. The client resends a call whose connection failed only when
//! its key is non-empty.
//!
//! [`HandsRequest`]: agentd_protocol::hands::HandsRequest
//! [`HandsResponse`]: agentd_protocol::hands::HandsResponse
//! [`HandsError`]: agentd_protocol::hands::HandsError

pub mod agent;
pub mod client;
pub mod microvm;

pub use agent::{HandsAgent, HandsAgentOptions};
pub use client::HandsClient;
pub use microvm::{MicrovmImage, MicrovmSandbox};
