//! The command line as scripts use it: `--json` output, exit codes, clear
//! errors, and the Prometheus endpoint of `--metrics`.

use std::io::{Read, Write};
use std::process::{Command, Output};

use agentd_tests::{free_port, Cluster};
use serde_json::Value;

fn agentd(cluster: &Cluster, args: &[&str]) -> Output {
    cluster.command().expect("the admin key").args(args).output().expect("run agentd")
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "agentd failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// A reader that stops early (`| head -1`) ends the command quietly. The
/// output must outgrow the pipe's buffer, so that a write meets the closed
/// pipe.
fn reader_that_stops_early_ends_the_command_quietly(
    cluster: &Cluster,
    addr: &str,
    session: &str,
) -> anyhow::Result<()> {
    let big = "x".repeat(100_000);
    for _ in 0..3 {
        json(&agentd(cluster, &["session", "send", "--addr", addr, session, "--text", &big, "--json"]));
    }
    let mut events = cluster
        .command()?
        .args(["session", "events", "--addr", addr, session, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(events.stdout.take().expect("stdout")), &mut first)?;
    assert!(first.contains("hello"), "{first}");
    let closed = events.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert!(closed.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", closed.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_print_json_and_fail_clearly() -> anyhow::Result<()> {
    let metrics_port = free_port();
    let metrics_flag = format!("127.0.0.1:{metrics_port}");
    let cluster =
        Cluster::start(agentd_tests::agentd_binary!(), 1, &["--shards", "2", "--metrics", &metrics_flag]).await?;
    let addr = cluster.addrs()[0].clone();

    let created = json(&agentd(&cluster, &["session", "create", "--addr", &addr, "--json"]));
    let session = created["session_id"].as_str().expect("session id").to_string();
    assert!(session.starts_with("sesn_"));

    let sent = json(&agentd(&cluster, &["session", "send", "--addr", &addr, &session, "--text", "hello", "--json"]));
    assert_eq!(sent["seq"], 1);
    let plain = agentd(&cluster, &["session", "send", "--addr", &addr, &session, "--text", "second"]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "2");

    let events = agentd(&cluster, &["session", "events", "--addr", &addr, &session, "--json"]);
    assert!(events.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON event per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "user.message");
    assert_eq!(lines[0]["content"][0]["text"], "hello");
    assert_eq!(lines[1]["seq"], 2);
    let from_two = agentd(&cluster, &["session", "events", "--addr", &addr, &session, "--from", "2", "--json"]);
    assert_eq!(String::from_utf8_lossy(&from_two.stdout).lines().count(), 1);

    reader_that_stops_early_ends_the_command_quietly(&cluster, &addr, &session)?;

    let status = json(&agentd(&cluster, &["cluster", "status", "--addr", &addr, "--json"]));
    assert_eq!(status["shards"], 2);
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(status["groups"].as_array().map(Vec::len), Some(3));

    // Bad input: a malformed id and an unknown session are clear errors with a failing exit code.
    let malformed = agentd(&cluster, &["session", "send", "--addr", &addr, "sesn_nope", "--text", "x"]);
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("invalid id"), "{malformed:?}");
    let unknown =
        agentd(&cluster, &["session", "send", "--addr", &addr, "sesn_00000000000000000000000000000001", "--text", "x"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"), "{unknown:?}");
    let keyless = Command::new(agentd_tests::agentd_binary!())
        .args(["session", "create", "--addr", &addr])
        .env_remove("AGENTD_API_KEY")
        .output()?;
    assert!(!keyless.status.success(), "a call without a key was accepted");
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("an API key is required"), "{keyless:?}");
    let remote = agentd(&cluster, &["session", "create", "--addr", "192.0.2.1:7000"]);
    assert!(!remote.status.success());
    assert!(String::from_utf8_lossy(&remote.stderr).contains("--ca"), "{remote:?}");

    // Prometheus text format on --metrics.
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", metrics_port))?;
    connection.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    connection.read_to_string(&mut body)?;
    // Reads of a live session are served by its session actor from the cached tail.
    for metric in [
        "agentd_append_commit_seconds",
        "agentd_storage_syncs_total",
        "agentd_groups_led",
        "agentd_session_actors",
        "agentd_session_reads_cached_total",
    ] {
        assert!(body.contains(metric), "metrics lack {metric}:\n{body}");
    }
    Ok(())
}

/// `agentd dev`, the README's first command, runs a sample agent session to
/// the end on an in-process cluster.
#[test]
fn agentd_dev_runs_a_sample_session_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let base_port = free_port().saturating_sub(3).max(1024).to_string();
    let data_dir = dir.path().join("dev");
    let output = Command::new(agentd_tests::agentd_binary!())
        .args(["dev", "--base-port", &base_port, "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run agentd dev");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "agentd dev failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    for expected in
        ["user.message", "agent.tool_use", "agent.tool_result", "Done: notes/hello.md", "session.status_idle"]
    {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    let note = std::fs::read_dir(data_dir.join("sandboxes"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("workspace/notes/hello.md"))
        .find(|path| path.exists())
        .expect("the agent wrote its note in the session workspace");
    assert!(std::fs::read_to_string(note).unwrap().contains("Hello from agentd"));
}
