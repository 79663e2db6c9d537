//! TLS identities over real quinn endpoints on loopback.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use agentd_protocol::{CLIENT_ALPN, CLUSTER_ALPN, JOIN_ALPN};
use agentd_transport::tls::{client_config, peer_node_id, ClusterCa, NodeIdentity, ServerTrust, SERVER_NAME};
use agentd_transport::Error;

/// Bounds every network wait, so that a broken handshake fails the test
/// instead of hanging it.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

const LOOPBACK: &str = "127.0.0.1";

/// What the server saw of one accepted connection.
#[derive(Debug)]
struct Accepted {
    alpn: Option<Vec<u8>>,
    peer_node_id: Option<u64>,
}

/// A node's endpoint that accepts one connection, echoes one bidi stream if
/// the client opens one, and reports what it saw (or the handshake error).
struct Server {
    endpoint: quinn::Endpoint,
    accepted: tokio::task::JoinHandle<Result<Accepted, quinn::ConnectionError>>,
}

impl Server {
    fn start(identity: &NodeIdentity) -> Server {
        let address: SocketAddr = format!("{LOOPBACK}:0").parse().unwrap();
        let endpoint = quinn::Endpoint::server(identity.server_config().unwrap(), address).unwrap();
        let accepting = endpoint.clone();
        let accepted = tokio::spawn(async move {
            let incoming = accepting.accept().await.expect("endpoint closed");
            let connection = incoming.await?;
            let alpn = connection
                .handshake_data()
                .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|data| data.protocol);
            let peer_node_id = peer_node_id(&connection);
            tokio::spawn(echo_one_stream(connection));
            Ok(Accepted { alpn, peer_node_id })
        });
        Server { endpoint, accepted }
    }

    fn address(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    async fn accepted(self) -> Result<Accepted, quinn::ConnectionError> {
        tokio::time::timeout(STEP_TIMEOUT, self.accepted).await.expect("server timed out").unwrap()
    }
}

async fn echo_one_stream(connection: quinn::Connection) {
    let Ok((mut send, mut receive)) = connection.accept_bi().await else {
        return;
    };
    let Ok(bytes) = receive.read_to_end(64 * 1024).await else {
        return;
    };
    if send.write_all(&bytes).await.is_ok() && send.finish().is_ok() {
        // Wait for the client to read the echo before the connection drops.
        let _ = connection.closed().await;
    }
}

async fn connect(
    server: &Server,
    config: quinn::ClientConfig,
    server_name: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client(format!("{LOOPBACK}:0").parse().unwrap()).unwrap();
    let connecting = endpoint.connect_with(config, server.address(), server_name).unwrap();
    tokio::time::timeout(STEP_TIMEOUT, connecting).await.expect("client timed out")
}

/// True when the connection is rejected, whether during the client's
/// handshake or right after it: in TLS 1.3 the client finishes its side of
/// the handshake before the server has checked the client certificate.
async fn is_rejected(connection: Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    match connection {
        Err(_) => true,
        Ok(connection) => {
            let reason = tokio::time::timeout(STEP_TIMEOUT, connection.closed())
                .await
                .expect("rejected connection was not closed");
            matches!(reason, quinn::ConnectionError::ConnectionClosed(_))
        }
    }
}

async fn echo(connection: &quinn::Connection, bytes: &[u8]) -> Vec<u8> {
    let (mut send, mut receive) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    tokio::time::timeout(STEP_TIMEOUT, receive.read_to_end(64 * 1024)).await.expect("echo timed out").unwrap()
}

#[tokio::test]
async fn nodes_connect_with_mutual_tls_and_see_each_others_ids() {
    let ca = ClusterCa::generate().unwrap();
    let node_a = ca.issue_node(1, LOOPBACK).unwrap();
    let node_b = ca.issue_node(2, "node-b.example").unwrap();
    assert_eq!(node_a.node_id().unwrap(), 1);
    assert_eq!(node_b.node_id().unwrap(), 2);

    let server = Server::start(&node_a);
    let connection = connect(&server, node_b.cluster_client_config().unwrap(), SERVER_NAME).await.unwrap();
    assert_eq!(peer_node_id(&connection), Some(1));
    assert_eq!(echo(&connection, b"append entries").await, b"append entries");

    let accepted = server.accepted().await.unwrap();
    assert_eq!(accepted.peer_node_id, Some(2));
    assert_eq!(accepted.alpn.as_deref(), Some(CLUSTER_ALPN));
}

#[tokio::test]
async fn client_without_certificate_connects_with_ca_trust() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(7, LOOPBACK).unwrap();
    let server = Server::start(&node);

    let config = client_config(ServerTrust::Ca(ca.cert_pem()), CLIENT_ALPN).unwrap();
    let connection = connect(&server, config, SERVER_NAME).await.unwrap();
    assert_eq!(peer_node_id(&connection), Some(7));
    assert_eq!(echo(&connection, b"status").await, b"status");

    let accepted = server.accepted().await.unwrap();
    assert_eq!(accepted.peer_node_id, None);
    assert_eq!(accepted.alpn.as_deref(), Some(CLIENT_ALPN));
}

#[tokio::test]
async fn node_certificate_names_its_ip_host() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(3, LOOPBACK).unwrap();
    let server = Server::start(&node);

    // Dialling by IP works because the host was written as an IP SAN.
    let config = client_config(ServerTrust::Ca(ca.cert_pem()), CLIENT_ALPN).unwrap();
    let connection = connect(&server, config, LOOPBACK).await;
    assert!(connection.is_ok(), "{connection:?}");
}

#[tokio::test]
async fn joining_node_trusts_the_ca_fingerprint() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let server = Server::start(&node);

    // Upper case is accepted: a fingerprint may have been copied by hand.
    let fingerprint = ca.fingerprint().to_uppercase();
    let config = client_config(ServerTrust::Fingerprint(fingerprint), JOIN_ALPN).unwrap();
    let connection = connect(&server, config, SERVER_NAME).await.unwrap();
    assert_eq!(echo(&connection, b"join").await, b"join");

    let accepted = server.accepted().await.unwrap();
    assert_eq!(accepted.alpn.as_deref(), Some(JOIN_ALPN));
    assert_eq!(accepted.peer_node_id, None);
}

#[tokio::test]
async fn joining_node_rejects_a_wrong_fingerprint() {
    let ca = ClusterCa::generate().unwrap();
    let other_ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let server = Server::start(&node);

    let config = client_config(ServerTrust::Fingerprint(other_ca.fingerprint()), JOIN_ALPN).unwrap();
    assert!(connect(&server, config, SERVER_NAME).await.is_err());
    assert!(server.accepted().await.is_err());
}

#[tokio::test]
async fn fingerprint_does_not_vouch_for_another_server_name() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let server = Server::start(&node);

    let config = client_config(ServerTrust::Fingerprint(ca.fingerprint()), JOIN_ALPN).unwrap();
    assert!(connect(&server, config, "elsewhere.example").await.is_err());
}

#[test]
fn malformed_fingerprint_is_an_error() {
    for fingerprint in ["", "abc", &"zz".repeat(32), &"é".repeat(32)] {
        let result = client_config(ServerTrust::Fingerprint(fingerprint.to_owned()), JOIN_ALPN);
        assert!(matches!(result, Err(Error::Certificate(_))), "{fingerprint:?}");
    }
}

#[tokio::test]
async fn node_of_another_cluster_is_rejected() {
    let ca = ClusterCa::generate().unwrap();
    let intruder_ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let intruder = intruder_ca.issue_node(2, LOOPBACK).unwrap();
    let server = Server::start(&node);

    // The intruder trusts our CA, so only the server's check of the client
    // certificate stands in its way.
    let intruder = NodeIdentity { ca_cert_pem: ca.cert_pem(), ..intruder };
    let connection = connect(&server, intruder.cluster_client_config().unwrap(), SERVER_NAME).await;
    assert!(is_rejected(connection).await);
    assert!(server.accepted().await.is_err());
}

#[tokio::test]
async fn ca_trust_rejects_a_server_of_another_cluster() {
    let ca = ClusterCa::generate().unwrap();
    let other_ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let server = Server::start(&node);

    let config = client_config(ServerTrust::Ca(other_ca.cert_pem()), CLIENT_ALPN).unwrap();
    assert!(connect(&server, config, SERVER_NAME).await.is_err());
    assert!(server.accepted().await.is_err());
}

#[tokio::test]
async fn insecure_loopback_trust_accepts_any_server() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let server = Server::start(&node);

    let config = client_config(ServerTrust::InsecureLoopback, CLIENT_ALPN).unwrap();
    let connection = connect(&server, config, "any.name.example").await.unwrap();
    assert_eq!(echo(&connection, b"dev").await, b"dev");
    assert!(server.accepted().await.is_ok());
}

#[tokio::test]
async fn unknown_alpn_is_rejected() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let server = Server::start(&node);

    let config = client_config(ServerTrust::Ca(ca.cert_pem()), b"not-agentd").unwrap();
    assert!(connect(&server, config, SERVER_NAME).await.is_err());
}

#[tokio::test]
async fn ca_loaded_from_pem_issues_trusted_nodes() {
    let ca = ClusterCa::generate().unwrap();
    let loaded = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());

    // A node issued by the loaded CA is trusted by clients of the original.
    let node = loaded.issue_node(9, LOOPBACK).unwrap();
    let server = Server::start(&node);
    let config = client_config(ServerTrust::Ca(ca.cert_pem()), CLIENT_ALPN).unwrap();
    let connection = connect(&server, config, SERVER_NAME).await.unwrap();
    assert_eq!(peer_node_id(&connection), Some(9));
}

#[test]
fn fingerprint_is_lowercase_sha256_hex() {
    let fingerprint = ClusterCa::generate().unwrap().fingerprint();
    assert_eq!(fingerprint.len(), 64);
    assert!(fingerprint.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)));
}

#[test]
fn bad_ca_pem_is_an_error() {
    let ca = ClusterCa::generate().unwrap();
    let other_ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let garbage = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    let not_a_certificate = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
    let two_certificates = format!("{}{}", ca.cert_pem(), other_ca.cert_pem());
    let certificate_and_key = format!("{}{}", ca.cert_pem(), ca.key_pem());

    let cases: [(&str, &str, &str); 8] = [
        ("garbage certificate", garbage, &ca.key_pem()),
        ("DER that is no certificate", not_a_certificate, &ca.key_pem()),
        ("empty certificate", "", &ca.key_pem()),
        ("garbage key", &ca.cert_pem(), "not a key"),
        ("mismatched key", &ca.cert_pem(), &other_ca.key_pem()),
        ("node certificate", &node.cert_pem, &node.key_pem),
        ("two certificates", &two_certificates, &ca.key_pem()),
        // The CA PEM is handed out to everyone, so a key in it is refused.
        ("certificate and key", &certificate_and_key, &ca.key_pem()),
    ];
    for (case, cert_pem, key_pem) in cases {
        let result = ClusterCa::from_pem(cert_pem, key_pem);
        assert!(matches!(result, Err(Error::Certificate(_))), "{case}: {result:?}");
    }
}

#[test]
fn bad_identity_pem_is_an_error() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue_node(1, LOOPBACK).unwrap();
    let bad_cert = NodeIdentity { cert_pem: "garbage".to_owned(), ..node.clone() };
    let bad_key = NodeIdentity { key_pem: "garbage".to_owned(), ..node.clone() };
    let bad_ca = NodeIdentity { ca_cert_pem: String::new(), ..node };
    for identity in [&bad_cert, &bad_key, &bad_ca] {
        assert!(identity.server_config().is_err(), "{identity:?}");
        assert!(identity.cluster_client_config().is_err(), "{identity:?}");
    }
    assert!(bad_cert.node_id().is_err());
    assert!(client_config(ServerTrust::Ca("garbage".to_owned()), CLIENT_ALPN).is_err());
}

#[test]
fn node_host_must_be_an_ip_or_dns_name() {
    let ca = ClusterCa::generate().unwrap();
    assert!(ca.issue_node(1, "").is_err());
    assert!(ca.issue_node(1, "not a host").is_err());
    assert!(ca.issue_node(1, "::1").is_ok());
    assert!(ca.issue_node(u64::MAX, "node.example").unwrap().node_id().unwrap() == u64::MAX);
}

#[test]
fn hands_certificates_name_their_sandbox_and_refuse_bad_names() {
    let ca = ClusterCa::generate().unwrap();
    let identities = ca.issue_hands("vm-0123abcd").unwrap();
    assert_eq!(identities.server_name, "vm-0123abcd.hands.agentd.cluster");
    assert_eq!(identities.server_name, agentd_transport::tls::hands_server_name("vm-0123abcd"));
    assert_ne!(identities.agent.cert_pem, identities.node.cert_pem);
    identities.agent.agent_server_config().unwrap();
    identities.node.node_client_config().unwrap();
    for bad in ["", "-vm", "vm-", "VM", "vm.1", "a b", &"x".repeat(64)] {
        assert!(ca.issue_hands(bad).is_err(), "{bad:?} is not a DNS label");
    }
}
