//! Embedding a node (issue 14): the example host program of `agentd-node`
//! (`node/examples/embedded.rs`) joins a cluster started with the `agentd`
//! program, serves a model of its own in process, leads a shard and runs a
//! session on it to the end; SIGTERM shuts it down cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentd_protocol::api::Consistency;
use agentd_protocol::event::{ContentBlock, EventPayload};
use agentd_protocol::ids::{GroupId, ShardId};
use agentd_tests::{free_port, leader_views, Cluster};
use anyhow::{bail, ensure};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_joins_a_cli_cluster_and_serves_its_own_model() -> anyhow::Result<()> {
    let cluster = Cluster::start(agentd_tests::agentd_binary!(), 1, &["--shards", "1", "--replication", "2"]).await?;
    let token = std::fs::read_to_string(cluster.nodes[0].data_dir.join("join-token"))?;
    let addr = format!("127.0.0.1:{}", free_port());
    let data_dir = cluster.dir.path().join("embedded");
    let stdout_path = cluster.dir.path().join("embedded.out");
    let mut host = Command::new(env!("CARGO_BIN_EXE_agentd-embedded"))
        .args(["--node-id", "2", "--listen", &addr, "--data-dir"])
        .arg(&data_dir)
        .args(["--join", &cluster.nodes[0].addr, "--token", token.trim()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(Stdio::inherit())
        .spawn()?;
    let printed = || std::fs::read_to_string(&stdout_path).unwrap_or_default();

    // It joins, and takes the shard's second replica.
    let shard = GroupId::Shard(ShardId(0));
    cluster
        .wait_for(Duration::from_secs(60), "the embedded node to replicate shard-0", |status| {
            leader_views(status).iter().any(|view| view.group == shard && view.voters == [1, 2])
        })
        .await?;
    ensure!(printed().contains("embedded: node 2 serving on"), "the host printed: {}", printed());
    // Its leadership of the shard puts the shard's sessions on its brain.
    let moved = cluster
        .command()?
        .args(["shard", "transfer-leader", "shard-0", "--to", "2", "--addr", &cluster.nodes[0].addr])
        .output()?;
    ensure!(moved.status.success(), "transfer-leader failed: {}", String::from_utf8_lossy(&moved.stderr));

    let client = cluster.client_of(vec![cluster.nodes[0].addr.clone(), addr.clone()])?;
    let spec = agentd_tests::plain_agent("shouter", "shout:v1");
    let agent = client.put_agent(None, spec).await?.id;
    let session = client.create_session_with(Some(agent), None).await?.session_id;
    client.append(session, EventPayload::user_text("hello from the host")).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = client.read_all(session, Consistency::Leader).await?;
        let answered = events.iter().any(|event| {
            matches!(&event.payload, EventPayload::AgentMessage { content }
                if content.iter().any(|ContentBlock::Text { text }| text == "HELLO FROM THE HOST"))
        });
        let idle = matches!(events.last().map(|event| &event.payload), Some(EventPayload::SessionStatusIdle { .. }));
        if answered && idle {
            break;
        }
        if Instant::now() > deadline {
            bail!("the in-process model did not answer: {events:#?}\n{}", cluster.log_tails());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: the host shuts the node down and exits 0.
    let signalled = Command::new("kill").args(["-TERM", &host.id().to_string()]).status()?;
    ensure!(signalled.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = host.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            host.kill()?;
            bail!("the host did not stop within 30 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(status.success(), "the host exited with {status}: {}", printed());
    ensure!(printed().contains("embedded: node stopped"), "the host printed: {}", printed());
    Ok(())
}
