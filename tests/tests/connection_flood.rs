//! Connections that complete a handshake and then say nothing: past the
//! per-address cap new ones are closed at once while the client that was
//! already connected keeps working, and idle ones are closed.

use std::time::Duration;

use agentd_protocol::event::EventPayload;
use agentd_protocol::limits::CLIENT_CONNECTIONS_PER_ADDRESS_MAX;
use agentd_protocol::CLIENT_ALPN;
use agentd_tests::Cluster;
use agentd_transport::tls::{client_config, ServerTrust, SERVER_NAME};

/// How a connection ended, if it has: its application close code and reason.
fn closed(connection: &quinn::Connection) -> Option<(u64, String)> {
    match connection.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(close) => {
            Some((close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned()))
        }
        other => Some((0, other.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_is_capped_and_idle_ones_are_closed() -> anyhow::Result<()> {
    let cluster =
        Cluster::start(agentd_tests::agentd_binary!(), 1, &["--shards", "1", "--client-idle-secs", "3"]).await?;
    let addr: std::net::SocketAddr = cluster.addrs()[0].parse()?;
    let client = cluster.client()?;
    let session = client.create_session().await?.session_id;
    client.append(session, EventPayload::user_text("before")).await?;

    let mut flood = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    flood.set_default_client_config(client_config(ServerTrust::InsecureLoopback, CLIENT_ALPN)?);
    let attempts = CLIENT_CONNECTIONS_PER_ADDRESS_MAX + 50;
    let mut connections = Vec::new();
    for _ in 0..attempts {
        // Every handshake completes (the cap is checked once the ALPN is
        // known); those past it are closed right after.
        connections.push(flood.connect(addr, SERVER_NAME)?.await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused: Vec<(u64, String)> = connections.iter().filter_map(closed).collect();
    assert!(refused.len() >= 50, "only {} of {attempts} connections were closed: {refused:?}", refused.len());
    assert!(refused.iter().all(|(code, reason)| *code == 3 && reason.contains("too many")), "{refused:?}");

    // The client connected before the flood is served throughout.
    assert_eq!(client.append(session, EventPayload::user_text("during")).await?, 2);

    // Silent connections are closed once idle, which frees their slots.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let open = connections.iter().filter(|connection| closed(connection).is_none()).count();
    assert_eq!(open, 0, "silent connections still open after the idle timeout");
    let idle = connections.iter().filter_map(closed).filter(|(code, _)| *code == 4).count();
    assert!(idle >= CLIENT_CONNECTIONS_PER_ADDRESS_MAX - 10, "{idle} closed as idle");
    let fresh = cluster.client()?;
    assert_eq!(fresh.append(session, EventPayload::user_text("after")).await?, 3);
    // The first client's connection went idle too; it dials again by itself.
    assert_eq!(client.append(session, EventPayload::user_text("again")).await?, 4);
    Ok(())
}
