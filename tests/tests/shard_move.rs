//! Operators move replicas online (issue 14): `agentd shard move` moves
//! the replica on a shard's leader to a node that held none, printing each
//! step; `agentd node drain --wait` empties a node. Appends run throughout;
//! every acknowledged one is on every replica afterwards, the old nodes no
//! longer host the shards (not even after a restart: their copies are
//! deleted), and a move that makes no sense is refused with the reason.
//! `agentd node remove` then forgets the drained node: its process is
//! refused and stops, it is refused again when restarted on its old data,
//! and the machine comes back under a new id that takes a replica.

use std::collections::BTreeSet;
use std::time::Duration;

use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::{ContentBlock, EventPayload};
use agentd_protocol::ids::{GroupId, SessionId, ShardId};
use agentd_tests::{leader_views, Appender, Cluster};
use anyhow::{bail, ensure, Context};

/// The nodes that report hosting `group`, and its voters by its leader.
fn holders(status: &ClusterStatus, group: GroupId) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let hosting = status
        .nodes
        .iter()
        .filter(|node| node.reachable && node.groups.iter().any(|view| view.group == group))
        .map(|node| node.node_id)
        .collect();
    let voters = leader_views(status)
        .iter()
        .find(|view| view.group == group)
        .map(|view| view.voters.iter().copied().collect())
        .unwrap_or_default();
    (hosting, voters)
}

/// Every node in `nodes` holds `session` as the leader does, with every
/// acknowledged event.
async fn replicas_hold(
    cluster: &Cluster,
    session: SessionId,
    acknowledged: &[u64],
    nodes: &BTreeSet<u64>,
) -> anyhow::Result<()> {
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let leader_view = cluster.client()?.read_all(session, Consistency::Leader).await?;
    for node in nodes {
        let events = cluster.client_for(*node)?.read_all(session, Consistency::Local).await?;
        ensure!(events == leader_view, "node {node}'s replica of {session} differs from the leader's");
        let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
        if let Some(missing) = acknowledged.iter().find(|seq| seqs.binary_search(seq).is_err()) {
            bail!("node {node} lacks acknowledged event {missing} of {session}");
        }
    }
    Ok(())
}

/// An agent session (`scripted:echo`) sent a user message every 250 ms.
struct Talker {
    session: SessionId,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<usize>>,
}

impl Talker {
    async fn start(cluster: &Cluster) -> anyhow::Result<Talker> {
        let client = cluster.client()?;
        let spec = agentd_tests::plain_agent("echo", "scripted:echo");
        let agent = client.put_agent(None, spec).await?.id;
        let session = client.create_session_with(Some(agent), None).await?.session_id;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut sent = 0;
            while stopped.try_recv().is_err() {
                sent += 1;
                client.append(session, EventPayload::user_text(format!("message {sent}"))).await?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(sent)
        });
        Ok(Talker { session, stop, task })
    }

    /// Stops talking; the session must end idle, having answered the last
    /// message (echo answers the newest user message of a turn).
    async fn finish(self, cluster: &Cluster) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let sent = self.task.await??;
        let client = cluster.client()?;
        let last = format!("message {sent}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let events = client.read_all(self.session, Consistency::Leader).await?;
            let answers =
                events.iter().filter(|event| matches!(&event.payload, EventPayload::AgentMessage { .. })).count();
            let answered_last = events.iter().any(|event| {
                matches!(&event.payload, EventPayload::AgentMessage { content }
                    if content.iter().any(|ContentBlock::Text { text }| *text == last))
            });
            let idle =
                matches!(events.last().map(|event| &event.payload), Some(EventPayload::SessionStatusIdle { .. }));
            if answered_last && idle {
                eprintln!("the agent answered {answers} turns for {sent} messages");
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the agent session did not finish: {events:#?}\n{}", cluster.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs the CLI with `args` against node 2 (node 1 is drained and removed).
fn cli(cluster: &Cluster, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(cluster.command()?.args(args).args(["--addr", &cluster.nodes[1].addr]).output()?)
}

/// Waits until node `id`'s process has exited, and answers how.
async fn exits_within(cluster: &mut Cluster, id: u64, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = cluster.try_exit_status(id)? {
            return Ok(status);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {id} still runs after {timeout:?}:\n{}", cluster.log_tails());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_moves_a_shard_and_drains_a_node_while_appends_run() -> anyhow::Result<()> {
    // Four nodes, three replicas per shard: one node holds none of each.
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 4, &["--shards", "4"]).await?;
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let info = cluster.client()?.create_session().await?;
    let (session, shard) = (info.session_id, info.shard);
    let group = GroupId::Shard(shard);
    let appender = Appender::start(cluster.client()?, session);
    let (hosting, voters) = holders(&status, group);
    let to = (1..=4).find(|node| !hosting.contains(node)).context("every node holds the shard")?;
    // Move the leader's own replica: it must hand off before it leaves.
    let leader = leader_views(&status).iter().find(|view| view.group == group).and_then(|view| view.leader);
    let from = leader.context("the session's shard has no leader")?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let moved =
        cli(&cluster, &["shard", "move", &shard.0.to_string(), "--to", &to.to_string(), "--from", &from.to_string()])?;
    let printed = String::from_utf8_lossy(&moved.stdout).to_string();
    eprintln!("shard move printed:\n{printed}{}", String::from_utf8_lossy(&moved.stderr));
    ensure!(moved.status.success(), "shard move failed:\n{printed}\n{}", cluster.log_tails());
    ensure!(printed.contains(&format!("moved to node {to}")), "no final step printed: {printed}");
    let status = cluster.status().await?;
    let (hosting, now_voters) = holders(&status, group);
    let expected: BTreeSet<u64> = voters.iter().copied().filter(|node| *node != from).chain([to]).collect();
    ensure!(now_voters == expected, "voters after the move: {now_voters:?}, expected {expected:?}");
    ensure!(hosting == expected, "node {from} still hosts {group}: {hosting:?}");
    ensure!(appender.count() > 0, "no append was acknowledged during the move");

    // The old replica is gone from disk: after a restart the node does not
    // host the shard again.
    cluster.kill(from)?;
    cluster.restart(from)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let (hosting, _) = holders(&cluster.status().await?, group);
    ensure!(!hosting.contains(&from), "node {from} hosts {group} again after a restart: {hosting:?}");

    // Nonsense is refused with the reason, and changes nothing.
    let refused = cli(&cluster, &["shard", "move", &shard.0.to_string(), "--to", &to.to_string()])?;
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    ensure!(!refused.status.success() && said.contains("already holds a replica"), "not refused: {said}");
    let refused = cli(&cluster, &["shard", "move", "99", "--to", "1"])?;
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    ensure!(!refused.status.success() && said.contains("there is no shard-99"), "not refused: {said}");

    // An agent session talks through the drain and the removal.
    let talker = Talker::start(&cluster).await?;
    drain_node_one(&cluster).await?;
    remove_node_one(&mut cluster).await?;
    talker.finish(&cluster).await?;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let acknowledged = appender.stop().await?;
    let (_, voters) = holders(&cluster.status().await?, group);
    replicas_hold(&cluster, session, &acknowledged, &voters).await?;
    eprintln!("{} appends acknowledged while replicas moved; voters of {group} now {voters:?}", acknowledged.len());
    Ok(())
}

/// `agentd node drain 1 --wait`: every replica node 1 (it ran --init) held
/// goes elsewhere.
async fn drain_node_one(cluster: &Cluster) -> anyhow::Result<()> {
    // Drain node 1 (it ran --init): every replica it held goes elsewhere.
    let before = cluster.status().await?;
    let held: Vec<ShardId> = (0..before.shards)
        .map(ShardId)
        .filter(|shard| holders(&before, GroupId::Shard(*shard)).0.contains(&1))
        .collect();
    let drained = cli(cluster, &["node", "drain", "1", "--wait", "--json"])?;
    let printed = String::from_utf8_lossy(&drained.stdout).to_string();
    ensure!(drained.status.success(), "node drain failed:\n{printed}\n{}", String::from_utf8_lossy(&drained.stderr));
    let answer: serde_json::Value = serde_json::from_str(printed.trim()).context("drain --json is not JSON")?;
    let moves = answer["moves"].as_array().context("no moves")?;
    ensure!(moves.len() == held.len(), "drain moved {} replicas, node 1 held {held:?}", moves.len());
    ensure!(moves.iter().all(|one| one["phase"] == "done"), "a move is not done: {answer}");
    let status = cluster.status().await?;
    for shard in 0..status.shards {
        let (hosting, voters) = holders(&status, GroupId::Shard(ShardId(shard)));
        ensure!(!hosting.contains(&1), "node 1 still hosts shard-{shard}: {hosting:?}");
        ensure!(voters.len() == 3, "shard-{shard} has voters {voters:?}");
    }
    let again = cli(cluster, &["node", "drain", "1"])?;
    ensure!(String::from_utf8_lossy(&again.stdout).contains("holds no replica"), "a second drain moved something");
    Ok(())
}

/// `agentd node remove 1` once node 1 is drained; a new node id on the same
/// machine then receives its share of the replicas.
async fn remove_node_one(cluster: &mut Cluster) -> anyhow::Result<()> {
    // A node that holds replicas cannot be removed; the drained one can.
    let refused = cli(cluster, &["node", "remove", "2"])?;
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    ensure!(!refused.status.success() && said.contains("drain it first"), "removing node 2 was not refused: {said}");
    let removed = cli(cluster, &["node", "remove", "1"])?;
    let printed = String::from_utf8_lossy(&removed.stdout).to_string();
    ensure!(removed.status.success(), "node remove failed: {printed}{}", String::from_utf8_lossy(&removed.stderr));
    ensure!(printed.contains("node 1 is removed"), "node remove printed: {printed}");
    // Node 1's process is refused by its peers and stops by itself, saying why.
    let stopped = exits_within(cluster, 1, Duration::from_secs(60)).await?;
    ensure!(!stopped.success(), "removed node 1 exited with {stopped}");
    let text = cluster.nodes[0].log_text();
    ensure!(text.contains("node 1 was removed from the cluster"), "node 1 did not say why it stopped:\n{text}");
    cluster
        .wait_for(Duration::from_secs(60), "node 1 to leave the cluster", |status| {
            let metadata = leader_views(status).into_iter().find(|view| view.group == GroupId::Metadata);
            !status.nodes.iter().any(|node| node.node_id == 1)
                && metadata.is_some_and(|view| !view.voters.contains(&1) && !view.learners.contains(&1))
        })
        .await?;
    // Restarted with its old data directory, it is refused again.
    cluster.restart(1)?;
    let stopped = exits_within(cluster, 1, Duration::from_secs(60)).await?;
    ensure!(!stopped.success(), "restarted removed node 1 exited with {stopped}");
    // The machine comes back under a new id, and receives its share of the
    // replicas by itself (4 shards x 3 replicas over 4 nodes: 3 each).
    let new_id = cluster.join_new_node()?;
    cluster
        .wait_for(Duration::from_secs(60), "the new node to join", |status| {
            status.nodes.iter().any(|node| node.node_id == new_id && node.reachable)
        })
        .await?;
    let status = cluster.wait_placed(Duration::from_secs(120)).await?;
    let held = (0..status.shards).filter(|shard| holders(&status, GroupId::Shard(ShardId(*shard))).1.contains(&new_id));
    ensure!(held.count() == 3, "node {new_id} did not receive its share: {:?}", leader_views(&status));
    Ok(())
}
