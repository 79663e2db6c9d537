//! Leaderships spread across nodes by themselves (`agentd_raft::balance`):
//! a fresh 3-node cluster, where the node that initialised it first leads
//! every group, settles with every node within one of even; so does the
//! cluster after its busiest node is SIGKILLed and restarted. Appends run
//! throughout the second half and every acknowledged one is on every
//! replica afterwards. And an operator moves a leadership with
//! `agentd shard transfer-leader` and sees what each group holds with
//! `agentd shard list`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentd_protocol::api::ClusterStatus;
use agentd_tests::{assert_every_replica_holds, leaders_per_node, Appender, Cluster};
use anyhow::Context;

async fn wait_balanced(cluster: &Cluster) -> anyhow::Result<(BTreeMap<u64, usize>, Duration)> {
    let started = Instant::now();
    let status = cluster.wait_balanced(Duration::from_secs(90)).await?;
    Ok((leaders_per_node(&status), started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_evenly_after_start_and_after_a_restart() -> anyhow::Result<()> {
    let cluster_args = ["--shards", "32"];
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &cluster_args).await?;
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let at_start = leaders_per_node(&status);
    let (settled, took) = wait_balanced(&cluster).await?;
    eprintln!("leaders per node once replicated: {at_start:?}; balanced {settled:?} {took:?} later");

    let session = cluster.client()?.create_session().await?.session_id;
    let appender = Appender::start(cluster.client()?, session);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busiest = *settled.iter().max_by_key(|(_, leads)| **leads).context("no node leads")?.0;
    cluster.kill(busiest)?;
    cluster
        .wait_for(Duration::from_secs(60), "the other nodes to take over", |status| {
            leaders_per_node(status).values().sum::<usize>() == status.shards as usize + 1
        })
        .await?;
    let without = leaders_per_node(&cluster.status().await?);
    cluster.restart(busiest)?;
    let (after, took) = wait_balanced(&cluster).await?;
    eprintln!("node {busiest} killed: leaders per node {without:?}; restarted: {after:?} {took:?} later");
    anyhow::ensure!(after.get(&busiest).is_some_and(|leads| *leads > 0), "node {busiest} leads nothing: {after:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = appender.stop().await?;
    anyhow::ensure!(!acknowledged.is_empty(), "no append was acknowledged");
    assert_every_replica_holds(&cluster, session, &acknowledged).await
}

/// Who leads `group` by the leader's own report.
fn leader_of(status: &ClusterStatus, group: &str) -> Option<u64> {
    status.nodes.iter().filter(|node| node.reachable).find_map(|node| {
        node.groups
            .iter()
            .find(|view| view.group.to_string() == group && view.leader == Some(node.node_id))
            .map(|_| node.node_id)
    })
}

/// `agentd shard transfer-leader` as an operator runs it, against a node
/// that does not lead the group (the request is forwarded), on a cluster
/// whose balancer is off so that nothing moves the leadership back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_moves_a_leadership_with_the_cli() -> anyhow::Result<()> {
    let cluster =
        Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "4", "--balance-leaders", "false"]).await?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let session = cluster.client()?.create_session().await?.session_id;
    let appender = Appender::start(cluster.client()?, session);
    let addr3 = cluster.nodes[2].addr.clone();
    let cli = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(cluster.command()?.args(["shard", "transfer-leader"]).args(args).args(["--addr", &addr3]).output()?)
    };

    for (group, to) in [("shard-2", 3u64), ("metadata", 2), ("shard-2", 1)] {
        let before = leader_of(&cluster.status().await?, group);
        let started = Instant::now();
        let output = cli(&[group, "--to", &to.to_string(), "--json"])?;
        let took = started.elapsed();
        anyhow::ensure!(output.status.success(), "transfer failed: {}", String::from_utf8_lossy(&output.stderr));
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        anyhow::ensure!(answer["leader"] == to && answer["group"] == group, "{answer}");
        let now = leader_of(&cluster.status().await?, group);
        anyhow::ensure!(now == Some(to), "{group} is led by {now:?} after the transfer to {to}");
        eprintln!("{group}: node {before:?} -> node {to} in {took:?}");
    }

    // A node that is not a voter is refused with the reason.
    let output = cli(&["shard-1", "--to", "9"])?;
    anyhow::ensure!(!output.status.success(), "a transfer to node 9 succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(stderr.contains("node 9 is not a voter of shard-1"), "{stderr}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = appender.stop().await?;
    assert_every_replica_holds(&cluster, session, &acknowledged).await?;

    // `shard list` counts what each group holds, on its leader.
    let output = cluster.command()?.args(["shard", "list", "--json", "--addr", &addr3]).output()?;
    anyhow::ensure!(output.status.success(), "shard list failed: {}", String::from_utf8_lossy(&output.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let groups = listed["groups"].as_array().context("no groups")?;
    anyhow::ensure!(groups.len() == 5, "{listed}");
    let shard = cluster.client()?.get_session(session).await?.shard;
    let row = groups.iter().find(|row| row["group"] == shard.to_string()).context("the session's shard")?;
    anyhow::ensure!(row["sessions"] == 1 && row["voters"].as_array().is_some_and(|voters| voters.len() == 3), "{row}");
    anyhow::ensure!(row["events"].as_u64() >= acknowledged.last().copied(), "{row}");
    anyhow::ensure!(row["bytes"].as_u64().is_some_and(|bytes| bytes > 100 * acknowledged.len() as u64), "{row}");
    anyhow::ensure!(groups.iter().all(|row| row["leader"].is_u64()), "{listed}");

    // Only admin keys operate on groups.
    let (_, key) = cluster.create_api_key("team-a")?;
    for args in [&["shard", "list"][..], &["shard", "transfer-leader", "shard-1", "--to", "2"][..]] {
        let output = cluster.command()?.env("AGENTD_API_KEY", &key).args(args).args(["--addr", &addr3]).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(!output.status.success() && stderr.contains("admin key"), "{args:?}: {stderr}");
    }
    Ok(())
}
