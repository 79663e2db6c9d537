//! Real QEMU microVMs running the real `agentd hands`: tools, confinement
//! (host files, network), contained fork bombs and memory exhaustion, limits.
//! Boots take seconds under TCG, so one VM serves every case that does not
//! need its own. Skipped, with the reason on stderr, only when QEMU, the
//! cloud kernel or busybox-static is missing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_actors::sandbox::{Limits, Network, Sandbox, SandboxError, ToolCall, ToolOutput};
use agentd_node::hands::microvm::{MicrovmImage, MicrovmPool, MicrovmSandbox, MICROVM_CACHE_DIR_DEFAULT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn image(test: &str) -> Option<MicrovmImage> {
    match MicrovmImage::prepare(&agentd_tests::agentd_binary!(), std::path::Path::new(MICROVM_CACHE_DIR_DEFAULT)).await
    {
        Ok(image) => Some(image),
        Err(SandboxError::Unavailable(reason)) => {
            eprintln!("skipped: {test}: {reason}");
            None
        }
        Err(error) => panic!("preparing the microvm image: {error}"),
    }
}

async fn call(sandbox: &MicrovmSandbox, name: &str, input: serde_json::Value, key: &str) -> ToolOutput {
    sandbox
        .execute(ToolCall {
            name: name.into(),
            input_json: input.to_string(),
            idempotency_key: key.into(),
            secrets: Vec::new(),
        })
        .await
        .expect("the sandbox answers")
}

async fn bash(sandbox: &MicrovmSandbox, command: &str, timeout_ms: u64) -> ToolOutput {
    call(sandbox, "bash", serde_json::json!({"command": command, "timeout_ms": timeout_ms}), "").await
}

/// Whether a guest can open a TCP connection to a listener on the host's loopback
/// (slirp maps 10.0.2.2 to it). Returns what the guest printed and whether the host accepted.
async fn guest_reaches_host(sandbox: &MicrovmSandbox) -> (ToolOutput, bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a listener");
    let port = listener.local_addr().expect("its address").port();
    let accepted = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(8), listener.accept()).await.is_ok_and(|accepted| accepted.is_ok())
    });
    let output = bash(sandbox, &format!("echo hi | nc -w 3 10.0.2.2 {port}; echo rc=$?"), 15_000).await;
    (output, accepted.await.expect("the listener task"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_runs_tools_confined_and_contains_abuse() {
    let Some(image) = image("a_microvm_runs_tools_confined_and_contains_abuse").await else { return };
    eprintln!("microvm accelerator: {}", image.accel().name());
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        wall_clock_ms: 20_000,
        output_bytes_max: 4_000,
        memory_bytes_max: 384 * 1024 * 1024,
        pids_max: 64,
        network: Network::None,
        ..Limits::default()
    };
    let booted = Instant::now();
    let sandbox = MicrovmSandbox::provision(dir.path().join("session"), limits, &image).await.expect("the VM boots");
    eprintln!("booted in {:?}", booted.elapsed());
    let qemu = sandbox.qemu_pid().await.expect("QEMU runs");
    sandbox.health().await.expect("a booted VM whose agent answers is healthy");

    tools_round_trip(&sandbox).await;
    the_guest_sees_no_host_file_no_network_and_no_agent_key(&sandbox).await;
    limits_and_abuse_end_the_tool_not_the_vm(&sandbox).await;
    a_repeated_idempotency_key_runs_once(&sandbox).await;
    a_vm_crash_fails_the_running_call_and_later_ones(&sandbox, qemu).await;
    destroy_ends_qemu_and_every_later_call(&sandbox, qemu).await;
}

/// Tools round trip: write, edit, bash (as uid 1000 on the cloud kernel) and grep.
async fn tools_round_trip(sandbox: &MicrovmSandbox) {
    let written = call(sandbox, "write", serde_json::json!({"file_path": "a.txt", "content": "one\ntwo\n"}), "").await;
    assert!(!written.is_error, "{written:?}");
    let edited = call(
        sandbox,
        "edit",
        serde_json::json!({"file_path": "a.txt", "old_string": "two", "new_string": "three"}),
        "",
    )
    .await;
    assert!(!edited.is_error, "{edited:?}");
    let shell = bash(sandbox, "cat /workspace/a.txt; id -u; uname -r", 20_000).await;
    let words: Vec<&str> = shell.content.split_whitespace().collect();
    assert_eq!(&words[..3], ["one", "three", "1000"], "{shell:?}");
    assert!(words[3].ends_with("-cloud-amd64"), "the guest runs the cloud kernel: {shell:?}");
    let grepped = call(sandbox, "grep", serde_json::json!({"pattern": "thr"}), "").await;
    assert!(grepped.content.contains("a.txt"), "{grepped:?}");
}

/// Confinement: a host file is invisible, there is no network, and the agent's key is root's.
async fn the_guest_sees_no_host_file_no_network_and_no_agent_key(sandbox: &MicrovmSandbox) {
    // A host file is invisible to the guest.
    let marker_dir = tempfile::tempdir().expect("a temporary directory");
    let secret = format!("host-only-{:016x}", rand::random::<u64>());
    let marker = marker_dir.path().join("marker.txt");
    std::fs::write(&marker, &secret).expect("write the marker");
    let looked = bash(
        sandbox,
        &format!("cat {} 2>&1; grep -rl {secret} / 2>/dev/null | head -3; true", marker.display()),
        20_000,
    )
    .await;
    assert!(!looked.content.contains(&secret) || looked.content.contains("grep -rl"), "{looked:?}");
    assert!(looked.content.contains("No such file"), "{looked:?}");
    let read = call(sandbox, "read", serde_json::json!({"file_path": marker.to_string_lossy()}), "").await;
    assert!(read.is_error && !read.content.contains(&secret), "{read:?}");

    // No network when the environment does not allow it.
    let (output, accepted) = guest_reaches_host(sandbox).await;
    assert!(!accepted, "the guest reached the host: {output:?}");
    assert!(!output.content.contains("rc=0"), "{output:?}");

    // The agent's key is root's; the tools run as uid 1000.
    let key = bash(sandbox, "cat /etc/agentd/agent.key 2>&1 | head -1", 20_000).await;
    assert!(!key.content.contains("PRIVATE KEY"), "{key:?}");
}

/// Limits: timeouts, output caps, a fork bomb and memory exhaustion end the tool; the VM stays.
async fn limits_and_abuse_end_the_tool_not_the_vm(sandbox: &MicrovmSandbox) {
    // Wall clock and output limits.
    let slow = bash(sandbox, "sleep 60", 1_000).await;
    assert!(slow.is_error && slow.content.contains("timed out"), "{slow:?}");
    let flood = bash(sandbox, "yes flood | head -c 1000000", 20_000).await;
    assert!(flood.content.len() < 4_500 && flood.content.contains("flood"), "{} bytes", flood.content.len());

    // A fork bomb is bounded by the process limit and ended by the timeout; the VM stays.
    let bomb = bash(sandbox, "bomb() { bomb | bomb & }; bomb; sleep 30", 5_000).await;
    eprintln!("fork bomb: {bomb:?}");
    assert!(bomb.is_error && bomb.content.contains("timed out"), "{bomb:?}");
    let after = bash(sandbox, "echo alive", 20_000).await;
    assert_eq!(after.content.trim(), "alive", "{after:?}");

    // Memory exhaustion kills the tool, not the agent.
    let hog = bash(sandbox, "tail /dev/zero && echo survived", 20_000).await;
    eprintln!("memory hog: {hog:?}");
    assert!(hog.is_error && hog.content.contains("exit code 137") && !hog.content.contains("survived"), "{hog:?}");
    let after = bash(sandbox, "echo alive", 20_000).await;
    assert_eq!(after.content.trim(), "alive", "{after:?}");
}

/// A repeated idempotency key runs once.
async fn a_repeated_idempotency_key_runs_once(sandbox: &MicrovmSandbox) {
    let append = serde_json::json!({"command": "echo x >> once.txt; wc -l < once.txt"});
    let first = call(sandbox, "bash", append.clone(), "key-1").await;
    let again = call(sandbox, "bash", append, "key-1").await;
    assert_eq!(first, again);
    assert_eq!(first.content.trim(), "1");
    let count = bash(sandbox, "wc -l < once.txt", 20_000).await;
    assert_eq!(count.content.trim(), "1");
}

/// The VM dies in the middle of a call: the call fails, and its key is never run again.
async fn a_vm_crash_fails_the_running_call_and_later_ones(sandbox: &MicrovmSandbox, qemu: u32) {
    let cut = ToolCall {
        name: "bash".into(),
        input_json: serde_json::json!({"command": "echo cut >> cut.txt; sleep 60"}).to_string(),
        idempotency_key: "key-cut".into(),
        secrets: Vec::new(),
    };
    let crash = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = std::process::Command::new("kill").args(["-KILL", &qemu.to_string()]).status();
        assert!(killed.is_ok_and(|status| status.success()), "kill QEMU");
    };
    let (cut_result, ()) = tokio::join!(sandbox.execute(cut.clone()), crash);
    assert!(matches!(cut_result, Err(SandboxError::Crashed(_))), "{cut_result:?}");
    let health = sandbox.health().await;
    assert!(matches!(&health, Err(SandboxError::Crashed(message)) if message.contains("QEMU")), "{health:?}");
    // A call that cannot reach the dead VM at all is known not to have run.
    let unreached = ToolCall {
        name: "bash".into(),
        input_json: serde_json::json!({"command": "echo reached"}).to_string(),
        idempotency_key: "key-unreached".into(),
        secrets: Vec::new(),
    };
    let unreached_result = sandbox.execute(unreached.clone()).await;
    assert!(matches!(unreached_result, Err(SandboxError::Crashed(_))), "{unreached_result:?}");
}

/// Destroy ends QEMU; health then reports the sandbox destroyed and a later call fails.
async fn destroy_ends_qemu_and_every_later_call(sandbox: &MicrovmSandbox, qemu: u32) {
    sandbox.destroy().await.expect("destroy the sandbox");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{qemu}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!std::path::Path::new(&format!("/proc/{qemu}")).exists(), "QEMU is gone after destroy");
    let health = sandbox.health().await;
    assert!(matches!(&health, Err(SandboxError::Crashed(message)) if message.contains("destroyed")), "{health:?}");
    assert!(matches!(
        sandbox
            .execute(ToolCall {
                name: "bash".into(),
                input_json: "{}".into(),
                idempotency_key: String::new(),
                secrets: vec![]
            })
            .await,
        Err(SandboxError::Crashed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_with_network_allowed_reaches_the_host() {
    let Some(image) = image("a_microvm_with_network_allowed_reaches_the_host").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { network: Network::Unrestricted, memory_bytes_max: 256 * 1024 * 1024, ..Limits::default() };
    let sandbox = MicrovmSandbox::provision(dir.path().join("session"), limits, &image).await.expect("the VM boots");
    let (output, accepted) = guest_reaches_host(&sandbox).await;
    assert!(accepted && output.content.contains("rc=0"), "{output:?}");
    sandbox.destroy().await.unwrap();
}

/// With an allowlist, the guest's tools reach the listed host only through the
/// agent's egress proxy, which refuses an unlisted one; nothing connects directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_with_an_allowlist_reaches_only_the_listed_host() {
    let Some(image) = image("a_microvm_with_an_allowlist_reaches_only_the_listed_host").await else { return };
    let listed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a listener");
    let unlisted = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a listener");
    let (listed_port, unlisted_port) = (listed.local_addr().unwrap().port(), unlisted.local_addr().unwrap().port());
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listed.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.read(&mut [0u8; 1024]).await;
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        }
    });
    let unlisted_accepted = tokio::spawn(async move { unlisted.accept().await.is_ok() });

    let dir = tempfile::tempdir().unwrap();
    // The guest sees the host's loopback as 10.0.2.2 (slirp).
    let network = Network::Allowlist(vec![format!("10.0.2.2:{listed_port}")]);
    let limits = Limits { network, memory_bytes_max: 256 * 1024 * 1024, ..Limits::default() };
    let sandbox = MicrovmSandbox::provision(dir.path().join("session"), limits, &image).await.expect("the VM boots");
    let to_proxy = |request: String| format!("printf '{request}' | nc -w 5 127.0.0.1 3128");
    let output = bash(&sandbox, "echo $HTTPS_PROXY", 15_000).await;
    assert_eq!(output.content.trim(), "http://127.0.0.1:3128", "{output:?}");
    let tunnel = format!("CONNECT 10.0.2.2:{listed_port} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.0\\r\\n\\r\\n");
    let output = bash(&sandbox, &to_proxy(tunnel), 15_000).await;
    assert!(output.content.starts_with("HTTP/1.1 200 Connection established"), "{output:?}");
    assert!(output.content.ends_with("hello"), "{output:?}");
    let refused = format!("CONNECT 10.0.2.2:{unlisted_port} HTTP/1.1\\r\\n\\r\\n");
    let output = bash(&sandbox, &to_proxy(refused), 15_000).await;
    assert!(output.content.starts_with("HTTP/1.1 403 Forbidden"), "{output:?}");
    let output = bash(&sandbox, &format!("echo hi | nc -w 3 10.0.2.2 {listed_port} && echo connected"), 15_000).await;
    assert!(!output.content.contains("connected"), "a direct connection left the guest: {output:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    sandbox.destroy().await.unwrap();
    assert!(!unlisted_accepted.is_finished(), "the unlisted host was reached");
}

/// A session on a real node whose environment chooses the microvm driver: the
/// node boots a VM for the session and its tool calls run in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_a_microvm_environment_runs_its_tools_in_a_vm() -> anyhow::Result<()> {
    use agentd_protocol::agent::EnvironmentSpec;
    use agentd_protocol::api::Consistency;
    use agentd_protocol::event::{ContentBlock, EventPayload};

    if image("a_session_in_a_microvm_environment_runs_its_tools_in_a_vm").await.is_none() {
        return Ok(());
    }
    let scripts = tempfile::tempdir()?;
    let scripts_flag = scripts.path().to_string_lossy().into_owned();
    let turns = serde_json::json!([
        [{"type": "tool_use", "name": "bash", "input": {"command": "uname -r; id -u"}}],
        [{"type": "text", "text": "done"}],
    ]);
    let cluster = agentd_tests::Cluster::start(
        agentd_tests::agentd_binary!(),
        1,
        &["--shards", "2", "--scripts-dir", &scripts_flag],
    )
    .await?;
    let client = cluster.client()?;
    let environment = client
        .put_environment(
            None,
            EnvironmentSpec {
                name: "vm".into(),
                driver: "microvm".into(),
                network: Network::None,
                tool_timeout_ms: 30_000,
                eager_provisioning: false,
                vaults: vec![],
                resources: Default::default(),
            },
        )
        .await?;
    let agent = agentd_tests::scripted_bash_agent(&client, scripts.path(), "vm", turns).await?;
    let session = client.create_session_with(Some(agent), Some(environment.id)).await?.session_id;
    client.append(session, EventPayload::user_text("where do tools run?")).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let result = loop {
        let events = client.read_all(session, Consistency::Leader).await?;
        let result = events.iter().find_map(|event| match &event.payload {
            EventPayload::AgentToolResult { content, is_error, .. } => {
                Some((content.iter().map(|ContentBlock::Text { text }| text.as_str()).collect::<String>(), *is_error))
            }
            _ => None,
        });
        if let Some(result) = result {
            break result;
        }
        assert!(Instant::now() < deadline, "no tool result; events: {events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lines: Vec<&str> = result.0.lines().collect();
    assert!(!result.1 && lines.len() == 2, "{result:?}");
    assert!(lines[0].ends_with("-cloud-amd64") && lines[1] == "1000", "the tool ran in the guest: {result:?}");

    // The node's VM dies with the node, even when the node is SIGKILLed.
    let cluster_dir = cluster.dir.path().to_string_lossy().into_owned();
    // The session's VM, and possibly a spare booting for the next session.
    assert!(!processes_mentioning(&cluster_dir).is_empty(), "a QEMU runs for the session");
    drop(cluster);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&cluster_dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(processes_mentioning(&cluster_dir), Vec::<u32>::new(), "QEMU outlived its node");
    Ok(())
}

/// QEMU processes whose command line mentions `text` (QEMU names its VM's files).
fn processes_mentioning(text: &str) -> Vec<u32> {
    agentd_tests::processes_mentioning(text, Some("qemu"))
}

/// A pool boots a spare after the first sandbox of a shape, and the next sandbox
/// of that shape gets it instead of booting; dropping the pool kills its spares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_hands_out_a_booted_spare() {
    let Some(image) = image("a_pool_hands_out_a_booted_spare").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let spares_dir = dir.path().join("spares");
    let pool = MicrovmPool::new(image, spares_dir.clone(), 1);
    let limits = Limits { memory_bytes_max: 256 * 1024 * 1024, ..Limits::default() };
    let first = pool.provision(dir.path().join("one"), limits.clone()).await.expect("the first VM boots");
    let deadline = Instant::now() + Duration::from_secs(90);
    let spare = loop {
        if let Some(pid) = pool.spare_pids(&limits).first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "no spare was booted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = Instant::now();
    let second = pool.provision(dir.path().join("two"), limits.clone()).await.expect("a sandbox from the spare");
    assert_eq!(second.qemu_pid().await, Some(spare), "the second sandbox runs in the spare");
    let output = bash(&second, "echo from the spare; ls /workspace | wc -l", 20_000).await;
    eprintln!("provision from a spare to the first bash result: {:?}", started.elapsed());
    assert_eq!(output.content.split_whitespace().collect::<Vec<_>>(), ["from", "the", "spare", "0"], "{output:?}");
    assert_ne!(first.qemu_pid().await, Some(spare));
    // Another shape has no spare yet.
    assert!(pool.spare_pids(&Limits { network: Network::Unrestricted, ..limits.clone() }).is_empty());
    first.destroy().await.unwrap();

    // The spare's disk became the session's workspace, which outlives the VM: the
    // session's next sandbox boots with it (not from a spare, whose disk is blank).
    let output = bash(&second, "echo kept > notes.txt; df /workspace | tail -n 1", 20_000).await;
    assert!(output.content.starts_with("/dev/vda"), "the workspace is not the disk: {output:?}");
    second.destroy().await.unwrap();
    assert!(dir.path().join("two/workspace.img").exists());
    let spares_before = pool.spare_pids(&limits);
    let again = pool.provision(dir.path().join("two"), limits.clone()).await.expect("the session's VM boots again");
    let pid = again.qemu_pid().await.expect("QEMU runs");
    assert!(!spares_before.contains(&pid), "a session with a disk got a blank spare");
    let output = bash(&again, "cat notes.txt", 20_000).await;
    assert_eq!(output.content, "kept\n", "{output:?}");
    again.destroy().await.unwrap();

    let spares_path = spares_dir.to_string_lossy().into_owned();
    drop(pool);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !processes_mentioning(&spares_path).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processes_mentioning(&spares_path), Vec::<u32>::new(), "spares outlived their pool");
}
