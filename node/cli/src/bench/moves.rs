//! `agentd bench move`: shard moves under load. A client per shard appends
//! to a session of that shard, one append in flight each; the moves run one
//! after another, each moving a shard's leader's replica to a node that
//! holds none (so each includes a leadership hand-off). Reported per move:
//! how long until it was done (learner caught up, voters swapped, old copy
//! deleted), and how long the moved shard's client went without an
//! acknowledged append (the shard's unavailability as a client sees it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::{GroupId, SessionId, ShardId};
use agentd_protocol::sync::lock;
use anyhow::{bail, Result};
use serde::Serialize;

use super::percentile_ms;
use crate::commands::{moves, Target};

/// How long one move may take before the bench fails.
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);
/// Appends resume this long after a move before its gaps are measured.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct MoveBench {
    pub target: Target,
    pub moves: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    pub moves: u32,
    pub move_p50_ms: f64,
    pub move_max_ms: f64,
    pub unavailable_p50_ms: f64,
    pub unavailable_max_ms: f64,
    pub appends: u64,
    pub errors: u64,
}

/// When each shard's client had an append acknowledged.
type Acks = Arc<Mutex<BTreeMap<ShardId, Vec<Instant>>>>;

pub async fn run(bench: MoveBench) -> Result<MoveReport> {
    let client = bench.target.client()?;
    let shards = client.cluster_status().await?.shards;
    let sessions = session_per_shard(&client, shards).await?;
    let acks: Acks = Arc::default();
    let (stop, appends, errors) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for (shard, session) in &sessions {
        let (shard, session, appender) = (*shard, *session, bench.target.client()?);
        let (acks, stop, appends, errors) = (acks.clone(), stop.clone(), appends.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match appender.append(session, EventPayload::user_text("move bench")).await {
                    Ok(_) => {
                        appends.fetch_add(1, Ordering::Relaxed);
                        lock(&acks).entry(shard).or_default().push(Instant::now());
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(SETTLE).await;

    let (mut took, mut unavailable) = (Vec::new(), Vec::new());
    for index in 0..bench.moves {
        let shard = ShardId(index % shards);
        let (moved_in, gap) = move_one(&client, shard, &acks).await?;
        eprintln!(
            "move {}/{}: {shard} in {:.0} ms; its client waited at most {:.0} ms",
            index + 1,
            bench.moves,
            moved_in.as_secs_f64() * 1000.0,
            gap.as_secs_f64() * 1000.0
        );
        took.push(moved_in);
        unavailable.push(gap);
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    took.sort();
    unavailable.sort();
    Ok(MoveReport {
        moves: bench.moves,
        move_p50_ms: percentile_ms(&took, 0.5),
        move_max_ms: percentile_ms(&took, 1.0),
        unavailable_p50_ms: percentile_ms(&unavailable, 0.5),
        unavailable_max_ms: percentile_ms(&unavailable, 1.0),
        appends: appends.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// A session on each shard (sessions land on shards at random).
async fn session_per_shard(client: &Client, shards: u32) -> Result<BTreeMap<ShardId, SessionId>> {
    let mut sessions = BTreeMap::new();
    for _ in 0..shards.saturating_mul(30) {
        if sessions.len() == shards as usize {
            break;
        }
        let info = client.create_session().await?;
        sessions.entry(info.shard).or_insert(info.session_id);
    }
    if sessions.len() < shards as usize {
        bail!("could not place a session on every shard ({} of {shards})", sessions.len());
    }
    Ok(sessions)
}

/// Moves the replica of `shard`'s leader to a node holding none; answers
/// how long the move took and the longest wait of the shard's client.
async fn move_one(client: &Client, shard: ShardId, acks: &Acks) -> Result<(Duration, Duration)> {
    let status = client.cluster_status().await?;
    let Some((_, view)) = crate::commands::cluster::leader_reports(&status)
        .into_iter()
        .find(|(_, view)| view.group == GroupId::Shard(shard) && view.leader.is_some())
    else {
        bail!("{shard} has no leader");
    };
    let Some(to) = status.nodes.iter().map(|node| node.node_id).find(|node| !view.voters.contains(node)) else {
        bail!("every node holds a replica of {shard}: moves need more nodes than replicas per shard");
    };
    let from = view.leader.unwrap_or_default();
    let started = Instant::now();
    let planned = client.move_shard(shard, to, Some(from)).await?;
    moves::follow(client, &[planned], MOVE_TIMEOUT, true).await?;
    let done = Instant::now();
    tokio::time::sleep(SETTLE).await;
    let gap = lock(acks).get(&shard).map_or(Duration::ZERO, |acks| longest_gap(acks, started, done));
    Ok((done - started, gap))
}

/// The longest time between two acknowledgements in `acks` (ascending)
/// that overlaps `[from, to]`: from the last one before `from` to the
/// first one after `to`.
fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> Duration {
    let first = acks.partition_point(|at| *at <= from).saturating_sub(1);
    let last = acks.partition_point(|at| *at < to).min(acks.len().saturating_sub(1));
    acks.get(first..=last).unwrap_or_default().windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_spans_the_acks_around_the_move() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let acks = [at(0), at(10), at(20), at(300), at(310), at(900)];
        // The move ran from 15 to 305: the gap from 20 to 300 counts, 310-900 does not.
        assert_eq!(longest_gap(&acks, at(15), at(305)), Duration::from_millis(280));
        // A move after the last ack: nothing after it to measure against.
        assert_eq!(longest_gap(&acks, at(950), at(990)), Duration::ZERO);
        assert_eq!(longest_gap(&[], at(0), at(1)), Duration::ZERO);
    }
}
