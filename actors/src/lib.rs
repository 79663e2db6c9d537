//! The agent loop: model providers, sandboxes and the built-in tools.

pub mod brain;
pub mod model;
pub mod sandbox;
