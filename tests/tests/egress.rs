//! An environment's egress allowlist, end to end on a real node: created with
//! `agentd environment create --allow-host`, enforced for a session's tools
//! by the sandbox's own network namespace and egress proxy.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::EnvironmentId;
use agentd_tests::Cluster;
use serde_json::json;

/// A host HTTP server on 127.0.0.2 (which no sandbox's own loopback answers
/// on) that answers `hello`; counts connections.
fn serve_hello() -> (u16, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.read(&mut [0u8; 1024]);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    (port, connections)
}

fn agentd(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    cluster.command().expect("the admin key").args(args).output().expect("run agentd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reaches_only_the_hosts_its_environment_allows() -> anyhow::Result<()> {
    let (listed, listed_connections) = serve_hello();
    let (unlisted, unlisted_connections) = serve_hello();
    let scripts = tempfile::tempdir()?;
    let command = format!(
        "curl -sS http://127.0.0.2:{listed}/; echo; \
         curl -sS -o /dev/null -w 'unlisted %{{http_code}}\\n' http://127.0.0.2:{unlisted}/; \
         curl -sS --noproxy '*' --max-time 5 http://127.0.0.2:{listed}/ || echo direct refused"
    );
    let script = json!([
        [{"type": "tool_use", "name": "bash", "input": {"command": command}}],
        [{"type": "text", "text": "fetched"}],
    ]);
    let sandboxes = tempfile::tempdir()?;
    let cluster = Cluster::one_node(agentd_tests::agentd_binary!(), scripts.path(), sandboxes.path(), &[]).await?;
    let addr = cluster.addrs()[0].clone();

    // A bad entry is refused with the reason, before anything is stored.
    let refused =
        agentd(&cluster, &["environment", "create", "--addr", &addr, "--name", "bad", "--allow-host", "x.com/path"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("an entry names a host, not a path"), "{stderr}");
    let both = agentd(
        &cluster,
        &["environment", "create", "--addr", &addr, "--name", "b", "--network", "--allow-host", "x.com"],
    );
    assert!(!both.status.success(), "--network and --allow-host together were accepted");

    let allow = format!("127.0.0.2:{listed}");
    let created =
        agentd(&cluster, &["environment", "create", "--addr", &addr, "--name", "limited", "--allow-host", &allow]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let environment_id: EnvironmentId = String::from_utf8(created.stdout)?.trim().parse()?;

    let client = cluster.client()?;
    let agent = agentd_tests::scripted_bash_agent(&client, scripts.path(), "egress", script).await?;
    let session = client.create_session_with(Some(agent), Some(environment_id)).await?.session_id;
    client.append(session, EventPayload::user_text("fetch")).await?;
    let result = agentd_tests::tool_results(&client, session, 1).await.concat();
    assert!(result.starts_with("hello\nunlisted 403\n"), "{result}");
    assert!(result.contains("direct refused"), "{result}");
    assert_eq!(listed_connections.load(Ordering::SeqCst), 1, "{result}");
    assert_eq!(unlisted_connections.load(Ordering::SeqCst), 0, "{result}");
    Ok(())
}
