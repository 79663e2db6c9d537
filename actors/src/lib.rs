//! The agent: the brain (the agent loop over a session log), model
//! providers, and sandboxes with the built-in tools.

pub mod brain;
pub mod mcp;
pub mod model;
// The sandboxes run real processes and files on the host, timed by the
// wall clock, with blocking IO on OS threads. None of it runs under the
// simulator, which puts its own sandbox behind the `Sandbox` trait.
#[allow(
    clippy::disallowed_methods,
    reason = "sandboxes do real IO on the host; the simulator replaces every one through the Sandbox trait"
)]
pub mod sandbox;
