//! Sandboxes and the built-in tools (being written).
