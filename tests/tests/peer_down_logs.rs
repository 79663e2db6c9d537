//! A peer that is down costs its neighbours one log line, not hundreds a
//! second: one warning when it stops answering, one line when it is back,
//! with the default log filter of `agentd start`.

use std::time::Duration;

use agentd_tests::Cluster;

/// The warnings and errors a node logged after byte `from` of its log.
fn warnings_since(log: &str, from: usize) -> Vec<String> {
    log[from..].lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_logged_once_and_its_return_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "4"]).await?;
    let offsets: Vec<usize> = cluster.nodes.iter().map(|node| node.log_text().len()).collect();
    cluster.kill(3)?;
    // Heartbeats, replication and elections keep calling node 3 meanwhile.
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Leaders call node 3 (followers may not): each logs it down exactly once.
    let peer = cluster.nodes[2].addr.clone();
    let mut noticed = Vec::new();
    for (index, node) in cluster.nodes[..2].iter().enumerate() {
        let warnings = warnings_since(&node.log_text(), offsets[index]);
        assert!(
            warnings.len() <= 5,
            "node {} logged {} warnings in 10 s:\n{}",
            node.id,
            warnings.len(),
            warnings.join("\n")
        );
        let down: Vec<&String> = warnings.iter().filter(|line| line.contains("peer unreachable")).collect();
        assert!(down.len() <= 1, "node {}: {warnings:#?}", node.id);
        if let Some(line) = down.first() {
            assert!(line.contains(&peer), "{line}");
            noticed.push(index);
        }
    }
    assert!(!noticed.is_empty(), "no node noticed that node 3 is down");

    cluster.restart(3)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    for index in noticed {
        let node = &cluster.nodes[index];
        let log = node.log_text();
        let back = log.lines().filter(|line| line.contains("peer reachable again") && line.contains(&peer)).count();
        assert_eq!(back, 1, "node {} log:\n{}", node.id, node.log_tail());
    }
    Ok(())
}
