//! Malformed, oversized, truncated and mis-versioned input sent to a node's
//! port gets a typed error or a closed stream, and the node keeps serving.

use std::time::Duration;

use agentd_client::{Client, ClientError};
use agentd_node::{Bootstrap, Node, NodeOptions, RaftTuning};
use agentd_protocol::api::{ClientRequest, ClientResponse, Request, RequestV1};
use agentd_protocol::event::{ContentBlock, EventPayload};
use agentd_protocol::ids::{EventId, SessionId};
use agentd_protocol::limits::{CLIENT_FRAME_BYTES_MAX, EVENT_PAYLOAD_BYTES_MAX, TEXT_BYTES_MAX};
use agentd_protocol::{frame, ApiError, CLIENT_ALPN, CLUSTER_ALPN};
use agentd_transport::tls::{client_config, ServerTrust, SERVER_NAME};

async fn raw_connection(addr: std::net::SocketAddr, alpn: &[u8]) -> anyhow::Result<quinn::Connection> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client_config(ServerTrust::InsecureLoopback, alpn)?);
    Ok(endpoint.connect(addr, SERVER_NAME)?.await?)
}

/// Sends raw bytes on a new stream and returns the decoded answer, if any.
async fn send_raw(connection: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Option<ClientResponse>> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        agentd_transport::wire::read_frame(&mut recv, CLIENT_FRAME_BYTES_MAX),
    )
    .await?;
    Ok(answer.ok().flatten())
}

fn expect_error(answer: Option<ClientResponse>, what: &str) -> ApiError {
    match answer {
        Some(ClientResponse::Error(error)) => error,
        other => panic!("{what}: expected a typed error, got {other:?}"),
    }
}

/// Each client limit at its edge: at the limit accepted, past it refused at
/// once with a typed, permanent error (never retried).
async fn limits_at_their_edge(client: &Client, session: SessionId) -> anyhow::Result<()> {
    // A message's text at the limit is accepted, one byte more is refused.
    client.append(session, EventPayload::user_text("x".repeat(TEXT_BYTES_MAX))).await?;
    let long = client.append(session, EventPayload::user_text("x".repeat(TEXT_BYTES_MAX + 1))).await;
    assert!(
        matches!(&long, Err(ClientError::Api(ApiError::InvalidRequest { message })) if message.contains(&TEXT_BYTES_MAX.to_string())),
        "{long:?}"
    );
    // A secret value at its limit is stored; past it, and past the frame
    // limit, it is refused at once as a permanent error, never retried.
    let put = |size: usize| client.put_secret(None, "limits".into(), "token".into(), "s".repeat(size));
    put(TEXT_BYTES_MAX).await?;
    let long = put(TEXT_BYTES_MAX + 1).await;
    assert!(matches!(long, Err(ClientError::Api(ApiError::InvalidRequest { .. }))), "{long:?}");
    let huge = put(100 * 1024 * 1024).await;
    assert!(matches!(huge, Err(ClientError::Api(ApiError::PayloadTooLarge { .. }))), "{huge:?}");
    // Past the payload limit by sheer number of blocks.
    let blocks = vec![ContentBlock::text(""); EVENT_PAYLOAD_BYTES_MAX / 2 + 1];
    let huge = client.append(session, EventPayload::UserMessage { content: blocks }).await;
    assert!(matches!(huge, Err(ClientError::Api(ApiError::PayloadTooLarge { .. }))), "{huge:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = agentd_tests::free_port();
    let node = Node::start(NodeOptions {
        node_id: 1,
        listen: format!("127.0.0.1:{port}").parse()?,
        advertise: None,
        data_dir: dir.path().join("n1"),
        bootstrap: Bootstrap::Init { shards: 4, replication_factor: 1, credentials: None },
        raft: RaftTuning::default(),
        sandbox_dir: None,
        sandbox_idle: agentd_node::options::SANDBOX_IDLE_DEFAULT,
        client_idle: std::time::Duration::from_secs(agentd_protocol::limits::CLIENT_IDLE_SECS_DEFAULT),
        min_free_disk: agentd_protocol::limits::DISK_FREE_FLOOR_DEFAULT,
        requests_in_flight_max: agentd_protocol::limits::REQUESTS_IN_FLIGHT_MAX,
        models: Default::default(),
    })
    .await?;
    let addr = node.local_addr()?;
    let admin_key = std::fs::read_to_string(dir.path().join("n1").join("admin-key"))?.trim().to_string();
    let connection = raw_connection(addr, CLIENT_ALPN).await?;

    // A body that is not a request.
    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 5]);
    assert!(matches!(expect_error(send_raw(&connection, &garbage).await?, "garbage"), ApiError::Malformed { .. }));

    // A header announcing more than the frame limit.
    let oversized = ((CLIENT_FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    assert!(matches!(
        expect_error(send_raw(&connection, &oversized).await?, "oversized"),
        ApiError::PayloadTooLarge { .. }
    ));

    // A stream that ends inside a frame, and one that ends before any frame.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0u8; 10]);
    assert!(matches!(expect_error(send_raw(&connection, &truncated).await?, "truncated"), ApiError::Malformed { .. }));
    assert!(matches!(expect_error(send_raw(&connection, &[]).await?, "empty"), ApiError::Malformed { .. }));
    assert!(matches!(expect_error(send_raw(&connection, &[0, 0]).await?, "half header"), ApiError::Malformed { .. }));

    versions_and_keys_are_checked(&connection, &admin_key).await?;

    // Well-formed requests that the API refuses.
    let client = Client::for_addrs(vec![addr.to_string()], None)?.with_api_key(admin_key.clone());
    let unknown = SessionId::from_random(7);
    let refused = client.append(unknown, EventPayload::user_text("hello")).await;
    assert!(matches!(refused, Err(ClientError::Api(ApiError::NotFound { .. }))), "{refused:?}");
    let session = client.create_session().await?.session_id;
    let forged = client
        .append_with_id(
            session,
            EventId::from_random(1),
            EventPayload::AgentMessage { content: vec![ContentBlock::text("hi")] },
        )
        .await;
    assert!(matches!(forged, Err(ClientError::Api(ApiError::InvalidRequest { .. }))), "{forged:?}");
    limits_at_their_edge(&client, session).await?;

    // Cluster traffic without a node certificate is closed, not served. The
    // server may close the connection before, during or after the stream
    // is opened; every one of those is a refusal, only an answer is not.
    let refused = async {
        let intruder = raw_connection(addr, CLUSTER_ALPN).await?;
        let (mut send, mut recv) = intruder.open_bi().await?;
        let _ = send.write_all(&garbage).await;
        let _ = send.finish();
        Ok::<_, anyhow::Error>(recv.read_to_end(1024).await?)
    };
    let read = tokio::time::timeout(Duration::from_secs(10), refused).await?;
    assert!(read.is_err(), "a certificate-less cluster connection must be closed, got {read:?}");

    // An unknown ALPN does not even complete the handshake.
    assert!(raw_connection(addr, b"http/1.1").await.is_err());

    // The node still serves well-formed requests on the same connection.
    // Seq 1 is the message at the text limit.
    assert_eq!(client.append(session, EventPayload::user_text("still here")).await?, 2);
    let again = send_raw(
        &connection,
        &frame::encode_frame(
            &Request::new(admin_key.clone(), ClientRequest::GetSession { session_id: session }),
            CLIENT_FRAME_BYTES_MAX,
        )?,
    )
    .await?;
    assert!(matches!(again, Some(ClientResponse::Session(info)) if info.last_seq == 2));
    node.shutdown().await;
    Ok(())
}

/// Requests of another protocol version get `UnsupportedVersion`; requests
/// without a valid key get `Unauthenticated`.
async fn versions_and_keys_are_checked(connection: &quinn::Connection, admin_key: &str) -> anyhow::Result<()> {
    // An unknown protocol version.
    let future = Request { version: 99, api_key: admin_key.to_string(), body: ClientRequest::ClusterStatus };
    let future = frame::encode_frame(&future, CLIENT_FRAME_BYTES_MAX)?;
    assert!(matches!(
        expect_error(send_raw(connection, &future).await?, "version"),
        ApiError::UnsupportedVersion { requested: 99, .. }
    ));
    // A client of protocol version 1 (no key in its requests) is told to upgrade.
    let old =
        frame::encode_frame(&RequestV1 { version: 1, body: ClientRequest::ClusterStatus }, CLIENT_FRAME_BYTES_MAX)?;
    assert!(matches!(
        expect_error(send_raw(connection, &old).await?, "version 1"),
        ApiError::UnsupportedVersion { requested: 1, .. }
    ));
    // No key, a malformed one, one that guesses the secret: each refused.
    for (what, key) in [
        ("no key", String::new()),
        ("malformed key", "sk-not-a-key".to_string()),
        (
            "wrong secret",
            format!("{}{}", &admin_key[..admin_key.len() - 1], if admin_key.ends_with('0') { "1" } else { "0" }),
        ),
    ] {
        let request = frame::encode_frame(&Request::new(key, ClientRequest::ClusterStatus), CLIENT_FRAME_BYTES_MAX)?;
        let error = expect_error(send_raw(connection, &request).await?, what);
        assert!(matches!(error, ApiError::Unauthenticated { .. }), "{what}: {error:?}");
    }
    Ok(())
}
