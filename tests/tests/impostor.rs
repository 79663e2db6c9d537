//! A copy of a node's data directory started as a second process of the
//! same node id, on another port, is refused by the cluster and stops
//! itself with a message that says why; the original keeps serving, and
//! every acknowledged event is on every replica.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentd_tests::{assert_every_replica_holds, Appender, Cluster};
use anyhow::{bail, ensure};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_node_is_refused_and_stops_while_the_original_serves() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "4"]).await?;

    // A copy of node 3's data directory (taken while it is stopped, so the
    // copy is a clean one; the original then carries on).
    cluster.kill(3)?;
    let original = cluster.nodes[2].data_dir.clone();
    let copy = cluster.dir.path().join("n3-copy");
    let copied = Command::new("cp").arg("-a").arg(&original).arg(&copy).status()?;
    ensure!(copied.success(), "cannot copy node 3's data directory");
    cluster.restart(3)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;

    let session = cluster.client()?.create_session().await?.session_id;
    let appender = Appender::start(cluster.client()?, session);

    // The copy, as node 3 on another port.
    let log_path = cluster.dir.path().join("n3-copy.log");
    let log = File::create(&log_path)?;
    let port = agentd_tests::free_port();
    let mut impostor = Command::new(agentd_tests::agentd_binary!())
        .args(["start", "--node-id", "3", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&copy)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let started = Instant::now();
    let exited = loop {
        if let Some(status) = impostor.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = impostor.kill();
            bail!("the copy still runs after 60 s:\n{}", std::fs::read_to_string(&log_path)?);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stopped_after = started.elapsed();
    let text = std::fs::read_to_string(&log_path)?;
    ensure!(!exited.success(), "the copy exited successfully: {exited:?}\n{text}");
    ensure!(text.contains("refused this process as node 3") && text.contains("copy"), "{text}");
    eprintln!("the copy stopped after {stopped_after:?}");

    // The original serves on, as a voter of every group.
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let node3 = status.nodes.iter().find(|node| node.node_id == 3).expect("node 3 in the status");
    ensure!(node3.reachable && node3.addr == cluster.nodes[2].addr, "{node3:?}");
    ensure!(cluster.nodes[2].is_running(), "the original node 3 stopped:\n{}", cluster.nodes[2].log_tail());
    let before = appender.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(appender.count() > before, "appends stopped");
    let acknowledged = appender.stop().await?;
    assert_every_replica_holds(&cluster, session, &acknowledged).await
}
