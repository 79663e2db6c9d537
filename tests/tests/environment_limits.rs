//! An environment's resource limits (`agentd environment create --memory-mib
//! --processes-max --cpu-millicores`) reach its sessions' sandboxes, and
//! limits out of bounds are refused with the bounds.

use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::EnvironmentId;
use agentd_tests::Cluster;
use serde_json::json;

fn agentd(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    cluster.command().expect("the admin key").args(args).output().expect("run agentd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environments_limits_bound_its_sandboxes() -> anyhow::Result<()> {
    // 200 MB is over the environment's 128 MiB but under the 1 GiB default; 40
    // processes are over its 32 but under the default 256.
    let command = "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null && echo memory unbounded \
                   || echo memory bounded; \
                   sh -c 'i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done; wait' 2>&1 \
                   | grep -qi fork && echo processes bounded || echo processes unbounded";
    let scripts = tempfile::tempdir()?;
    let script = json!([
        [{"type": "tool_use", "name": "bash", "input": {"command": command}}],
        [{"type": "text", "text": "measured"}],
    ]);
    let sandboxes = tempfile::tempdir()?;
    let cluster = Cluster::one_node(agentd_tests::agentd_binary!(), scripts.path(), sandboxes.path(), &[]).await?;
    let addr = cluster.addrs()[0].clone();

    let refused = agentd(&cluster, &["environment", "create", "--addr", &addr, "--name", "tiny", "--memory-mib", "1"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("memory_mib is 64 to"), "{stderr}");

    let created = agentd(
        &cluster,
        &[
            "environment",
            "create",
            "--addr",
            &addr,
            "--name",
            "small",
            "--memory-mib",
            "128",
            "--processes-max",
            "32",
            "--cpu-millicores",
            "500",
        ],
    );
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let environment_id: EnvironmentId = String::from_utf8(created.stdout)?.trim().parse()?;

    let client = cluster.client()?;
    let agent = agentd_tests::scripted_bash_agent(&client, scripts.path(), "limits", script).await?;
    let session = client.create_session_with(Some(agent), Some(environment_id)).await?.session_id;
    client.append(session, EventPayload::user_text("measure")).await?;
    let result = agentd_tests::tool_results(&client, session, 1).await.concat();
    // bash may also report the killed dd.
    assert!(result.ends_with("memory bounded\nprocesses bounded\n"), "{result}");
    Ok(())
}
