//! The HTTP API's transport as curl sees it: HTTPS with the node's
//! certificate (`--http-tls-cert/--http-tls-key`), HTTP/2 by ALPN and by
//! prior knowledge, and HTTP/1.1; every answer carries a `request-id`, and
//! an error answers in the API's envelope.

use std::process::Command;

use agentd_tests::Cluster;
use serde_json::Value;

/// A free TCP port on loopback.
fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
    listener.local_addr().expect("local address").port()
}

/// Runs curl; returns (status line info written by -w, headers, body).
fn curl(args: &[&str]) -> (String, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let output = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("run curl (scripts/setup.sh installs it)");
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    (String::from_utf8_lossy(&output.stdout).into_owned(), read(&headers), read(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_https_and_http2_and_names_every_answer() -> anyhow::Result<()> {
    let tls = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let (cert, key) = (tls.path().join("cert.pem"), tls.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let (https_port, plain_port) = (free_tcp_port(), free_tcp_port());
    let https_listen = format!("127.0.0.1:{https_port}");
    let cert_arg = cert.display().to_string();
    let key_arg = key.display().to_string();
    let args = ["--shards", "2", "--http", &https_listen, "--http-tls-cert", &cert_arg, "--http-tls-key", &key_arg];
    let cluster = Cluster::start(agentd_tests::agentd_binary!(), 1, &args).await?;
    let auth = format!("x-api-key: {}", cluster.admin_key()?);
    let https = format!("https://127.0.0.1:{https_port}/v1/agents");

    // HTTPS verified against the node's certificate; HTTP/2 chosen by ALPN.
    let (status, headers, body) = curl(&["--cacert", &cert_arg, "--http2", "-H", &auth, &https]);
    assert_eq!(status, "200 2", "{headers}{body}");
    assert!(headers.to_lowercase().contains("request-id: req_"), "{headers}");
    let listed: Value = serde_json::from_str(&body)?;
    assert!(listed["data"].is_array(), "{body}");
    // HTTP/1.1 over TLS too.
    let (status, _, _) = curl(&["--cacert", &cert_arg, "--http1.1", "-H", &auth, &https]);
    assert_eq!(status, "200 1.1");
    // Without a key: 401 in the envelope, with the same request id as the header.
    let (status, headers, body) = curl(&["--cacert", &cert_arg, &https]);
    assert!(status.starts_with("401"), "{status}");
    let error: Value = serde_json::from_str(&body)?;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error");
    let request_id = error["request_id"].as_str().unwrap_or_default();
    assert!(!request_id.is_empty() && headers.contains(request_id), "{headers}{body}");
    drop(cluster);

    // Plain HTTP/2 by prior knowledge, on a node without TLS.
    let plain_listen = format!("127.0.0.1:{plain_port}");
    let cluster =
        Cluster::start(agentd_tests::agentd_binary!(), 1, &["--shards", "2", "--http", &plain_listen]).await?;
    let auth = format!("x-api-key: {}", cluster.admin_key()?);
    let plain = format!("http://127.0.0.1:{plain_port}/v1/environments");
    let (status, _, body) = curl(&["--http2-prior-knowledge", "-H", &auth, &plain]);
    assert_eq!(status, "200 2", "{body}");
    // An unknown route answers 404 in the envelope.
    let (status, _, body) = curl(&["-H", &auth, &format!("http://127.0.0.1:{plain_port}/v1/files")]);
    assert!(status.starts_with("404"), "{status}");
    assert_eq!(serde_json::from_str::<Value>(&body)?["error"]["type"], "not_found_error");
    Ok(())
}
