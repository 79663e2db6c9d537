//! MCP through the Managed Agents HTTP API, driven by the official Python
//! SDK (`tests/sdk/mcp.py`): an agent with `mcp_servers` and an
//! `mcp_toolset`, a `static_bearer` vault credential, a session naming the
//! vault, against the MCP server of `tests/mcp/server.py`.
//!
//! Needs the SDKs `scripts/setup.sh` installs; fails, not skips, without them.

use agentd_tests::{run_sdk_script, sdk_dir, sdk_python, Cluster, McpTestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_configures_and_sees_mcp_tools() -> anyhow::Result<()> {
    let mut python = sdk_python()?;
    let token = "sdk-mcp-token-91d2";
    let server = McpTestServer::start(token)?;
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    std::fs::copy(sdk_dir().join("mcp.script.json"), scripts.path().join("mcp.json"))?;
    let (scripts_flag, sandboxes_flag) = (scripts.path().display().to_string(), sandboxes.path().display().to_string());
    let flags = ["--shards", "2", "--scripts-dir", &scripts_flag, "--sandbox-dir", &sandboxes_flag];
    let (cluster, urls) = Cluster::start_with_http(agentd_tests::agentd_binary!(), 1, &flags).await?;
    let (_, key) = cluster.create_api_key("sdk-mcp")?;
    let url = server.url();
    let args = [
        "--base-url",
        &urls[0],
        "--api-key",
        &key,
        "--model",
        "scripted:mcp.json",
        "--mcp-url",
        &url,
        "--mcp-token",
        token,
    ];
    let out = run_sdk_script(python.arg("mcp.py").args(args), &cluster)?;
    assert!(out.contains("mcp.py: ok"), "mcp.py printed no summary: {out}");
    assert!(server.calls().contains(&"add 2 3".to_string()), "{:?}", server.calls());
    Ok(())
}
