//! The MCP server of the tests (`tests/mcp/server.py`, built with the
//! official Python MCP SDK that `scripts/setup.sh` installs), run as a real
//! process on loopback: streamable HTTP at `/mcp`, a bearer token required.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Where `scripts/setup.sh` installs the Python MCP SDK (`mcp`, in a venv).
pub const MCP_PYTHON_VENV: &str = "/var/cache/agentd/mcp-python";
/// The version of the SDK the tests pin.
pub const MCP_PYTHON_VERSION: &str = "2.3.0";

/// A running `tests/mcp/server.py`; killed when dropped.
pub struct McpTestServer {
    child: Option<Child>,
    pub port: u16,
    /// One line per tool call and per JSON-RPC request that passed the token check.
    pub calls: PathBuf,
    _dir: tempfile::TempDir,
}

impl McpTestServer {
    /// Starts the server accepting `token` on a free port. Fails, saying to
    /// run scripts/setup.sh, when the SDK is not installed.
    pub fn start(token: &str) -> Result<McpTestServer> {
        McpTestServer::start_with(token, &[])
    }

    /// `start` with more arguments for the server (`--refresh-token R`:
    /// an OAuth token endpoint at `/token` that trades R for `token`).
    pub fn start_with(token: &str, extra_args: &[&str]) -> Result<McpTestServer> {
        let python = PathBuf::from(MCP_PYTHON_VENV).join("bin/python");
        let probe =
            format!("import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '{MCP_PYTHON_VERSION}')");
        let installed = Command::new(&python).args(["-c", &probe]).output().is_ok_and(|output| output.status.success());
        if !installed {
            bail!("the Python MCP SDK (mcp=={MCP_PYTHON_VERSION}) is not installed in {MCP_PYTHON_VENV}: run scripts/setup.sh");
        }
        let dir = tempfile::Builder::new().prefix("agentd-mcp-").tempdir()?;
        let calls = dir.path().join("calls.txt");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp/server.py");
        let mut child = Command::new(python)
            .arg(&script)
            .args(["--token", token, "--calls"])
            .arg(&calls)
            .args(extra_args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", script.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ").and_then(|port| port.trim().parse::<u16>().ok()) {
                    let _ = sender.send(port);
                }
            }
        });
        let mut server = McpTestServer { child: Some(child), port: 0, calls, _dir: dir };
        server.port =
            receiver.recv_timeout(Duration::from_secs(60)).context("the MCP server did not start listening")?;
        Ok(server)
    }

    /// The server's endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// The server's OAuth token endpoint (with `--refresh-token`).
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The lines recorded so far.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for McpTestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
