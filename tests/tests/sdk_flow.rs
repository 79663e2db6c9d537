//! The official Anthropic SDKs, unmodified, against a real 3-node cluster's
//! Managed Agents HTTP API: Python `anthropic` 2.10.0 (`tests/sdk/flow.py`)
//! and npm `@anthropic-ai/sdk` 1.16.0 (`tests/sdk/flow.mjs`), each against a
//! different node, run the basic flow: agent → environment → session →
//! stream → message → tool confirmation → custom tool result → final message
//! → paged event list → retrieve → archive → delete.
//!
//! Needs the SDKs that `scripts/setup.sh` caches under /var/cache/agentd; the
//! test fails (it does not skip) when they are missing.

use agentd_tests::{run_sdk_script, sdk_dir, sdk_node, sdk_python, Cluster};

/// The flags of a cluster whose scripted models read `scripts`.
fn node_flags(scripts: &std::path::Path, sandboxes: &std::path::Path) -> Vec<String> {
    let mut flags = vec!["--shards".to_string(), "2".to_string(), "--scripts-dir".to_string()];
    flags.push(scripts.display().to_string());
    flags.push("--sandbox-dir".to_string());
    flags.push(sandboxes.display().to_string());
    flags
}

fn sdk_args<'a>(url: &'a str, key: &'a str) -> [&'a str; 6] {
    ["--base-url", url, "--api-key", key, "--model", "scripted:flow.json"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_run_the_basic_flow_against_any_node() -> anyhow::Result<()> {
    // Before the cluster: a missing SDK fails at once, saying to run scripts/setup.sh.
    let mut python = sdk_python()?;
    let mut node = sdk_node()?;
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    std::fs::copy(sdk_dir().join("flow.script.json"), scripts.path().join("flow.json"))?;
    let flags = node_flags(scripts.path(), sandboxes.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (cluster, urls) = Cluster::start_with_http(agentd_tests::agentd_binary!(), 3, &flags).await?;
    let (_, key) = cluster.create_api_key("sdk-flow")?;

    let out = run_sdk_script(python.arg("flow.py").args(sdk_args(&urls[1], &key)), &cluster)?;
    assert!(out.contains("flow.py: ok"), "flow.py printed no summary: {out}");
    print!("{out}");

    let out = run_sdk_script(node.arg("flow.mjs").args(sdk_args(&urls[2], &key)), &cluster)?;
    assert!(out.contains("flow.mjs: ok"), "flow.mjs printed no summary: {out}");
    print!("{out}");

    // The admin key works the same way, on the node that ran --init.
    let admin = cluster.admin_key()?;
    let out = run_sdk_script(sdk_python()?.arg("flow.py").args(sdk_args(&urls[0], &admin)), &cluster)?;
    assert!(out.contains("flow.py: ok"), "flow.py printed no summary: {out}");
    Ok(())
}
