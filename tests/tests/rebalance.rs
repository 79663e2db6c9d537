//! Replica balance (issue 14): a fourth node that joins a 3-node cluster
//! receives its share of the replicas by itself. Drained, it holds none,
//! and node 1 (it ran --init) leads every group: `agentd cluster rebalance
//! --dry-run` plans the moves and changes nothing; `agentd cluster
//! rebalance` moves replicas back and hands leaderships over while a client
//! appends, until every node holds and leads within one of an even share.
//! Every acknowledged append is on every replica afterwards, and the
//! longest window in which the client could not append is reported.

use std::collections::BTreeMap;
use std::time::Duration;

use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::ids::GroupId;
use agentd_tests::{leader_views, leaders_per_node, Appender, Cluster};
use anyhow::{ensure, Context};

/// Shard voters per node, as the groups' leaders report them.
fn replicas_per_node(status: &ClusterStatus) -> BTreeMap<u64, usize> {
    let mut counts: BTreeMap<u64, usize> = status.nodes.iter().map(|node| (node.node_id, 0)).collect();
    for view in leader_views(status).iter().filter(|view| view.group != GroupId::Metadata) {
        for voter in &view.voters {
            *counts.entry(*voter).or_default() += 1;
        }
    }
    counts
}

fn spread(counts: &BTreeMap<u64, usize>) -> usize {
    counts.values().max().copied().unwrap_or(0) - counts.values().min().copied().unwrap_or(0)
}

fn rebalance(cluster: &Cluster, dry_run: bool) -> anyhow::Result<serde_json::Value> {
    let mut command = cluster.command()?;
    command.args(["cluster", "rebalance", "--json", "--addr", &cluster.nodes[1].addr]);
    if dry_run {
        command.arg("--dry-run");
    }
    let output = command.output()?;
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    ensure!(
        output.status.success(),
        "rebalance failed:\n{printed}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.log_tails()
    );
    serde_json::from_str(printed.trim()).with_context(|| format!("rebalance --json printed {printed}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_evens_replicas_and_leaders_out_while_appends_run() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "8"]).await?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let info = cluster.client()?.create_session().await?;
    let (session, group) = (info.session_id, GroupId::Shard(info.shard));
    let new_node = cluster.join_new_node()?;
    cluster
        .wait_for(Duration::from_secs(60), "node 4 to join", |status| {
            status.nodes.iter().any(|node| node.node_id == new_node && node.reachable)
        })
        .await?;
    let joined = replicas_per_node(&cluster.wait_placed(Duration::from_secs(120)).await?);
    eprintln!("after the join: replicas per node {joined:?}");
    ensure!(joined.values().all(|count| *count == 6), "the new node did not get its share: {joined:?}");

    let mut drain = cluster.command()?;
    drain.args(["node", "drain", &new_node.to_string(), "--wait", "--addr", &cluster.nodes[1].addr]);
    let drained = drain.output()?;
    ensure!(drained.status.success(), "drain failed: {}", String::from_utf8_lossy(&drained.stderr));
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let before = (replicas_per_node(&status), leaders_per_node(&status));
    eprintln!("before: replicas per node {:?}, leaders per node {:?}", before.0, before.1);
    ensure!(before.0[&new_node] == 0, "the new node holds replicas already: {:?}", before.0);

    // The dry run plans moves to the new node and changes nothing.
    let planned = rebalance(&cluster, true)?;
    let moves = planned["moves"].as_array().context("no moves")?;
    ensure!(moves.len() == 6, "8 shards x 3 replicas over 4 nodes: 6 moves to node 4, planned {planned}");
    ensure!(moves.iter().all(|one| one["to"] == new_node && one["phase"] == "recorded"), "{planned}");
    ensure!(replicas_per_node(&cluster.status().await?)[&new_node] == 0, "a dry run moved a replica");

    let appender = Appender::start(cluster.client()?, session);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let done = rebalance(&cluster, false)?;
    eprintln!("rebalance (6 replica moves, then hand-offs) took {:?}", started.elapsed());
    ensure!(done["moves"].as_array().is_some_and(|moves| moves.iter().all(|one| one["phase"] == "done")), "{done}");
    ensure!(done["failed_transfers"].as_array().is_some_and(Vec::is_empty), "{done}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let after = (replicas_per_node(&status), leaders_per_node(&status));
    eprintln!("after: replicas per node {:?}, leaders per node {:?}", after.0, after.1);
    ensure!(spread(&after.0) <= 1, "replicas are not even: {:?}", after.0);
    ensure!(spread(&after.1) <= 1, "leaders are not even: {:?}", after.1);

    // Balanced: a second rebalance moves nothing.
    let again = rebalance(&cluster, false)?;
    ensure!(again["moves"].as_array().is_some_and(Vec::is_empty), "a second rebalance moved replicas: {again}");
    ensure!(again["leader_transfers"].as_array().is_some_and(Vec::is_empty), "a second rebalance moved leaders");

    // `agentd bench move` measures moves under load on the same cluster.
    let mut bench = cluster.command()?;
    bench.args(["bench", "move", "--moves", "2", "--json", "--addr", &cluster.nodes[1].addr]);
    let benched = bench.output()?;
    let printed = String::from_utf8_lossy(&benched.stdout).to_string();
    ensure!(benched.status.success(), "bench move failed: {printed}{}", String::from_utf8_lossy(&benched.stderr));
    let report: serde_json::Value = serde_json::from_str(printed.trim()).context("bench move --json")?;
    ensure!(report["moves"] == 2 && report["appends"].as_u64() > Some(0), "bench move reported {report}");
    eprintln!("bench move: {report}");

    let longest_gap = appender.longest_gap();
    let acknowledged = appender.stop().await?;
    eprintln!("{} appends acknowledged; longest window without an acknowledgement {longest_gap:?}", acknowledged.len());
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let voters = leader_views(&status).into_iter().find(|view| view.group == group).context("no leader")?.voters;
    let leader_view = cluster.client()?.read_all(session, Consistency::Leader).await?;
    for node in voters {
        let events = cluster.client_for(node)?.read_all(session, Consistency::Local).await?;
        let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
        ensure!(seqs == (1..=seqs.len() as u64).collect::<Vec<_>>(), "node {node}: a gap or a repeat: {seqs:?}");
        ensure!(events == leader_view, "node {node}'s replica of {session} differs from the leader's");
        let missing = acknowledged.iter().find(|seq| seqs.binary_search(seq).is_err());
        ensure!(missing.is_none(), "node {node} lacks acknowledged event {missing:?}");
    }
    // A move never costs more than a leader election: the default election
    // timeout is at most 2 s; the client's retries and a loaded 2-core
    // machine get as much again, and once more.
    ensure!(longest_gap < Duration::from_secs(6), "the client could not append for {longest_gap:?}");
    Ok(())
}
