//! An operator's whole day on a live cluster (issue 14), as the CLI runs
//! it: three nodes, then a fourth that joins and receives its share of the
//! replicas by itself; `cluster rebalance` (a dry run first), `shard move`,
//! `shard transfer-leader`, `node drain 1 --wait` and `node remove 1`,
//! while one client per shard appends and an agent session is talked to.
//!
//! Afterwards every acknowledged event is on every replica of its shard,
//! once and in order; the agent session finished, having answered the last
//! message; node 1 is in no voter set, its process stopped saying why, and
//! it is refused again when restarted on its old data; the machine comes
//! back under a new id and receives replicas. The longest window in which
//! any client could not append is reported and bounded by the election
//! timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::{ContentBlock, EventPayload};
use agentd_protocol::ids::{GroupId, SessionId, ShardId};
use agentd_tests::{leader_views, leaders_per_node, Appender, Cluster};
use anyhow::{bail, ensure, Context};

/// Shards in the test cluster: few, so that every one has an appending client.
const SHARDS: u32 = 4;
/// The longest an election may take (`agentd start`'s default
/// `--election-timeout-max-ms`).
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(2);

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

/// Shard voters per node, as the groups' leaders report them.
fn replicas_per_node(status: &ClusterStatus) -> BTreeMap<u64, usize> {
    let mut counts: BTreeMap<u64, usize> =
        status.nodes.iter().filter(|node| node.reachable).map(|node| (node.node_id, 0)).collect();
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

/// One appending client per shard, each on a session of its own.
struct Appenders {
    sessions: Vec<(SessionId, ShardId)>,
    appenders: Vec<Appender>,
}

impl Appenders {
    async fn start(cluster: &Cluster) -> anyhow::Result<Appenders> {
        let client = cluster.client()?;
        let mut by_shard: BTreeMap<ShardId, SessionId> = BTreeMap::new();
        for _ in 0..200 {
            let info = client.create_session().await?;
            by_shard.entry(info.shard).or_insert(info.session_id);
            if by_shard.len() == SHARDS as usize {
                break;
            }
        }
        ensure!(by_shard.len() == SHARDS as usize, "200 sessions did not cover every shard: {by_shard:?}");
        let mut appenders = Vec::new();
        for session in by_shard.values() {
            appenders.push(Appender::start(cluster.client()?, *session));
        }
        Ok(Appenders { sessions: by_shard.into_iter().map(|(shard, session)| (session, shard)).collect(), appenders })
    }

    fn longest_gap(&self) -> Duration {
        self.appenders.iter().map(Appender::longest_gap).max().unwrap_or_default()
    }

    fn count(&self) -> usize {
        self.appenders.iter().map(Appender::count).sum()
    }

    /// Stops every client; each session's acknowledged sequence numbers.
    async fn stop(self) -> anyhow::Result<Vec<(SessionId, ShardId, Vec<u64>)>> {
        let mut acknowledged = Vec::new();
        for ((session, shard), appender) in self.sessions.into_iter().zip(self.appenders) {
            acknowledged.push((session, shard, appender.stop().await?));
        }
        Ok(acknowledged)
    }
}

/// Every voter of the session's shard holds it as the leader does: numbered
/// 1, 2, 3... with no gap or repeat, with every acknowledged event.
async fn voters_hold(
    cluster: &Cluster,
    session: SessionId,
    shard: ShardId,
    acknowledged: &[u64],
) -> anyhow::Result<()> {
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let (_, voters) = holders(&status, GroupId::Shard(shard));
    ensure!(voters.len() == 3, "{shard} has voters {voters:?}");
    let leader_view = cluster.client()?.read_all(session, Consistency::Leader).await?;
    for node in voters {
        let events = cluster.client_for(node)?.read_all(session, Consistency::Local).await?;
        let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
        ensure!(seqs == (1..=seqs.len() as u64).collect::<Vec<_>>(), "node {node}: a gap or a repeat in {session}");
        ensure!(events == leader_view, "node {node}'s replica of {session} differs from the leader's");
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

/// Waits until every group has a leader (replicas cannot converge in the
/// strict sense while the clients append).
async fn led(cluster: &Cluster) -> anyhow::Result<ClusterStatus> {
    cluster
        .wait_for(Duration::from_secs(60), "every group to have a leader", |status| {
            leader_views(status).len() == SHARDS as usize + 1
        })
        .await
}

/// Runs the CLI with `args` against node 2 (node 1 is drained and removed).
fn cli(cluster: &Cluster, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(cluster.command()?.args(args).args(["--addr", &cluster.nodes[1].addr]).output()?)
}

/// Runs the CLI and expects success; answers what it printed on stdout.
fn cli_ok(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let output = cli(cluster, args)?;
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    let said = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "agentd {args:?} failed:\n{printed}\n{said}\n{}", cluster.log_tails());
    Ok(printed)
}

fn cli_json(cluster: &Cluster, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let printed = cli_ok(cluster, args)?;
    serde_json::from_str(printed.trim()).with_context(|| format!("agentd {args:?} printed {printed}"))
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
async fn an_operator_rebalances_moves_drains_and_removes_while_clients_and_an_agent_run() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", &SHARDS.to_string()]).await?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let appenders = Appenders::start(&cluster).await?;
    let talker = Talker::start(&cluster).await?;

    let fourth = join_a_fourth_node(&mut cluster).await?;
    rebalance_after_draining(&cluster, fourth).await?;
    move_a_leaders_replica(&cluster).await?;
    transfer_a_leadership(&cluster).await?;
    drain_node_one(&cluster).await?;
    remove_node_one(&mut cluster).await?;
    ensure!(appenders.count() > 0, "no append was acknowledged");

    talker.finish(&cluster).await?;
    let longest_gap = appenders.longest_gap();
    let acknowledged = appenders.stop().await?;
    let total: usize = acknowledged.iter().map(|(_, _, seqs)| seqs.len()).sum();
    for (session, shard, seqs) in &acknowledged {
        voters_hold(&cluster, *session, *shard, seqs).await?;
    }
    let status = cluster.status().await?;
    for view in leader_views(&status) {
        ensure!(!view.voters.contains(&1) && !view.learners.contains(&1), "node 1 is still in {}", view.group);
    }
    eprintln!(
        "{total} appends acknowledged by {} clients; longest window in which a client could not append: {longest_gap:?}",
        acknowledged.len()
    );
    // A move never costs more than a leader election; the client's retries
    // and a loaded 2-core machine get as much again, and once more.
    ensure!(longest_gap < 3 * ELECTION_TIMEOUT_MAX, "a client could not append for {longest_gap:?}");
    Ok(())
}

/// A fourth node joins and receives its share of the replicas by itself.
async fn join_a_fourth_node(cluster: &mut Cluster) -> anyhow::Result<u64> {
    let fourth = cluster.join_new_node()?;
    let joined = replicas_per_node(&cluster.wait_placed(Duration::from_secs(120)).await?);
    eprintln!("after node {fourth} joined: replicas per node {joined:?}");
    ensure!(joined.get(&fourth) == Some(&3), "4 shards x 3 replicas over 4 nodes: node {fourth} has {joined:?}");
    Ok(fourth)
}

/// Drains `node` so that it holds nothing; `cluster rebalance --dry-run`
/// plans the moves back and changes nothing; `cluster rebalance` carries
/// them out and evens replicas and leaders; a second run moves nothing.
async fn rebalance_after_draining(cluster: &Cluster, node: u64) -> anyhow::Result<()> {
    cli_ok(cluster, &["node", "drain", &node.to_string(), "--wait"])?;
    let drained = replicas_per_node(&led(cluster).await?);
    ensure!(drained[&node] == 0, "node {node} holds replicas after its drain: {drained:?}");

    let planned = cli_json(cluster, &["cluster", "rebalance", "--dry-run", "--json"])?;
    let moves = planned["moves"].as_array().context("no moves")?;
    ensure!(moves.len() == 3, "3 replicas belong on node {node}: planned {planned}");
    ensure!(moves.iter().all(|one| one["to"] == node && one["phase"] == "recorded"), "{planned}");
    ensure!(replicas_per_node(&cluster.status().await?)[&node] == 0, "a dry run moved a replica");

    let done = cli_json(cluster, &["cluster", "rebalance", "--json"])?;
    ensure!(done["moves"].as_array().is_some_and(|moves| moves.iter().all(|one| one["phase"] == "done")), "{done}");
    ensure!(done["failed_transfers"].as_array().is_some_and(Vec::is_empty), "{done}");
    let status = cluster.wait_balanced(Duration::from_secs(60)).await?;
    let (replicas, leaders) = (replicas_per_node(&status), leaders_per_node(&status));
    eprintln!("after cluster rebalance: replicas per node {replicas:?}, leaders per node {leaders:?}");
    ensure!(spread(&replicas) <= 1, "replicas are not even: {replicas:?}");
    let again = cli_json(cluster, &["cluster", "rebalance", "--json"])?;
    ensure!(again["moves"].as_array().is_some_and(Vec::is_empty), "a second rebalance moved replicas: {again}");

    // `agentd bench move` measures moves under load on the same cluster.
    let report = cli_json(cluster, &["bench", "move", "--moves", "2", "--json"])?;
    ensure!(report["moves"] == 2 && report["appends"].as_u64() > Some(0), "bench move reported {report}");
    eprintln!("bench move: {report}");
    Ok(())
}

/// `shard move` takes the replica on a shard's leader (it must hand off
/// before it leaves) to the node that holds none; nonsense is refused.
async fn move_a_leaders_replica(cluster: &Cluster) -> anyhow::Result<()> {
    let status = led(cluster).await?;
    let group = GroupId::Shard(ShardId(0));
    let (hosting, voters) = holders(&status, group);
    let to = (1..=4).find(|node| !hosting.contains(node)).context("every node holds shard-0")?;
    let leader = leader_views(&status).iter().find(|view| view.group == group).and_then(|view| view.leader);
    let from = leader.context("shard-0 has no leader")?;
    let printed = cli_ok(cluster, &["shard", "move", "0", "--to", &to.to_string(), "--from", &from.to_string()])?;
    eprintln!("shard move printed:\n{printed}");
    ensure!(printed.contains(&format!("moved to node {to}")), "no final step printed: {printed}");
    let (hosting, now_voters) = holders(&cluster.status().await?, group);
    let expected: BTreeSet<u64> = voters.iter().copied().filter(|node| *node != from).chain([to]).collect();
    ensure!(now_voters == expected, "voters after the move: {now_voters:?}, expected {expected:?}");
    ensure!(hosting == expected, "node {from} still hosts {group}: {hosting:?}");

    let refused = cli(cluster, &["shard", "move", "0", "--to", &to.to_string()])?;
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    ensure!(!refused.status.success() && said.contains("already holds a replica"), "not refused: {said}");
    let refused = cli(cluster, &["shard", "move", "99", "--to", "2"])?;
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    ensure!(!refused.status.success() && said.contains("there is no shard-99"), "not refused: {said}");
    Ok(())
}

/// `shard transfer-leader` hands a shard's leadership to another voter.
async fn transfer_a_leadership(cluster: &Cluster) -> anyhow::Result<()> {
    let status = led(cluster).await?;
    let view = leader_views(&status).into_iter().find(|view| view.group == GroupId::Shard(ShardId(1)));
    let view = view.context("shard-1 has no leader")?;
    let to = view.voters.iter().copied().find(|voter| Some(*voter) != view.leader).context("one voter")?;
    let answer = cli_json(cluster, &["shard", "transfer-leader", "shard-1", "--to", &to.to_string(), "--json"])?;
    ensure!(answer["leader"] == to && answer["group"] == "shard-1", "{answer}");
    Ok(())
}

/// `node drain 1 --wait --json`: every replica node 1 (it ran --init) held
/// goes elsewhere, each shard keeping three voters.
async fn drain_node_one(cluster: &Cluster) -> anyhow::Result<()> {
    let before = cluster.status().await?;
    let held: Vec<ShardId> =
        (0..SHARDS).map(ShardId).filter(|shard| holders(&before, GroupId::Shard(*shard)).0.contains(&1)).collect();
    let answer = cli_json(cluster, &["node", "drain", "1", "--wait", "--json"])?;
    let moves = answer["moves"].as_array().context("no moves")?;
    ensure!(moves.len() == held.len(), "drain moved {} replicas, node 1 held {held:?}", moves.len());
    ensure!(moves.iter().all(|one| one["phase"] == "done"), "a move is not done: {answer}");
    let status = cluster.status().await?;
    for shard in 0..SHARDS {
        let (hosting, voters) = holders(&status, GroupId::Shard(ShardId(shard)));
        ensure!(!hosting.contains(&1), "node 1 still hosts shard-{shard}: {hosting:?}");
        ensure!(voters.len() == 3, "shard-{shard} has voters {voters:?}");
    }
    let again = cli_ok(cluster, &["node", "drain", "1"])?;
    ensure!(again.contains("holds no replica"), "a second drain moved something: {again}");
    Ok(())
}

/// `node remove 1` once node 1 is drained; a new node id on the same
/// machine then receives its share of the replicas.
async fn remove_node_one(cluster: &mut Cluster) -> anyhow::Result<()> {
    let refused = cli(cluster, &["node", "remove", "2"])?;
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    ensure!(!refused.status.success() && said.contains("drain it first"), "removing node 2 was not refused: {said}");
    let printed = cli_ok(cluster, &["node", "remove", "1"])?;
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
    // The machine comes back under a new id and receives its share of the
    // replicas by itself (4 shards x 3 replicas over 4 nodes: 3 each).
    let new_id = cluster.join_new_node()?;
    let status = cluster.wait_placed(Duration::from_secs(120)).await?;
    let held = (0..SHARDS).filter(|shard| holders(&status, GroupId::Shard(ShardId(*shard))).1.contains(&new_id));
    ensure!(held.count() == 3, "node {new_id} did not receive its share: {:?}", leader_views(&status));
    Ok(())
}

/// A machine dies with its disk, and comes back empty under a new id at
/// its old address, as an operator replaces a failed server: the new node
/// joins, `node drain` moves the dead id's replicas to it (the dead node
/// cannot answer, and three nodes leave nowhere else to go) and `node
/// remove` forgets the dead id. While both ids name the same address, the
/// new process refuses every Raft call meant for the old id, so it never
/// votes or acknowledges as that voter. Appends run throughout and every
/// acknowledged one is on every voter afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_machine_comes_back_under_a_new_id_at_its_old_address() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", &SHARDS.to_string()]).await?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let appenders = Appenders::start(&cluster).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.kill(3)?;
    std::fs::remove_dir_all(&cluster.nodes[2].data_dir)?;
    let new_id = cluster.join_new_node_at(cluster.nodes[2].addr.clone())?;
    cluster
        .wait_for(Duration::from_secs(60), "the new node to join", |status| {
            status.nodes.iter().any(|node| node.node_id == new_id && node.reachable)
        })
        .await?;
    // The join gives the new node its share by itself (from the nodes that
    // hold the most); the drain moves whatever the dead id still holds.
    let answer = cli_json(&cluster, &["node", "drain", "3", "--wait", "--json"])?;
    let moves = answer["moves"].as_array().context("no moves")?;
    ensure!(moves.iter().all(|one| one["from"] == 3 && one["to"] != 3 && one["phase"] == "done"), "{answer}");
    let printed = cli_ok(&cluster, &["node", "remove", "3"])?;
    ensure!(printed.contains("node 3 is removed"), "node remove printed: {printed}");
    let log = cluster.nodes[(new_id - 1) as usize].log_text();
    ensure!(log.contains("refusing Raft calls meant for node 3"), "node {new_id} answered for node 3:\n{log}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let acknowledged = appenders.stop().await?;
    let status = cluster.status().await?;
    for view in leader_views(&status) {
        ensure!(!view.voters.contains(&3), "node 3 is still a voter of {}", view.group);
    }
    for (session, shard, seqs) in &acknowledged {
        ensure!(!seqs.is_empty(), "no append to {session} was acknowledged");
        voters_hold(&cluster, *session, *shard, seqs).await?;
    }
    let held = replicas_per_node(&status);
    ensure!(held.get(&new_id).is_some_and(|count| *count > 0), "node {new_id} holds no replica: {held:?}");
    Ok(())
}
