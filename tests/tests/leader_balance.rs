//! Leaderships spread across nodes by themselves (`agentd_raft::balance`):
//! a fresh 3-node cluster, where the node that initialised it first leads
//! every group, settles with every node within one of even; so does the
//! cluster after its busiest node is SIGKILLed and restarted. Appends run
//! throughout the second half and every acknowledged one is on every
//! replica afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentd_protocol::api::ClusterStatus;
use agentd_tests::{assert_every_replica_holds, leaders_per_node, Appender, Cluster};
use anyhow::Context;

/// Every group has exactly one leader and the nodes lead within one of even.
fn balanced(status: &ClusterStatus, nodes: usize) -> bool {
    let leads = leaders_per_node(status);
    let groups = status.shards as usize + 1;
    leads.len() == nodes
        && leads.values().sum::<usize>() == groups
        && leads.values().max().zip(leads.values().min()).is_some_and(|(max, min)| max - min <= 1)
}

async fn wait_balanced(cluster: &Cluster, what: &str) -> anyhow::Result<(BTreeMap<u64, usize>, Duration)> {
    let started = Instant::now();
    let status = cluster.wait_for(Duration::from_secs(90), what, |status| balanced(status, 3)).await?;
    Ok((leaders_per_node(&status), started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_evenly_after_start_and_after_a_restart() -> anyhow::Result<()> {
    let cluster_args = ["--shards", "32"];
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &cluster_args).await?;
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let at_start = leaders_per_node(&status);
    let (settled, took) = wait_balanced(&cluster, "leaders to spread after the start").await?;
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
    let (after, took) = wait_balanced(&cluster, "leaders to spread after the restart").await?;
    eprintln!("node {busiest} killed: leaders per node {without:?}; restarted: {after:?} {took:?} later");
    anyhow::ensure!(after.get(&busiest).is_some_and(|leads| *leads > 0), "node {busiest} leads nothing: {after:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = appender.stop().await?;
    anyhow::ensure!(!acknowledged.is_empty(), "no append was acknowledged");
    assert_every_replica_holds(&cluster, session, &acknowledged).await
}
