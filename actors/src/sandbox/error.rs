//! The sandbox's own failures (as opposed to a tool's failures, which are outputs).

/// A failure of the sandbox itself. A failing tool is `Ok(ToolOutput { is_error: true, .. })`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The driver cannot run on this machine (missing bwrap, no user namespaces ...): says exactly what is missing.
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    /// The sandbox died or could not be reached; the next call gets a fresh one.
    #[error("sandbox crashed: {0}")]
    Crashed(String),
    /// The host could not read or write the sandbox's own files (root, ledger).
    #[error("sandbox io: {0}")]
    Io(String),
}
