//! Where the providers live and how to reach them, and the choice of a
//! provider from an agent's model string.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::http::{HttpClient, TlsConnector, REQUEST_TIMEOUT_MS_DEFAULT};
use super::providers::{
    AnthropicProvider, EchoProvider, OpenAiProvider, ScriptedProvider, ANTHROPIC_MODEL_PREFIX, OPENAI_MODEL_PREFIX,
};
use super::{ModelError, ModelProvider};

pub const ANTHROPIC_BASE_URL_DEFAULT: &str = "https://api.anthropic.com";
pub const OPENAI_BASE_URL_DEFAULT: &str = "https://api.openai.com/v1";
/// The prefix of the deterministic providers' model strings.
pub const SCRIPTED_MODEL_PREFIX: &str = "scripted:";

/// Endpoints, keys and transport settings for the model providers.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Without `/v1`; default `https://api.anthropic.com`.
    pub anthropic_base_url: String,
    pub anthropic_api_key: Option<String>,
    /// Ask the Messages API for a server-sent event stream; default off.
    pub anthropic_streaming: bool,
    /// With the version; default `https://api.openai.com/v1`.
    pub openai_base_url: String,
    /// Optional: local servers (llama.cpp, Ollama) usually need none.
    pub openai_api_key: Option<String>,
    /// `scripted:PATH` model strings resolve here and must stay inside it;
    /// without it only `scripted:echo` works.
    pub scripts_dir: Option<PathBuf>,
    /// Needed for `https://` base URLs; see `TlsConnector`. Without it only
    /// `http://` works and an `https://` call fails with `Permanent`.
    pub tls_connector: Option<TlsConnector>,
    /// Bound on one HTTP model call, first byte out to last byte in.
    pub request_timeout_ms: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            anthropic_base_url: ANTHROPIC_BASE_URL_DEFAULT.to_string(),
            anthropic_api_key: None,
            anthropic_streaming: false,
            openai_base_url: OPENAI_BASE_URL_DEFAULT.to_string(),
            openai_api_key: None,
            scripts_dir: None,
            tls_connector: None,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl ProviderConfig {
    /// Reads `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`, `OPENAI_API_KEY` and
    /// `OPENAI_BASE_URL`; unset or empty variables keep the defaults.
    pub fn from_env() -> Self {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        let defaults = ProviderConfig::default();
        ProviderConfig {
            anthropic_base_url: variable("ANTHROPIC_BASE_URL").unwrap_or(defaults.anthropic_base_url),
            anthropic_api_key: variable("ANTHROPIC_API_KEY"),
            openai_base_url: variable("OPENAI_BASE_URL").unwrap_or(defaults.openai_base_url),
            openai_api_key: variable("OPENAI_API_KEY"),
            ..defaults
        }
    }

    fn http_client(&self) -> HttpClient {
        HttpClient::new(self.tls_connector.clone()).with_request_timeout(Duration::from_millis(self.request_timeout_ms))
    }

    /// Where `scripted:PATH` reads its script. Model strings come from API
    /// clients, so they must never name a file outside the scripts
    /// directory: no absolute paths, no `..`, no symlink that leads out, and
    /// nothing at all when the node has no scripts directory.
    fn script_path(&self, path: &str) -> Result<PathBuf, ModelError> {
        let Some(scripts_dir) = &self.scripts_dir else {
            return Err(ModelError::Permanent(format!(
                "model scripted:{path} needs a scripts directory: start the node with --scripts-dir DIR \
                 and put the script in it"
            )));
        };
        let relative = Path::new(path);
        if relative.components().any(|component| !matches!(component, Component::Normal(_) | Component::CurDir)) {
            return Err(ModelError::Permanent(format!(
                "script path {path} must be relative to the scripts directory, without '..'"
            )));
        }
        let joined = scripts_dir.join(relative);
        // A missing script is reported when the provider first reads it; one
        // that exists must resolve inside the directory.
        if let (Ok(resolved), Ok(root)) = (joined.canonicalize(), scripts_dir.canonicalize()) {
            if !resolved.starts_with(&root) {
                return Err(ModelError::Permanent(format!(
                    "script path {path} leads outside the scripts directory (through a symlink)"
                )));
            }
        }
        Ok(joined)
    }
}

/// Chooses a provider by the agent's model string:
/// `scripted:echo`, `scripted:PATH` (inside `scripts_dir`, which it needs),
/// `anthropic:MODEL` or `claude-...` for the Anthropic Messages API, and
/// `openai:MODEL` for OpenAI-style chat completions (vLLM, llama.cpp,
/// Ollama). Each call builds a new provider with its own connection pool,
/// so callers keep the result.
pub fn provider_for(model: &str, config: &ProviderConfig) -> Result<Arc<dyn ModelProvider>, ModelError> {
    if let Some(script) = model.strip_prefix(SCRIPTED_MODEL_PREFIX) {
        if script == "echo" {
            return Ok(Arc::new(EchoProvider));
        }
        if script.is_empty() {
            return Err(ModelError::Permanent(format!("model {model:?} names no script")));
        }
        return Ok(Arc::new(ScriptedProvider::new(config.script_path(script)?)));
    }
    if model.starts_with(ANTHROPIC_MODEL_PREFIX) || model.starts_with("claude-") {
        if model == ANTHROPIC_MODEL_PREFIX {
            return Err(ModelError::Permanent(format!("model {model:?} names no Anthropic model")));
        }
        let api_key = config
            .anthropic_api_key
            .clone()
            .ok_or_else(|| ModelError::Auth(format!("model {model:?} needs ANTHROPIC_API_KEY")))?;
        let provider = AnthropicProvider::new(config.http_client(), &config.anthropic_base_url, api_key)
            .with_streaming(config.anthropic_streaming);
        return Ok(Arc::new(provider));
    }
    if let Some(name) = model.strip_prefix(OPENAI_MODEL_PREFIX) {
        if name.is_empty() {
            return Err(ModelError::Permanent(format!("model {model:?} names no model")));
        }
        let api_key = config.openai_api_key.clone();
        return Ok(Arc::new(OpenAiProvider::new(config.http_client(), &config.openai_base_url, api_key)));
    }
    Err(ModelError::Permanent(format!(
        "unknown model {model:?}: expected scripted:echo, scripted:PATH, anthropic:MODEL, claude-... or openai:MODEL"
    )))
}
