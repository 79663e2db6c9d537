//! The model providers, one file each: the Anthropic Messages API (with its
//! streamed answers), OpenAI-style chat completions, and the deterministic
//! `scripted:` providers.
//!
//! A new provider is a file here that implements `ModelProvider`, plus its
//! model-string prefix in `provider_config.rs`.

mod anthropic;
mod anthropic_stream;
mod echo;
mod openai;
mod script;

pub use anthropic::{AnthropicProvider, ANTHROPIC_MODEL_PREFIX, ANTHROPIC_VERSION};
pub use anthropic_stream::{StreamAssembler, STREAM_BLOCKS_MAX};
pub use echo::{EchoProvider, ECHO_NO_TEXT};
pub use openai::{OpenAiProvider, OPENAI_MODEL_PREFIX, TOOL_ERROR_PREFIX};
pub use script::{ScriptedProvider, SCRIPT_BYTES_MAX, SCRIPT_FINISHED};
