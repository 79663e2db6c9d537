//! A node whose RocksDB WAL or MANIFEST was damaged in the middle (a few
//! bytes changed while it was down) refuses to start with a message that
//! names the repair, instead of silently dropping entries it acknowledged
//! or reading wrong data; the other replicas keep serving every
//! acknowledged event.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd_protocol::api::Consistency;
use agentd_protocol::event::EventPayload;
use agentd_tests::Cluster;

/// The largest file of a node's store that `matches` (by file name).
fn largest_file(data_dir: &Path, matches: impl Fn(&str) -> bool) -> anyhow::Result<(PathBuf, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(data_dir.join("db"))? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(&matches) {
            files.push((entry.path(), entry.metadata()?.len()));
        }
    }
    files
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .ok_or_else(|| anyhow::anyhow!("no such file in {}", data_dir.display()))
}

/// The largest WAL file of a node's store.
fn largest_wal(data_dir: &Path) -> anyhow::Result<(PathBuf, u64)> {
    largest_file(data_dir, |name| name.ends_with(".log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_wal_is_refused_with_the_repair_and_nothing_acknowledged_is_lost() -> anyhow::Result<()> {
    // A WAL of more than a block, so that its middle is a record, not the tail.
    damaged_file_is_refused(largest_wal, 4096).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_is_refused_with_the_repair_and_nothing_acknowledged_is_lost() -> anyhow::Result<()> {
    damaged_file_is_refused(|data_dir| largest_file(data_dir, |name| name.starts_with("MANIFEST-")), 64).await
}

/// Damages the file `pick` chooses in node 3's store (longer than `min_len`
/// bytes) while it is down, and
/// checks that node 3 refuses to start, naming the repair, while the other
/// replicas serve every acknowledged event.
async fn damaged_file_is_refused(
    pick: impl Fn(&Path) -> anyhow::Result<(PathBuf, u64)>,
    min_len: u64,
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "1"]).await?;
    let client = cluster.client()?;
    let session = client.create_session().await?.session_id;
    let mut acknowledged = Vec::new();
    for index in 0..200 {
        acknowledged.push(client.append(session, EventPayload::user_text(format!("event {index}"))).await?);
    }
    cluster.wait_converged(Duration::from_secs(60)).await?;
    cluster.kill(3)?;

    // A few bytes changed in the middle of the file.
    let (damaged, len) = pick(&cluster.nodes[2].data_dir)?;
    assert!(len > min_len, "{} is only {len} bytes", damaged.display());
    let mut file = std::fs::OpenOptions::new().write(true).open(&damaged)?;
    file.seek(SeekFrom::Start(len / 2))?;
    file.write_all(&[0xa5; 16])?;
    file.sync_all()?;

    cluster.restart(3)?;
    let mut exited = None;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        exited = cluster.try_exit_status(3)?;
        if exited.is_some() {
            break;
        }
    }
    let log = cluster.nodes[2].log_text();
    let status = exited.ok_or_else(|| {
        anyhow::anyhow!("node 3 started on a damaged {}:\n{}", damaged.display(), cluster.nodes[2].log_tail())
    })?;
    assert!(!status.success(), "{status:?}");
    assert!(log.contains("is damaged") && log.contains("new --node-id"), "{log}");

    // The other replicas serve on, with everything acknowledged.
    acknowledged.push(client.append(session, EventPayload::user_text("after")).await?);
    let events = client.read_all(session, Consistency::Leader).await?;
    assert_eq!(events.iter().map(|event| event.seq).collect::<Vec<_>>(), acknowledged);
    Ok(())
}
