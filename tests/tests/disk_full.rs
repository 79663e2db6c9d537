//! A node whose data disk fills up stays up: under its free-space floor it
//! takes no new writes, hands off its leaderships and answers writes with a
//! typed `storage_full`; reads keep working, `cluster status` shows it, the
//! cluster keeps serving through the other replicas, and once space is freed
//! the node takes writes again and catches up by itself. Every acknowledged
//! event ends up on every replica, once, in order. A node restarted on a
//! full disk comes up taking no writes instead of crash-looping.
//!
//! The node's disk is a small tmpfs the test mounts (so it needs root, as
//! the sandbox tests do).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agentd_client::ClientError;
use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::SessionId;
use agentd_protocol::ApiError;
use agentd_tests::{assert_every_replica_holds, Appender, Cluster};
use anyhow::{bail, ensure, Context};

const MIB: u64 = 1024 * 1024;
/// The floor every node of the test runs with.
const FLOOR: u64 = 32 * MIB;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mib: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .context("cannot run mount")?;
        ensure!(status.success(), "cannot mount a tmpfs on {} (this test needs root): {status}", path.display());
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    fn free_bytes(&self) -> anyhow::Result<u64> {
        let output = Command::new("df").args(["--output=avail", "-B1"]).arg(&self.path).output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines().nth(1).context("df printed no figure")?.trim().parse().context("df's figure")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a node killed a moment ago may still hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn node_status(status: &ClusterStatus, id: u64) -> Option<&agentd_protocol::api::NodeStatus> {
    status.nodes.iter().find(|node| node.node_id == id && node.reachable)
}

fn leads(status: &ClusterStatus, id: u64) -> usize {
    agentd_tests::leaders_per_node(status).get(&id).copied().unwrap_or_default()
}

/// Stops node `id`, moves its data directory onto a tmpfs of `size_mib`
/// and restarts it there.
async fn move_onto_tmpfs(cluster: &mut Cluster, id: u64, size_mib: u64) -> anyhow::Result<Tmpfs> {
    cluster.kill(id)?;
    let data_dir = cluster.nodes[(id - 1) as usize].data_dir.clone();
    let moved = data_dir.with_extension("moved");
    std::fs::rename(&data_dir, &moved)?;
    let disk = Tmpfs::mount(&data_dir, size_mib)?;
    let copied = Command::new("cp").arg("-a").arg(format!("{}/.", moved.display())).arg(&data_dir).status()?;
    ensure!(copied.success(), "cannot copy the data directory onto the tmpfs");
    cluster.restart(id)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    Ok(disk)
}

/// Makes node 3 lead some groups: node 1 stops for a moment, so the groups
/// it led elect among nodes 2 and 3. Tried again if node 3 leads nothing
/// once node 1 is back.
async fn make_node3_lead(cluster: &mut Cluster) -> anyhow::Result<()> {
    for _ in 0..5 {
        cluster.kill(1)?;
        cluster.wait_for(Duration::from_secs(60), "node 3 to lead a group", |status| leads(status, 3) > 0).await?;
        cluster.restart(1)?;
        let status = cluster.wait_converged(Duration::from_secs(60)).await?;
        if leads(&status, 3) > 0 {
            return Ok(());
        }
    }
    bail!("node 3 led no group after five tries")
}

async fn wait_full(cluster: &Cluster, what: &str) -> anyhow::Result<ClusterStatus> {
    cluster
        .wait_for(Duration::from_secs(60), what, |status| {
            node_status(status, 3).is_some_and(|node| node.storage_full) && leads(status, 3) == 0
        })
        .await
}

/// What a user of the full node 3 sees: writes refused at once with the
/// typed error (from the client and the CLI), reads served, and `cluster
/// status` saying why.
async fn check_full_node_answers(cluster: &Cluster, session: SessionId) -> anyhow::Result<()> {
    let only_node3 = cluster.client_for(3)?;
    let started = Instant::now();
    match only_node3.append(session, EventPayload::user_text("to the full node")).await {
        Err(ClientError::Api(ApiError::StorageFull { node: 3, floor_bytes, .. })) if floor_bytes == FLOOR => {}
        other => bail!("an append to the full node answered {other:?}"),
    }
    ensure!(started.elapsed() < Duration::from_secs(5), "the refusal took {:?}", started.elapsed());
    let output = cluster
        .command()?
        .args(["session", "send", "--addr", &cluster.nodes[2].addr])
        .arg(session.to_string())
        .args(["--text", "from the CLI"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success() && stderr.contains("storage full"), "CLI on the full node: {stderr}");
    ensure!(!only_node3.read_all(session, Consistency::Leader).await?.is_empty(), "node 3 served no events");
    let output = cluster.command()?.args(["cluster", "status", "--addr", &cluster.nodes[2].addr]).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(stdout.contains("storage-full") && stdout.contains("under its free-space floor"), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_on_that_node_only_and_it_resumes_when_space_is_freed() -> anyhow::Result<()> {
    let floor = format!("{}MiB", FLOOR / MIB);
    let mut cluster =
        Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "8", "--min-free-disk", &floor]).await?;
    let disk = move_onto_tmpfs(&mut cluster, 3, 256).await?;
    let session = cluster.client()?.create_session().await?.session_id;
    let appender = Appender::start(cluster.client()?, session);
    make_node3_lead(&mut cluster).await?;

    let led = leads(&cluster.status().await?, 3);
    ensure!(led > 0, "node 3 leads no group before its disk fills: the test would not show a step-down");
    // Fill node 3's disk to half its floor.
    let free = disk.free_bytes()?;
    ensure!(free > FLOOR * 2, "the tmpfs has only {free} bytes free before the fill");
    let ballast = disk.path.join("ballast");
    let fill = Command::new("fallocate").args(["-l", &(free - FLOOR / 2).to_string()]).arg(&ballast).status()?;
    ensure!(fill.success(), "cannot fill the tmpfs");
    let filled_at = Instant::now();
    let status = wait_full(&cluster, "node 3 to report its disk full and lead nothing").await?;
    let noticed = filled_at.elapsed();
    let node3 = node_status(&status, 3).context("node 3's report")?;
    ensure!(node3.disk_floor_bytes == FLOOR, "{node3:?}");
    ensure!(node3.disk_free_bytes.is_some_and(|free| free < FLOOR), "{node3:?}");
    check_full_node_answers(&cluster, session).await?;

    // The other replicas keep committing meanwhile, and node 3 stays up.
    let before = appender.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = appender.count() - before;
    ensure!(during > 10, "only {during} appends committed in 2 s while node 3 was full");
    ensure!(cluster.try_exit_status(3)?.is_none(), "node 3 exited:\n{}", cluster.nodes[2].log_tail());

    // Killed and restarted while its disk is still full, it comes up taking
    // no writes (no crash loop) and serves reads.
    cluster.kill(3)?;
    cluster.restart(3)?;
    wait_full(&cluster, "node 3 to come back full").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(cluster.try_exit_status(3)?.is_none(), "node 3 exited on a full disk:\n{}", cluster.nodes[2].log_tail());
    check_full_node_answers(&cluster, session).await?;

    // Space comes back: node 3 takes writes again and catches up on its own.
    std::fs::remove_file(&ballast)?;
    let freed_at = Instant::now();
    cluster
        .wait_for(Duration::from_secs(30), "node 3 to take writes again", |status| {
            node_status(status, 3).is_some_and(|node| !node.storage_full)
        })
        .await?;
    let resumed = freed_at.elapsed();
    let mut acknowledged = vec![cluster.client_for(3)?.append(session, EventPayload::user_text("after")).await?];
    tokio::time::sleep(Duration::from_secs(1)).await;
    acknowledged.extend(appender.stop().await?);
    eprintln!(
        "disk full noticed after {noticed:?}; writes resumed {resumed:?} after the space was freed; {} appends",
        acknowledged.len()
    );
    acknowledged.sort_unstable();
    assert_every_replica_holds(&cluster, session, &acknowledged).await
}
