//! MCP servers as the node speaks to them: the streamable HTTP client, and
//! the seam the brain calls them through.

mod client;

pub use client::{McpCallResult, McpClient, McpError, McpTool, MCP_PROTOCOL_VERSION};
