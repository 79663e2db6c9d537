//! A node whose wall clock is half an hour behind the others' (libfaketime
//! preloaded into a real process): when it leads a session's shard, the
//! session's timestamps still never go backwards, and `cluster status`
//! shows the skew.

use std::path::Path;
use std::time::Duration;

use agentd_protocol::api::Consistency;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{GroupId, ShardId};
use agentd_tests::{leader_views, Cluster};

/// Where Debian's libfaketime lives (`scripts/setup.sh` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const SKEW_MS: i64 = -30 * 60 * 1000;
const SHARD: GroupId = GroupId::Shard(ShardId(0));

fn shard_leader(status: &agentd_protocol::api::ClusterStatus) -> Option<u64> {
    leader_views(status).into_iter().find(|group| group.group == SHARD).and_then(|group| group.leader)
}

/// Moves the shard's leadership to `target` by killing (and restarting)
/// whichever other node leads it, until `target` wins an election.
async fn make_leader(cluster: &mut Cluster, target: u64) -> anyhow::Result<()> {
    for _ in 0..12 {
        let status = cluster.wait_replicated(3, Duration::from_secs(60)).await?;
        let leader = shard_leader(&status).expect("wait_replicated waits for leaders");
        if leader == target {
            return Ok(());
        }
        cluster.kill(leader)?;
        cluster
            .wait_for(Duration::from_secs(30), "a new shard leader", |status| {
                shard_leader(status).is_some_and(|new| new != leader)
            })
            .await?;
        cluster.restart(leader)?;
    }
    anyhow::bail!("node {target} never became the shard's leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_never_go_backwards_and_status_shows_the_skew() -> anyhow::Result<()> {
    assert!(Path::new(LIBFAKETIME).exists(), "{LIBFAKETIME} is missing: run scripts/setup.sh");
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "1"]).await?;
    make_leader(&mut cluster, 1).await?;
    let client = cluster.client()?;
    let session = client.create_session().await?.session_id;
    for index in 0..3 {
        client.append(session, EventPayload::user_text(format!("on time {index}"))).await?;
    }

    // Node 3 comes back half an hour in the past, then leads the shard.
    cluster.kill(3)?;
    let offset = format!("{}m", SKEW_MS / 60_000);
    let env = [("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", &offset), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    cluster.restart_with_env(3, &env)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    make_leader(&mut cluster, 3).await?;
    let mut acknowledged = Vec::new();
    for index in 0..3 {
        acknowledged.push(client.append(session, EventPayload::user_text(format!("late {index}"))).await?);
    }

    let events = client.read_all(session, Consistency::Leader).await?;
    assert_eq!(events.iter().map(|event| event.seq).collect::<Vec<_>>(), (1..=6).collect::<Vec<u64>>());
    assert_eq!(acknowledged, vec![4, 5, 6]);
    let stamps: Vec<u64> = events.iter().map(|event| event.processed_at_ms).collect();
    assert!(stamps.windows(2).all(|pair| pair[0] <= pair[1]), "timestamps went backwards: {stamps:?}");
    // Every replica holds the same events, stamps included.
    cluster.wait_converged(Duration::from_secs(60)).await?;
    for node in 1..=3 {
        let replica = cluster.client_for(node)?.read_all(session, Consistency::Local).await?;
        assert_eq!(replica, events, "node {node}'s replica");
    }

    // The skew, as node 1 measures it, in the status and its warning.
    let mut command = cluster.command()?;
    let addr = cluster.addrs()[0].clone();
    let output = command.args(["cluster", "status", "--addr", &addr]).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("warning: node 3's clock is 1800.0 s behind"), "{text}");
    let status = cluster.status().await?;
    let skew = status.nodes.iter().find(|node| node.node_id == 3).and_then(|node| node.clock_skew_ms);
    assert!(skew.is_some_and(|skew| (skew - SKEW_MS).abs() < 5_000), "node 3's skew: {skew:?}");
    Ok(())
}
