//! Three real processes (default 64 shards), 20 sessions, 2,000 acknowledged appends while the
//! busiest leader is SIGKILLed twice and restarted; then every replica must
//! hold every acknowledged event exactly once, in order, with no gaps.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{EventId, SessionId};
use agentd_tests::{leader_views, Cluster};

const SESSIONS: usize = 20;
const APPENDS_PER_SESSION: u64 = 100;

/// The node that leads the most groups.
fn busiest_leader(status: &ClusterStatus) -> u64 {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for group in leader_views(status) {
        if let Some(leader) = group.leader {
            *counts.entry(leader).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, count)| *count).map(|(node, _)| node).expect("some group has a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_leader_kills() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &[]).await?;
    let client = Arc::new(cluster.client()?);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(client.create_session().await?.session_id);
    }

    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (index, session_id) in sessions.iter().copied().enumerate() {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let mut acks: Vec<(EventId, u64)> = Vec::new();
            for number in 0..APPENDS_PER_SESSION {
                let event_id = EventId::from_random(rand::random());
                let payload = EventPayload::user_text(format!("session {index} message {number}"));
                let seq = client.append_with_id(session_id, event_id, payload).await?;
                acks.push((event_id, seq));
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((session_id, acks))
        }));
    }

    // Kill the busiest leader twice while the writers run.
    for threshold in [400, 1200] {
        while acknowledged.load(Ordering::Relaxed) < threshold {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = busiest_leader(&cluster.status().await?);
        eprintln!("killing node {victim} after {} acknowledged appends", acknowledged.load(Ordering::Relaxed));
        cluster.kill(victim)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.restart(victim)?;
    }

    let mut acknowledged_by_session: Vec<(SessionId, Vec<(EventId, u64)>)> = Vec::new();
    for writer in writers {
        acknowledged_by_session.push(writer.await??);
    }
    let total: usize = acknowledged_by_session.iter().map(|(_, acks)| acks.len()).sum();
    assert_eq!(total, SESSIONS * APPENDS_PER_SESSION as usize, "every append was eventually acknowledged");

    cluster.wait_converged(Duration::from_secs(120)).await?;
    for node in 1..=3 {
        let reader = cluster.client_for(node)?;
        for (session_id, acks) in &acknowledged_by_session {
            let events = reader.read_all(*session_id, Consistency::Local).await?;
            let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
            assert_eq!(
                seqs,
                (1..=events.len() as u64).collect::<Vec<_>>(),
                "node {node}: gaps or disorder in {session_id}"
            );
            let ids: HashSet<EventId> = events.iter().map(|event| event.id).collect();
            assert_eq!(ids.len(), events.len(), "node {node}: an event appears twice in {session_id}");
            for (event_id, seq) in acks {
                let event = events.get((*seq - 1) as usize);
                assert_eq!(
                    event.map(|event| event.id),
                    Some(*event_id),
                    "node {node}: acknowledged event {event_id} at seq {seq} of {session_id}"
                );
            }
            // Every acknowledged append is present; nothing else was written by this test.
            assert_eq!(events.len(), acks.len(), "node {node}: {session_id} holds events that were never acknowledged");
        }
    }
    Ok(())
}
