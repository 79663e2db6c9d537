//! A follower whose node is SIGKILLed mid-stream resumes on another node
//! from the last sequence number it saw: every event exactly once, in order.

use std::time::Duration;

use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::EventId;
use agentd_tests::Cluster;

const EVENTS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_resumes_on_another_node_without_gaps_or_duplicates() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "4"]).await?;
    let writer = cluster.client()?;
    let session = writer.create_session().await?.session_id;

    // The follower starts on node 2 and knows the others.
    let addrs = cluster.addrs();
    let follower_client = cluster.client_of(vec![addrs[1].clone(), addrs[0].clone(), addrs[2].clone()])?;
    let follower = tokio::spawn(async move {
        let mut subscription = follower_client.subscribe(session, 1);
        let mut seen = Vec::new();
        while (seen.len() as u64) < EVENTS {
            seen.extend(subscription.next().await?);
        }
        anyhow::Ok(seen)
    });

    let mut acknowledged = Vec::new();
    for number in 0..EVENTS {
        if number == EVENTS / 4 {
            cluster.kill(2)?;
        }
        let event_id = EventId::from_random(rand::random());
        let seq = writer.append_with_id(session, event_id, EventPayload::user_text(format!("event {number}"))).await?;
        acknowledged.push((seq, event_id));
    }

    let seen = tokio::time::timeout(Duration::from_secs(60), follower).await???;
    let seen: Vec<(u64, EventId)> = seen.iter().map(|event| (event.seq, event.id)).collect();
    assert_eq!(seen, acknowledged, "the follower saw every event once, in order, across the node failure");
    Ok(())
}
