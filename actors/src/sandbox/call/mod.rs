//! What every sandbox driver does the same way for a tool call: the call
//! runner (one call at a time, against the idempotency ledger), the persistent
//! shell and its protocol, the host-side file tools confined to the workspace,
//! output capped in size, and the tool call and its output themselves.

mod call_runner;
mod capped_output;
mod file_tools;
mod ledger;
mod shell;
mod tool_call;
mod workspace;

pub(crate) use call_runner::{instance_name, CallRunner, ShellLauncher};
pub use ledger::{interrupted_output, Claim, Ledger, LedgerState};
pub(crate) use shell::{Shell, ShellStopper};
pub use tool_call::{redact, Secret, ToolCall, ToolOutput};
pub(crate) use workspace::{Workspace, WORKSPACE_MOUNT};
