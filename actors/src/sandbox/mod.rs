//! Sandboxes ("the hands") and the built-in tools.
//!
//! The agent loop hands each tool call (`bash`, `read`, `write`, `edit`, `glob`,
//! `grep`) to the session's [`Sandbox`]. Tool failures are outputs with
//! `is_error`; `Err` means the sandbox itself failed (before the tool ran).
//!
//! [`Sandbox::health`] says whether a sandbox can serve another call now, and
//! is cheap: no tool runs and nothing is recorded. The shell drivers answer
//! from their own state: not destroyed, and the shell's process (bwrap, the
//! runtime's `run`, the local shell), if one was started, has not exited (a
//! shell not started yet is healthy: it starts with the next `bash` call); the
//! namespace sandbox also needs its cgroups to still exist. A running call
//! holds the shell, which then counts as alive. The hands client pings its
//! agent; the microvm driver checks that QEMU runs, then pings. A dead sandbox
//! answers `SandboxError::Crashed` with the reason, and its owner replaces it
//! (the node's hands do so before a call, and the idle reaper drops it).
//!
//! Idempotency: every call with a key goes through the ledger under
//! `root/ledger`, which records that the call started before the tool runs and
//! its output before the call returns, both durably. A repeated key returns the
//! recorded output without running; a key that started but never finished
//! (the host crashed mid-call) is not run again and is answered, and
//! recorded, as an "interrupted" error. So a call runs at most once per key,
//! and retries see the recorded result. An empty key disables the ledger for
//! that call. `call/ledger.rs` has the files and the order of the fsyncs.
//!
//! What every driver does the same way (the ledger, the persistent shell and
//! its protocol, the host-side file tools, secrets) lives in `call/`; a driver
//! in `drivers/` only says how to start its shell and what isolates it. Each
//! driver's file documents what it isolates and which limits it enforces:
//! - [`NamespaceSandbox`] (`drivers/namespace.rs`): bash inside bubblewrap
//!   namespaces, limited by cgroups or, failing that, rlimits.
//! - [`OciSandbox`] (`drivers/oci.rs`): busybox ash in a runc container, or
//!   under gVisor's user-space kernel with [`ContainerRuntime::Gvisor`].
//! - [`LocalSandbox`] (`drivers/local.rs`): a plain local shell that isolates
//!   nothing, for `agentd hands` inside a VM.
//!
//! With `Network::Allowlist`, any of them runs in a network namespace whose
//! only way out is an HTTP proxy to the listed hosts: see [`egress`].

mod call;
mod drivers;
pub mod egress;
mod error;
mod limits;
mod resource_control;

use futures_util::future::BoxFuture;

pub use call::{interrupted_output, redact, Claim, Ledger, LedgerState, Secret, ToolCall, ToolOutput};
pub use drivers::{
    ContainerRuntime, LocalSandbox, LocalShell, NamespaceSandbox, OciSandbox, BWRAP_ENV, GVISOR_STATE_ROOT,
    OCI_ROOTFS_DEFAULT, RUNC_ENV, RUNSC_ENV,
};
pub use error::SandboxError;
pub use limits::{Limits, Network};

/// One session's sandbox: runs tool calls in isolation.
pub trait Sandbox: Send + Sync + 'static {
    /// Runs one tool call. Tool failures (bad input, non-zero exit, timeout, missing file) are Ok(ToolOutput{is_error:true}) with a clear message;
    /// Err is for the sandbox itself failing. A repeated idempotency_key returns the recorded output without running again.
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>>;
    /// Tears the sandbox down; later calls fail with `SandboxError::Crashed`.
    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>>;
    /// Whether the sandbox can serve another call now. Cheap: no tool runs and nothing is
    /// recorded. `Err(SandboxError::Crashed)` says why not (destroyed, its shell, VM or
    /// agent died); the caller then replaces the sandbox.
    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>>;
}
