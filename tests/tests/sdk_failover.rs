//! The node serving an SDK's event stream dies mid-turn (SIGKILL while a
//! bash tool runs `sleep 3`): the official Python SDK reconnects to another
//! node with `Last-Event-ID` and gets every event exactly once, and the turn
//! finishes (`tests/sdk/failover.py`). Twice: once the dying node also runs
//! the session (it leads the session's shard), once it only serves the
//! stream. The script asks which node to stream from (`SESSION <id>` → the
//! node's number) and for the kill (`KILL` → `killed`).
//!
//! Needs the SDKs that `scripts/setup.sh` caches under /var/cache/agentd; the
//! test fails (it does not skip) when they are missing.

use std::time::Duration;

use agentd_protocol::ids::{shard_of, GroupId, SessionId};
use agentd_tests::{leader_views, run_sdk_script_with, sdk_dir, sdk_python, wait_listening, Cluster};
use anyhow::Context;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    /// The node that leads the session's shard: it runs the turn and serves the stream.
    SessionsNode,
    /// Another node: it only serves the stream.
    StreamOnly,
}

/// The node to stream from and kill, for `session`.
fn choose_victim(cluster: &Cluster, session: &str, victim: Victim) -> anyhow::Result<u64> {
    let session: SessionId = session.parse()?;
    let handle = tokio::runtime::Handle::current();
    let status = tokio::task::block_in_place(|| handle.block_on(cluster.status()))?;
    let shard = shard_of(session, status.shards);
    let leader = leader_views(&status)
        .into_iter()
        .find(|group| group.group == GroupId::Shard(shard))
        .and_then(|group| group.leader)
        .context("the session's shard has no leader")?;
    Ok(match victim {
        Victim::SessionsNode => leader,
        Victim::StreamOnly => cluster.nodes.iter().map(|node| node.id).find(|id| *id != leader).context("one node")?,
    })
}

/// One run of failover.py; returns the node it killed and what it printed.
fn kill_a_streaming_node(
    cluster: &mut Cluster,
    urls: &[String],
    key: &str,
    victim: Victim,
) -> anyhow::Result<(u64, String)> {
    let mut killed = None;
    let mut chosen = None;
    let printed = run_sdk_script_with(
        sdk_python()?.arg("failover.py").args([
            "--urls",
            &urls.join(","),
            "--api-key",
            key,
            "--model",
            "scripted:failover.json",
        ]),
        cluster,
        |line, cluster| {
            if let Some(session) = line.strip_prefix("SESSION ") {
                let id = choose_victim(cluster, session, victim)?;
                chosen = Some(id);
                return Ok(Some(id.to_string()));
            }
            if line != "KILL" {
                return Ok(None);
            }
            let id = chosen.context("KILL before SESSION")?;
            anyhow::ensure!(killed.is_none(), "the script asked for a second kill");
            eprintln!("killing node {id} ({victim:?}) mid-turn");
            cluster.kill(id)?;
            killed = Some(id);
            Ok(Some("killed".to_string()))
        },
    )?;
    let killed = killed.with_context(|| format!("the script never asked for the kill:\n{printed}"))?;
    assert!(printed.contains("failover.py: ok"), "failover.py printed no summary:\n{printed}");
    Ok((killed, printed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_stream_resumes_on_another_node_with_last_event_id() -> anyhow::Result<()> {
    sdk_python()?;
    let scripts = tempfile::tempdir()?;
    let sandboxes = tempfile::tempdir()?;
    std::fs::copy(sdk_dir().join("failover.script.json"), scripts.path().join("failover.json"))?;
    let (scripts_flag, sandboxes_flag) = (scripts.path().display().to_string(), sandboxes.path().display().to_string());
    let flags = ["--shards", "2", "--scripts-dir", &scripts_flag, "--sandbox-dir", &sandboxes_flag];
    let (mut cluster, urls) = Cluster::start_with_http(agentd_tests::agentd_binary!(), 3, &flags).await?;
    let (_, key) = cluster.create_api_key("sdk-failover")?;

    let (killed, printed) = kill_a_streaming_node(&mut cluster, &urls, &key, Victim::SessionsNode)?;
    print!("{printed}");
    cluster.restart(killed)?;
    cluster.wait_replicated(3, Duration::from_secs(120)).await?;
    wait_listening(&urls[killed as usize - 1].replace("http://", ""), Duration::from_secs(60)).await?;

    let (_, printed) = kill_a_streaming_node(&mut cluster, &urls, &key, Victim::StreamOnly)?;
    print!("{printed}");
    Ok(())
}
