//! Bad HTTP requests (`tests/sdk/bad_input.py`, raw requests with the SDK's
//! own HTTP client): malformed JSON, wrong types, unknown fields, a body over
//! 2 MiB, 10,000 events in one send, bad list parameters, a stream of a
//! deleted session, unknown routes. Each gets the right 4xx with the error
//! envelope and a `request-id` header, and the node keeps serving: at the
//! end the official SDK still runs a turn on it.
//!
//! Needs the SDKs that `scripts/setup.sh` caches under /var/cache/agentd; the
//! test fails (it does not skip) when they are missing.

use agentd_tests::{run_sdk_script, sdk_python, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_4xx_envelopes_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let mut python = sdk_python()?;
    let scripts = tempfile::tempdir()?;
    std::fs::write(scripts.path().join("bad_input.json"), r#"[[{"type": "text", "text": "still here"}]]"#)?;
    let scripts_flag = scripts.path().display().to_string();
    let flags = ["--shards", "2", "--scripts-dir", &scripts_flag];
    let (cluster, urls) = Cluster::start_with_http(agentd_tests::agentd_binary!(), 3, &flags).await?;
    let (_, key) = cluster.create_api_key("bad-input")?;

    let printed = run_sdk_script(
        python.arg("bad_input.py").args([
            "--base-url",
            &urls[1],
            "--api-key",
            &key,
            "--model",
            "scripted:bad_input.json",
        ]),
        &cluster,
    )?;
    assert!(printed.contains("bad_input.py: ok"), "bad_input.py printed no summary:\n{printed}");
    print!("{printed}");
    for node in &cluster.nodes {
        assert!(node.is_running(), "node {} stopped:\n{}", node.id, node.log_tail());
    }
    Ok(())
}
