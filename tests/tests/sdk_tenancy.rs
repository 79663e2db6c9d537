//! Workspaces and keys as the official Python SDK sees them
//! (`tests/sdk/tenancy.py`): workspace B's key gets 404 on every endpoint of
//! workspace A's objects and changes nothing; lists never cross workspaces;
//! no key, a wrong key and a revoked key (revoked with `agentd apikey revoke`
//! while the script waits) get 401, on every node.
//!
//! Needs the SDKs that `scripts/setup.sh` caches under /var/cache/agentd; the
//! test fails (it does not skip) when they are missing.

use agentd_tests::{run_sdk_script_with, sdk_python, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_are_walls_and_keys_are_checked_over_http() -> anyhow::Result<()> {
    let mut python = sdk_python()?;
    let scripts = tempfile::tempdir()?;
    std::fs::write(scripts.path().join("tenancy.json"), r#"[[{"type": "text", "text": "hi"}]]"#)?;
    let scripts_flag = scripts.path().display().to_string();
    let flags = ["--shards", "2", "--scripts-dir", &scripts_flag];
    let (mut cluster, urls) = Cluster::start_with_http(agentd_tests::agentd_binary!(), 3, &flags).await?;
    let (_, key_a) = cluster.create_api_key("tenancy-a")?;
    let (_, key_b) = cluster.create_api_key("tenancy-b")?;
    let (key_c_id, key_c) = cluster.create_api_key("tenancy-a")?;

    let mut revoked = false;
    let printed = run_sdk_script_with(
        python
            .arg("tenancy.py")
            .args(["--urls", &urls.join(","), "--model", "scripted:tenancy.json"])
            .args(["--key-a", &key_a, "--key-b", &key_b, "--key-c", &key_c]),
        &mut cluster,
        |line, cluster| {
            if line != "REVOKE" {
                return Ok(None);
            }
            cluster.revoke_api_key(&key_c_id)?;
            revoked = true;
            Ok(Some("revoked".to_string()))
        },
    )?;
    assert!(revoked, "the script never asked for the revocation:\n{printed}");
    assert!(printed.contains("tenancy.py: ok"), "tenancy.py printed no summary:\n{printed}");
    print!("{printed}");
    Ok(())
}
