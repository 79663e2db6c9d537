//! Joining and restarting with bad input fails fast with a clear message,
//! and leaves the cluster serving.

use std::process::{Command, Output};
use std::time::Duration;

use agentd_tests::{free_port, Cluster};

fn start(args: &[&str]) -> Output {
    let mut child = Command::new(agentd_tests::agentd_binary!())
        .arg("start")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run agentd start");
    // Bad input must end the process on its own, quickly.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("agentd start {args:?} kept running on bad input");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

fn assert_fails_with(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected a failure, got success: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_joins_and_restarts_are_refused_clearly() -> anyhow::Result<()> {
    let cluster = Cluster::start(agentd_tests::agentd_binary!(), 1, &["--shards", "2"]).await?;
    let seed = cluster.addrs()[0].clone();
    let token = std::fs::read_to_string(cluster.nodes[0].data_dir.join("join-token"))?.trim().to_string();
    let (_, fingerprint) = token.rsplit_once('.').expect("token has a fingerprint");
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port());
    let data = |name: &str| dir.path().join(name).to_string_lossy().to_string();

    let wrong_secret = format!("agentd-join.00000000000000000000000000000000.{fingerprint}");
    let output = start(&[
        "--node-id",
        "2",
        "--listen",
        &listen,
        "--data-dir",
        &data("a"),
        "--join",
        &seed,
        "--token",
        &wrong_secret,
    ]);
    assert_fails_with(&output, "join token does not match");

    let wrong_ca = format!("agentd-join.abc.{}", "0".repeat(64));
    let output = start(&[
        "--node-id",
        "2",
        "--listen",
        &listen,
        "--data-dir",
        &data("b"),
        "--join",
        &seed,
        "--token",
        &wrong_ca,
    ]);
    assert_fails_with(&output, "cannot join");

    let output = start(&[
        "--node-id",
        "2",
        "--listen",
        &listen,
        "--data-dir",
        &data("c"),
        "--join",
        &seed,
        "--token",
        "nonsense",
    ]);
    assert_fails_with(&output, "malformed join token");

    // A member's id with an empty data directory: a node that lost its
    // data must not come back as the same voter.
    let output =
        start(&["--node-id", "1", "--listen", &listen, "--data-dir", &data("e"), "--join", &seed, "--token", &token]);
    assert_fails_with(&output, "already belongs to the member");

    let output = start(&["--node-id", "2", "--listen", &listen, "--data-dir", &data("d")]);
    assert_fails_with(&output, "is not initialised");

    let node1_data = cluster.nodes[0].data_dir.to_string_lossy().to_string();
    let output = start(&["--node-id", "7", "--listen", &listen, "--data-dir", &node1_data]);
    assert_fails_with(&output, "belongs to node 1");

    // None of it disturbed the cluster.
    let client = cluster.client()?;
    let session = client.create_session().await?.session_id;
    assert_eq!(client.append(session, agentd_protocol::event::EventPayload::user_text("still fine")).await?, 1);
    Ok(())
}

/// A node stopped after it got its certificate but before the cluster
/// admitted it asks again at its next start, with no bootstrap flags,
/// instead of waiting forever as a non-member. Here its admission waits
/// because its seed, node 2, is a follower whose metadata leader (node 1)
/// and third voter are down: nothing is proposed that could commit later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_cut_off_before_its_admission_resumes_at_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "2"]).await?;
    cluster.kill(1)?;
    cluster.kill(3)?;
    let id = cluster.join_new_node()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cluster.nodes[3].log_text().contains("admission pending") {
        assert!(std::time::Instant::now() < deadline, "node {id} never waited for admission:\n{}", cluster.log_tails());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.kill(id)?;
    let joining = cluster.nodes[3].data_dir.join("joining");
    assert!(joining.exists(), "{} records the pending join", joining.display());

    cluster.restart(1)?;
    cluster.restart(3)?;
    cluster.restart(id)?;
    cluster
        .wait_for(Duration::from_secs(120), "the cut-off node to be admitted", |status| {
            status.nodes.iter().any(|node| node.node_id == id && node.reachable)
        })
        .await?;
    assert!(cluster.nodes[3].log_text().contains("asking again"));
    assert!(!joining.exists(), "the admitted node forgot its pending join");
    Ok(())
}
