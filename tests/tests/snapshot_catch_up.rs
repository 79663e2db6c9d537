//! A node kept down while the others snapshot and purge their logs catches
//! up from a snapshot when it comes back.

use std::time::Duration;

use agentd_protocol::api::Consistency;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::GroupId;
use agentd_tests::{leader_views, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purged_log_catches_up_from_a_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(
        agentd_tests::agentd_binary!(),
        3,
        &["--shards", "2", "--snapshot-logs", "50", "--logs-to-keep", "5"],
    )
    .await?;
    let client = cluster.client()?;
    let session = client.create_session().await?.session_id;
    client.append(session, EventPayload::user_text("before the outage")).await?;
    cluster.wait_converged(Duration::from_secs(60)).await?;

    cluster.kill(3)?;
    let mut acknowledged = vec![1u64];
    for number in 0..300 {
        acknowledged
            .push(client.append(session, EventPayload::user_text(format!("while node 3 is down {number}"))).await?);
    }
    // The leader of the session's shard must have purged entries node 3
    // never saw (snapshots and purges run in the background: wait for it).
    let shard = GroupId::Shard(cluster.client()?.get_session(session).await?.shard);
    let purged = |status: &agentd_protocol::api::ClusterStatus| {
        leader_views(status).iter().any(|group| group.group == shard && group.purged_index.unwrap_or(0) > 10)
    };
    cluster.wait_for(Duration::from_secs(30), "the leader to purge its log", purged).await?;

    cluster.restart(3)?;
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let node3 = status.nodes.iter().find(|node| node.node_id == 3).expect("node 3 reports");
    let replica = node3.groups.iter().find(|group| group.group == shard).expect("node 3 hosts the shard");
    assert!(replica.snapshot_index.unwrap_or(0) > 10, "node 3 installed a snapshot: {replica:?}");

    let events = cluster.client_for(3)?.read_all(session, Consistency::Local).await?;
    let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, acknowledged, "node 3 holds every acknowledged event in order");
    Ok(())
}
