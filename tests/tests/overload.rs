//! A node driven far past the requests it admits at once stays up: what
//! does not fit is refused at once with a typed `Overloaded` and a retry
//! hint (QUIC) or a 529 `overloaded_error` with `retry-after` (HTTP, what
//! the SDKs retry), what it admits commits, a well-behaved client that
//! honours the hint never fails (it may wait: the limit is one for the
//! node, not a share per client, so clients that ignore the hint can keep
//! it waiting until they stop), and every acknowledged event is on every
//! replica.
//!
//! The node's limit is lowered (`--max-requests-in-flight 8`) so that a
//! test-sized load is far past it.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentd_client::{Client, ClientError};
use agentd_protocol::api::{ClientRequest, ClientResponse};
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::EventId;
use agentd_protocol::ApiError;
use agentd_tests::{assert_every_replica_holds, Appender, Cluster};
use anyhow::ensure;

/// What the flood saw.
#[derive(Default)]
struct Counts {
    admitted: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
    /// The first answer that was neither, for the failure message.
    first_other: std::sync::Mutex<Option<String>>,
}

/// Keeps `tasks` appends in flight against node 1 (once each, no retries)
/// until `stop`, from `connections` connections.
fn flood(cluster: &Cluster, connections: usize, tasks: usize, stop: Arc<AtomicBool>) -> anyhow::Result<Arc<Counts>> {
    let counts = Arc::new(Counts::default());
    let clients: Vec<Arc<Client>> =
        (0..connections).map(|_| cluster.client_for(1).map(Arc::new)).collect::<anyhow::Result<_>>()?;
    for task in 0..tasks {
        let (client, counts, stop) = (clients[task % connections].clone(), counts.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(session) = client.create_session().await else { return };
            let mut index = 0u128;
            while !stop.load(Ordering::Relaxed) {
                index += 1;
                let payload = EventPayload::user_text(format!("flood {index}"));
                let request = ClientRequest::Append {
                    session_id: session.session_id,
                    event_id: EventId::from_random(index),
                    payload,
                };
                match client.call_once(request).await {
                    Ok(ClientResponse::Appended(_)) => counts.admitted.fetch_add(1, Ordering::Relaxed),
                    Err(ClientError::Api(ApiError::Overloaded { retry_after_ms })) if retry_after_ms > 0 => {
                        // Straight back, as a client that ignores the hint
                        // would: the node must hold anyway.
                        counts.refused.fetch_add(1, Ordering::Relaxed)
                    }
                    other => {
                        agentd_protocol::sync::lock(&counts.first_other).get_or_insert_with(|| format!("{other:?}"));
                        counts.other.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    Ok(counts)
}

/// GETs the agents list over HTTP until one answer is a 529; answers its
/// status line and headers.
fn http_overloaded(url: &str, api_key: &str) -> anyhow::Result<Option<String>> {
    for _ in 0..200 {
        let output = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "-H", &format!("x-api-key: {api_key}")])
            .arg(format!("{url}/v1/agents"))
            .output()?;
        let headers = String::from_utf8_lossy(&output.stdout).to_string();
        if headers.starts_with("HTTP/1.1 529") {
            return Ok(Some(headers));
        }
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_limit_a_node_refuses_at_once_and_keeps_serving() -> anyhow::Result<()> {
    let args = ["--shards", "4", "--max-requests-in-flight", "8"];
    let (cluster, urls) = Cluster::start_with_http(agentd_tests::agentd_binary!(), 3, &args).await?;
    let session = cluster.client()?.create_session().await?.session_id;
    // A well-behaved client, through node 1 only: it retries a refusal
    // after the hinted pause, and must never give up.
    let appender = Appender::start(cluster.client_for(1)?, session);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = flood(&cluster, 8, 200, stop.clone())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let headers = http_overloaded(&urls[0], &cluster.admin_key()?)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (admitted, refused, other) = (
        counts.admitted.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed),
    );
    eprintln!("flood: {admitted} admitted, {refused} refused as overloaded, {other} other answers");
    ensure!(admitted > 0, "the node admitted nothing under the flood");
    ensure!(refused > 0, "the node refused nothing past its limit");
    let first_other = agentd_protocol::sync::lock(&counts.first_other).clone().unwrap_or_default();
    ensure!(other == 0, "{other} answers were neither an append nor an Overloaded refusal, the first: {first_other}");
    let headers = headers.ok_or_else(|| anyhow::anyhow!("no HTTP request was refused with a 529"))?;
    let lower = headers.to_lowercase();
    ensure!(lower.contains("retry-after:") && lower.contains("retry-after-ms:"), "{headers}");

    // The node is up and serves as before.
    ensure!(cluster.nodes[0].is_running(), "node 1 fell over:\n{}", cluster.nodes[0].log_tail());
    cluster.client_for(1)?.append(session, EventPayload::user_text("after the flood")).await?;
    let acknowledged = appender.stop().await?;
    assert_every_replica_holds(&cluster, session, &acknowledged).await
}
