//! Real bubblewrap sandboxes: tools, idempotency, confinement and limits.
//! Needs `bwrap` (scripts/setup.sh installs it).

#![allow(clippy::disallowed_methods, reason = "tests of real sandboxes on the host, timed by the wall clock")]

mod sandbox_calls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentd_actors::sandbox::{Limits, NamespaceSandbox, Network, Sandbox, SandboxError, ToolCall};
use sandbox_calls::{
    assert_error, assert_ok, bash, bash_with_secrets, call, call_with_key, egress_reaches_only_listed_hosts,
    unique_key, EgressTargets,
};
use serde_json::json;

async fn provision(root: &Path, limits: Limits) -> NamespaceSandbox {
    NamespaceSandbox::provision(root.to_path_buf(), limits).await.expect("provision")
}

#[tokio::test]
async fn bash_keeps_shell_state_between_calls_and_restarts() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;

    let output = bash(&sandbox, "mkdir -p sub && cd sub && export X=1").await;
    assert_ok(&output);
    let output = bash(&sandbox, "pwd; echo $X; echo $HOME").await;
    assert_ok(&output);
    assert_eq!(output.content, "/workspace/sub\n1\n/workspace\n");

    let output = bash(&sandbox, "echo to-stderr >&2; exit_code_test() { return 3; }; exit_code_test").await;
    assert_error(&output);
    assert!(output.content.contains("to-stderr"), "{}", output.content);
    assert!(output.content.contains("[exit code 3]"), "{}", output.content);

    let output = call(&sandbox, "bash", json!({ "restart": true })).await;
    assert_ok(&output);
    let output = bash(&sandbox, "pwd; echo ${X:-unset}").await;
    assert_eq!(output.content, "/workspace\nunset\n");

    // Hostile framing: unbalanced quotes, a heredoc, a command reading stdin, text that looks like a sentinel.
    let output = bash(&sandbox, "echo 'unterminated").await;
    assert_error(&output);
    let output = bash(&sandbox, "cat <<EOF\nline one\nEOF\ncat; echo __agentd_done_x__ 0").await;
    assert_ok(&output);
    assert_eq!(output.content, "line one\n__agentd_done_x__ 0\n");
    let output = bash(&sandbox, "printf 'no newline'").await;
    assert_eq!(output.content, "no newline");

    let output = bash(&sandbox, "printf '%s\\n' \"it's a \\\\ back\tslash ü\"").await;
    assert_eq!(output.content, "it's a \\ back\tslash ü\n");
    let long = "a".repeat(2_000_000);
    let output = bash(&sandbox, &format!("x='{long}'; echo ${{#x}}")).await;
    assert_eq!(output.content, "2000000\n");
    assert_error(&call(&sandbox, "bash", json!({ "command": "echo a\u{0}b" })).await);

    // `exit` ends the shell: an error now, a fresh shell next time.
    let output = bash(&sandbox, "cd sub; exit 4").await;
    assert_error(&output);
    assert!(output.content.contains("shell exited"), "{}", output.content);
    let output = bash(&sandbox, "pwd").await;
    assert_eq!(output.content, "/workspace\n");
    assert!(directory.path().join("workspace/sub").is_dir());
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn file_tools_read_write_edit_glob_grep() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;

    let output = call(
        &sandbox,
        "write",
        json!({ "file_path": "/workspace/src/a.txt", "content": "alpha\nbeta\ngamma\nbeta\n" }),
    )
    .await;
    assert_ok(&output);
    assert_eq!(
        std::fs::read_to_string(directory.path().join("workspace/src/a.txt")).unwrap(),
        "alpha\nbeta\ngamma\nbeta\n"
    );
    assert_ok(&call(&sandbox, "write", json!({ "file_path": "src/b.rs", "content": "fn beta() {}\n" })).await);
    assert_ok(&call(&sandbox, "write", json!({ "file_path": "top.txt", "content": "top\n" })).await);

    let output = call(&sandbox, "read", json!({ "file_path": "src/a.txt" })).await;
    assert_ok(&output);
    assert_eq!(output.content, "     1\talpha\n     2\tbeta\n     3\tgamma\n     4\tbeta\n");
    let output = call(&sandbox, "read", json!({ "file_path": "/workspace/src/a.txt", "view_range": [2, 3] })).await;
    assert_eq!(output.content, "     2\tbeta\n     3\tgamma\n");
    let output = call(&sandbox, "read", json!({ "file_path": "src/a.txt", "view_range": [3, -1] })).await;
    assert_eq!(output.content, "     3\tgamma\n     4\tbeta\n");
    assert_error(&call(&sandbox, "read", json!({ "file_path": "src/a.txt", "view_range": [0, 2] })).await);
    let output = call(&sandbox, "read", json!({ "file_path": "missing.txt" })).await;
    assert_error(&output);
    assert!(output.content.contains("no such file"), "{}", output.content);

    // The bash side sees the same files.
    assert_eq!(bash(&sandbox, "cat src/b.rs").await.content, "fn beta() {}\n");

    let output =
        call(&sandbox, "edit", json!({ "file_path": "src/a.txt", "old_string": "beta", "new_string": "BETA" })).await;
    assert_error(&output);
    assert!(output.content.contains("occurs 2 times"), "{}", output.content);
    let output =
        call(&sandbox, "edit", json!({ "file_path": "src/a.txt", "old_string": "delta", "new_string": "x" })).await;
    assert_error(&output);
    assert!(output.content.contains("not found"), "{}", output.content);
    assert_ok(
        &call(&sandbox, "edit", json!({ "file_path": "src/a.txt", "old_string": "gamma", "new_string": "GAMMA" }))
            .await,
    );
    let output = call(
        &sandbox,
        "edit",
        json!({ "file_path": "src/a.txt", "old_string": "beta", "new_string": "BETA", "replace_all": true }),
    )
    .await;
    assert_ok(&output);
    assert!(output.content.contains("replaced 2 occurrences"), "{}", output.content);
    assert_eq!(
        std::fs::read_to_string(directory.path().join("workspace/src/a.txt")).unwrap(),
        "alpha\nBETA\nGAMMA\nBETA\n"
    );

    let output = call(&sandbox, "glob", json!({ "pattern": "**/*.txt" })).await;
    assert_eq!(output.content, "src/a.txt\ntop.txt\n");
    let output = call(&sandbox, "glob", json!({ "pattern": "*.txt" })).await;
    assert_eq!(output.content, "top.txt\n");
    let output = call(&sandbox, "glob", json!({ "pattern": "*", "path": "src" })).await;
    assert_eq!(output.content, "src/a.txt\nsrc/b.rs\n");
    assert_error(&call(&sandbox, "glob", json!({ "pattern": "a[" })).await);

    let output = call(&sandbox, "grep", json!({ "pattern": "(?i)beta" })).await;
    assert_eq!(output.content, "src/a.txt:2:BETA\nsrc/a.txt:4:BETA\nsrc/b.rs:1:fn beta() {}\n");
    let output = call(&sandbox, "grep", json!({ "pattern": "BETA", "path": "src/a.txt" })).await;
    assert_eq!(output.content, "src/a.txt:2:BETA\nsrc/a.txt:4:BETA\n");
    assert_error(&call(&sandbox, "grep", json!({ "pattern": "(" })).await);

    let output = call(&sandbox, "frobnicate", json!({})).await;
    assert_error(&output);
    assert!(output.content.contains("unknown tool"), "{}", output.content);
    let output = sandbox
        .execute(ToolCall {
            name: "read".into(),
            input_json: "{not json".into(),
            idempotency_key: unique_key(),
            secrets: vec![],
        })
        .await
        .unwrap();
    assert_error(&output);
    assert!(output.content.contains("invalid input for read"), "{}", output.content);
    assert_error(&call(&sandbox, "bash", json!({ "command": 7 })).await);
    assert_error(&call(&sandbox, "write", json!({ "file_path": "x" })).await);
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn repeated_idempotency_key_runs_once_even_after_reprovisioning() {
    let directory = tempfile::tempdir().unwrap();
    let command = json!({ "command": "echo x >> log; wc -l < log" });
    let sandbox = provision(directory.path(), Limits::default()).await;
    let first = call_with_key(&sandbox, "bash", command.clone(), "call-1").await;
    assert_ok(&first);
    assert_eq!(first.content, "1\n");
    let second = call_with_key(&sandbox, "bash", command.clone(), "call-1").await;
    assert_eq!(second, first);
    let log = directory.path().join("workspace/log");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\n");

    let third = call_with_key(&sandbox, "bash", command.clone(), "call-2").await;
    assert_eq!(third.content, "2\n");
    sandbox.destroy().await.unwrap();
    drop(sandbox);

    // A new sandbox over the same root (a restarted node) still knows both keys.
    let sandbox = provision(directory.path(), Limits::default()).await;
    assert_eq!(call_with_key(&sandbox, "bash", command.clone(), "call-1").await, first);
    assert_eq!(call_with_key(&sandbox, "bash", command.clone(), "call-2").await, third);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\nx\n");
    // Errors are recorded too.
    let failed = call_with_key(&sandbox, "bash", json!({ "command": "echo y >> log; false" }), "call-3").await;
    assert_error(&failed);
    assert_eq!(call_with_key(&sandbox, "bash", json!({ "command": "echo y >> log; false" }), "call-3").await, failed);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\nx\ny\n");
    assert_eq!(std::fs::read_dir(directory.path().join("ledger")).unwrap().count(), 3);
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn a_call_interrupted_by_a_crash_is_not_run_again() {
    use sha2::Digest;
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    // What a crash between "started" and "recorded" leaves behind: the marker only.
    let name: String = sha2::Sha256::digest(b"cut-off").iter().map(|byte| format!("{byte:02x}")).collect();
    std::fs::write(directory.path().join("ledger").join(format!("{name}.started")), b"").unwrap();
    let command = json!({ "command": "echo ran >> log" });
    let output = call_with_key(&sandbox, "bash", command.clone(), "cut-off").await;
    assert_error(&output);
    assert!(output.content.contains("interrupted"), "{}", output.content);
    assert!(!directory.path().join("workspace/log").exists(), "the interrupted call ran again");
    assert_eq!(call_with_key(&sandbox, "bash", command.clone(), "cut-off").await, output);
    assert_ok(&call_with_key(&sandbox, "bash", command, "fresh").await);
    assert_eq!(std::fs::read_to_string(directory.path().join("workspace/log")).unwrap(), "ran\n");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn file_tools_stay_inside_the_workspace() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    let workspace = directory.path().join("workspace");
    std::os::unix::fs::symlink("/etc", workspace.join("etc_link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", workspace.join("passwd_link")).unwrap();
    std::fs::write(directory.path().join("outside.txt"), "outside secret").unwrap();
    std::os::unix::fs::symlink("../outside.txt", workspace.join("relative_link")).unwrap();

    for path in [
        "../../etc/shadow",
        "/etc/shadow",
        "/etc/passwd",
        "/workspace/../ledger",
        "etc_link/passwd",
        "passwd_link",
        "relative_link",
        "/workspace/etc_link/shadow",
    ] {
        let output = call(&sandbox, "read", json!({ "file_path": path })).await;
        assert_error(&output);
        assert!(!output.content.contains("root:"), "{path} leaked: {}", output.content);
        assert!(!output.content.contains("outside secret"), "{path} leaked: {}", output.content);
    }
    for path in ["etc_link/agentd-test", "passwd_link", "relative_link", "../escape.txt", "/tmp/escape.txt"] {
        let output = call(&sandbox, "write", json!({ "file_path": path, "content": "pwned" })).await;
        assert_error(&output);
    }
    assert!(!Path::new("/etc/agentd-test").exists());
    assert_eq!(std::fs::read_to_string(directory.path().join("outside.txt")).unwrap(), "outside secret");
    assert!(!directory.path().join("escape.txt").exists());
    let output =
        call(&sandbox, "edit", json!({ "file_path": "passwd_link", "old_string": "root", "new_string": "toor" })).await;
    assert_error(&output);
    let output = call(&sandbox, "grep", json!({ "pattern": "root", "path": "etc_link" })).await;
    assert_error(&output);
    let output = call(&sandbox, "glob", json!({ "pattern": "*", "path": "etc_link" })).await;
    assert_error(&output);
    // Searching the whole workspace does not follow the planted links.
    let output = call(&sandbox, "grep", json!({ "pattern": "root:" })).await;
    assert!(!output.content.contains("root:x"), "{}", output.content);

    // A FIFO planted by the sandbox would block a host-side read forever; it is refused.
    assert_ok(&bash(&sandbox, "mkfifo pipe").await);
    assert_error(&call(&sandbox, "read", json!({ "file_path": "pipe" })).await);
    assert!(!call(&sandbox, "grep", json!({ "pattern": "x", "path": "pipe" })).await.content.contains("pipe:"));

    // A symlink inside the workspace that stays inside is fine.
    std::fs::write(workspace.join("real.txt"), "inside\n").unwrap();
    std::os::unix::fs::symlink("real.txt", workspace.join("inner_link")).unwrap();
    assert_eq!(call(&sandbox, "read", json!({ "file_path": "inner_link" })).await.content, "     1\tinside\n");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn bash_cannot_touch_the_host_system_or_a_sibling_session() {
    let parent = tempfile::tempdir().unwrap();
    let first = provision(&parent.path().join("session-a"), Limits::default()).await;
    let second = provision(&parent.path().join("session-b"), Limits::default()).await;
    sandbox_calls::sibling_workspace_is_out_of_reach(&first, &second, &parent.path().join("session-b")).await;
    let output = bash(&first, &format!("ls {}", parent.path().display())).await;
    assert_error(&output);

    for command in ["touch /usr/agentd-test", "touch /etc/agentd-test", "echo x >> /etc/passwd", "touch /agentd-test"] {
        let output = bash(&first, command).await;
        assert_error(&output);
        assert!(output.content.contains("Read-only file system"), "{command}: {}", output.content);
    }
    assert!(!Path::new("/usr/agentd-test").exists());
    assert!(!Path::new("/etc/agentd-test").exists());
    let output = bash(&first, "cat /etc/shadow").await;
    assert_error(&output);
    let output = bash(&first, "id -u; cat /proc/self/status | grep CapEff; ls /sys 2>&1 | head -1").await;
    assert!(output.content.starts_with("1000\nCapEff:\t0000000000000000\n"), "{}", output.content);
    let output = bash(&first, "ps -e --no-headers | wc -l").await;
    assert!(output.content.trim().parse::<u32>().unwrap() < 10, "host processes visible: {}", output.content);
    first.destroy().await.unwrap();
    second.destroy().await.unwrap();
}

#[tokio::test]
async fn network_is_off_unless_allowed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");

    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(&directory.path().join("offline"), Limits::default()).await;
    let output = bash(&sandbox, &connect).await;
    assert_error(&output);
    assert!(!output.content.contains("connected\n"), "{}", output.content);
    assert!(listener.accept().is_err(), "the host listener accepted a connection from the sandbox");
    let output =
        bash(&sandbox, "cat /sys/class/net/*/address 2>/dev/null; ls /proc/net >/dev/null; getent hosts example.com")
            .await;
    assert_error(&output);
    sandbox.destroy().await.unwrap();

    // The same command works with the network allowed, so the check above can fail.
    let limits = Limits { network: Network::Unrestricted, ..Limits::default() };
    let online = provision(&directory.path().join("online"), limits).await;
    let output = bash(&online, &connect).await;
    assert_ok(&output);
    assert!(listener.accept().is_ok());
    online.destroy().await.unwrap();
}

#[tokio::test]
async fn egress_allowlist_reaches_only_listed_hosts() {
    let targets = EgressTargets::start();
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path().join("limited");
    let sandbox = provision(&root, Limits { network: targets.network(), ..Limits::default() }).await;
    let to_proxy = |request: &str| {
        format!("exec 3<>/dev/tcp/127.0.0.1/3128 && printf '{request}' >&3 && timeout 5 cat <&3; exec 3<&-")
    };
    let direct = |port: u16| format!("exec 3<>/dev/tcp/127.0.0.2/{port} && echo connected");
    egress_reaches_only_listed_hosts(&sandbox, &targets, to_proxy, direct).await;

    // What a user runs: curl finds the proxy in the environment, by itself.
    let (listed, unlisted) = (targets.listed.0, targets.unlisted.0);
    let output = bash(&sandbox, &format!("curl -sS http://127.0.0.2:{listed}/")).await;
    assert_eq!(output.content, "hello");
    let output = bash(&sandbox, &format!("curl -sS -p http://127.0.0.2:{listed}/")).await;
    assert_eq!(output.content, "hello");
    let output = bash(&sandbox, &format!("curl -sS -f http://127.0.0.2:{unlisted}/")).await;
    assert_error(&output);
    assert!(output.content.contains("403"), "{}", output.content);
    let output = bash(&sandbox, &format!("curl -sS --noproxy '*' http://127.0.0.2:{listed}/")).await;
    assert_error(&output);

    assert!(root.join("netns").exists());
    sandbox.destroy().await.unwrap();
    assert!(!root.join("netns").exists(), "destroy left the sandbox's network namespace bound");
}

#[tokio::test]
async fn timeout_kills_the_command_and_the_next_call_works() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    sandbox_calls::timeout_kills_the_command_and_the_next_call_works(&sandbox).await;
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn output_is_capped_with_a_note() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    let output = bash(&sandbox, "yes | head -c 10000000").await;
    assert_ok(&output);
    assert!(output.content.len() < 100 * 1024 + 200, "{} bytes kept", output.content.len());
    assert!(output.content.starts_with("y\ny\n"));
    assert!(
        output.content.contains("[output truncated: 9897600 bytes dropped"),
        "{}",
        &output.content[output.content.len() - 100..]
    );
    // The stream stays in sync after a truncated call.
    assert_eq!(bash(&sandbox, "echo next").await.content, "next\n");

    // One 20 MB line: grep shows a bounded prefix, read stays capped.
    std::fs::write(directory.path().join("workspace/long.txt"), "a".repeat(20_000_000) + "\nneedle\n").unwrap();
    let output = call(&sandbox, "grep", json!({ "pattern": "^a+$|needle" })).await;
    assert_eq!(output.content.lines().count(), 2, "{}", &output.content[..200.min(output.content.len())]);
    assert!(output.content.len() < 1000);
    assert!(output.content.ends_with("long.txt:2:needle\n"));
    let output = call(&sandbox, "read", json!({ "file_path": "long.txt" })).await;
    assert!(output.content.len() < 100 * 1024 + 200);
    std::fs::write(directory.path().join("workspace/big.txt"), "line\n".repeat(100_000)).unwrap();
    let output = call(&sandbox, "read", json!({ "file_path": "big.txt" })).await;
    assert!(output.content.len() < 100 * 1024 + 200);
    assert!(output.content.contains("[output truncated"), "read was not capped");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn file_tools_respect_the_wall_clock() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits { wall_clock_ms: 1, ..Limits::default() }).await;
    std::fs::write(directory.path().join("workspace/huge.txt"), "some text\n".repeat(5_000_000)).unwrap();
    let output = call(&sandbox, "grep", json!({ "pattern": "absent" })).await;
    assert_error(&output);
    assert!(output.content.contains("timed out after 1 ms"), "{}", output.content);
    let output = call(&sandbox, "read", json!({ "file_path": "huge.txt", "view_range": [4_999_999, -1] })).await;
    assert_error(&output);
    assert!(output.content.contains("timed out after 1 ms"), "{}", output.content);
    sandbox.destroy().await.unwrap();
}

async fn assert_process_limits_hold(sandbox: &NamespaceSandbox) {
    // A fork bomb: bounded by pids_max, cut by the timeout, and the host is fine.
    let started = Instant::now();
    let output =
        call(sandbox, "bash", json!({ "command": "bomb() { bomb | bomb & }; bomb; sleep 5", "timeout_ms": 3000 }))
            .await;
    assert_error(&output);
    assert!(started.elapsed() < Duration::from_secs(60));
    // Count how many processes can be started at once; perl's fork fails at once instead of retrying.
    let count = "perl -e 'my $n = 0; for (1..200) { my $pid = fork; last unless defined $pid; if ($pid == 0) { sleep 30; exit } $n++ } print \"$n\\n\"'";
    let output = call(sandbox, "bash", json!({ "command": count, "timeout_ms": 20_000 })).await;
    assert_ok(&output);
    let started: u64 = output.content.trim().parse().unwrap_or(u64::MAX);
    assert!(started < 64, "started {started} processes with pids_max 64: {}", output.content);
    // Background load dies with the shell on restart: look for it on the host by a unique name.
    let marker = format!("agentd-marker-{}", unique_key());
    assert_ok(&bash(sandbox, &format!("(exec -a {marker} yes > /dev/null) & echo started")).await);
    assert!(wait_for_host_processes(&marker, |count| count == 1).await, "the background process did not start");
    assert_ok(&call(sandbox, "bash", json!({ "restart": true })).await);
    assert!(wait_for_host_processes(&marker, |count| count == 0).await, "the background process survived a restart");
}

fn host_processes_named(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline.starts_with(marker.as_bytes()))
        .count()
}

async fn wait_for_host_processes(marker: &str, condition: impl Fn(usize) -> bool) -> bool {
    for _ in 0..100 {
        if condition(host_processes_named(marker)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn limited() -> Limits {
    Limits { pids_max: 64, memory_bytes_max: 128 * 1024 * 1024, ..Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_and_memory_limits_with_cgroups() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), limited()).await;
    if !sandbox.uses_cgroup() {
        eprintln!("NOTE: no writable cgroup on this machine; this test checks the rlimit fallback instead");
    }
    assert_process_limits_hold(&sandbox).await;
    // /tmp is bounded too.
    let output = bash(&sandbox, "head -c 200000000 /dev/zero > /tmp/fill").await;
    assert_error(&output);
    assert_eq!(bash(&sandbox, "echo alive").await.content, "alive\n");
    // 300 MB in one bash variable exceeds the 128 MiB memory limit: the shell is killed.
    let output = call(
        &sandbox,
        "bash",
        json!({ "command": "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo ${#x}", "timeout_ms": 60_000 }),
    )
    .await;
    assert_error(&output);
    assert!(!output.content.contains("300000000"), "{}", output.content);
    assert_eq!(bash(&sandbox, "echo alive").await.content, "alive\n");
    sandbox.destroy().await.unwrap();
}

/// The CPU time (user plus system, in seconds) of the waited-for children that bash's
/// `times` reports on its second line, e.g. "0m0.981s 0m0.004s".
fn children_cpu_seconds(times: &str) -> f64 {
    let children = times.lines().nth(1).unwrap_or_else(|| panic!("no children line in {times:?}"));
    children
        .split_whitespace()
        .map(|field| {
            let (minutes, seconds) = field.trim_end_matches('s').split_once('m').expect("XmY.YYYs");
            minutes.parse::<f64>().expect("minutes") * 60.0 + seconds.parse::<f64>().expect("seconds")
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_holds_busy_loops_to_their_share() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits { cpu_millicores: 500, ..Limits::default() }).await;
    if !sandbox.limits_cpu() {
        eprintln!("NOTE: no cpu cgroup controller on this machine; the CPU limit is not enforced, nothing to check");
        sandbox.destroy().await.unwrap();
        return;
    }
    // Two busy loops for 2 s of wall clock, in a subshell whose `times` then reports
    // just their CPU time. Unthrottled they would take up to 4 s on two cores; half a
    // core allows about 1 s.
    let loops = "( for loop in 1 2; do timeout 2 bash -c 'while :; do :; done' & done; wait; times )";
    let output = call(&sandbox, "bash", json!({ "command": loops, "timeout_ms": 30_000 })).await;
    assert_ok(&output);
    let cpu_seconds = children_cpu_seconds(&output.content);
    assert!(
        cpu_seconds < 1.6,
        "two busy loops used {cpu_seconds} s of CPU in 2 s under half a core: {}",
        output.content
    );
    assert!(cpu_seconds > 0.1, "the busy loops did not run: {}", output.content);
    sandbox.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_with_the_rlimit_fallback() {
    let directory = tempfile::tempdir().unwrap();
    // As root, the fallback runs the sandbox as an unprivileged host user, which must be able to reach the workspace.
    std::fs::set_permissions(directory.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sandbox = NamespaceSandbox::provision_with(
        directory.path().to_path_buf(),
        limited(),
        PathBuf::from("/usr/bin/bwrap"),
        true,
    )
    .await
    .expect("provision");
    assert!(!sandbox.uses_cgroup());
    assert_process_limits_hold(&sandbox).await;
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn destroy_ends_the_sandbox() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    assert_ok(&bash(&sandbox, "sleep 100 & echo started").await);
    sandbox.destroy().await.unwrap();
    let result = sandbox
        .execute(ToolCall {
            name: "bash".into(),
            input_json: json!({ "command": "true" }).to_string(),
            idempotency_key: unique_key(),
            secrets: vec![],
        })
        .await;
    assert!(matches!(result, Err(SandboxError::Crashed(_))), "{result:?}");
    // The session directory belongs to the caller and survives.
    assert!(directory.path().join("workspace").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_stops_a_running_call() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = std::sync::Arc::new(provision(directory.path(), Limits::default()).await);
    let running = std::sync::Arc::clone(&sandbox);
    let call = tokio::spawn(async move { bash(&*running, "echo started; sleep 60").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    sandbox.destroy().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "destroy waited for the command");
    let output = call.await.unwrap();
    assert_error(&output);
    assert!(output.content.contains("destroyed"), "{}", output.content);
}

#[tokio::test]
async fn dropping_a_sandbox_kills_its_processes() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    let marker = format!("agentd-marker-{}", unique_key());
    assert_ok(&bash(&sandbox, &format!("(exec -a {marker} sleep 100) & echo started")).await);
    assert!(wait_for_host_processes(&marker, |count| count == 1).await, "the background process did not start");
    drop(sandbox);
    assert!(wait_for_host_processes(&marker, |count| count == 0).await, "the background process outlived its sandbox");
}

/// Host processes whose command line mentions `text` (bwrap's names the sandbox's workspace).
fn host_processes_mentioning(text: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(text))
        })
        .collect()
}

/// The sandbox's first unhealthy answer, waiting up to 10 s: its processes die asynchronously.
async fn wait_until_unhealthy(sandbox: &NamespaceSandbox) -> SandboxError {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sandbox.health().await {
            Err(error) => return error,
            Ok(()) => assert!(Instant::now() < deadline, "the killed sandbox still reports itself healthy"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_reports_a_sandbox_killed_from_outside_or_destroyed() {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    // No shell yet: the first `bash` call starts one.
    sandbox.health().await.expect("a fresh sandbox is healthy");
    assert_ok(&bash(&sandbox, "echo up").await);
    sandbox.health().await.expect("a sandbox whose shell runs is healthy");

    // Kill bwrap (and so the whole sandbox) from the host, as the OOM killer or an operator might.
    let workspace = directory.path().join("workspace").display().to_string();
    let pids = host_processes_mentioning(&workspace);
    assert!(!pids.is_empty(), "no host process of the sandbox found");
    for pid in pids {
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
        // It may have died with its parent already.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let error = wait_until_unhealthy(&sandbox).await;
    assert!(matches!(&error, SandboxError::Crashed(message) if message.contains("shell exited")), "{error:?}");

    sandbox.destroy().await.unwrap();
    let error = sandbox.health().await.unwrap_err();
    assert!(matches!(&error, SandboxError::Crashed(message) if message.contains("destroyed")), "{error:?}");
    // A new sandbox over the same session directory is healthy again.
    let fresh = provision(directory.path(), Limits::default()).await;
    assert_ok(&bash(&fresh, "echo again").await);
    fresh.health().await.expect("a fresh sandbox is healthy");
    fresh.destroy().await.unwrap();
}

#[test]
fn probe_names_the_missing_package() {
    let result = NamespaceSandbox::probe_at(Path::new("/nonexistent/bin/bwrap"));
    match result {
        Err(SandboxError::Unavailable(message)) => {
            assert!(message.contains("bubblewrap"), "{message}");
            assert!(message.contains("/nonexistent/bin/bwrap"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    NamespaceSandbox::probe().expect("bwrap is installed on the build machines (scripts/setup.sh)");
}

#[tokio::test]
async fn provisioning_without_bwrap_is_unavailable() {
    let directory = tempfile::tempdir().unwrap();
    let result = NamespaceSandbox::provision_with(
        directory.path().to_path_buf(),
        Limits::default(),
        PathBuf::from("/nonexistent/bin/bwrap"),
        false,
    )
    .await;
    assert!(
        matches!(&result, Err(SandboxError::Unavailable(message)) if message.contains("bubblewrap")),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn secrets_reach_the_command_and_never_its_recorded_output() {
    use agentd_actors::sandbox::Secret;

    let directory = tempfile::tempdir().unwrap();
    let sandbox = provision(directory.path(), Limits::default()).await;
    let secret = Secret { name: "API_TOKEN".into(), value: "s3cr3t-value-42".into() };
    let key = unique_key();
    let with_secret = |command: &str, key: String| bash_with_secrets(command, key, vec![secret.clone()]);
    let output = sandbox
        .execute(with_secret(
            "echo token=$API_TOKEN; echo \"$API_TOKEN\" > leaked.txt; test -n \"$API_TOKEN\"",
            key.clone(),
        ))
        .await
        .unwrap();
    assert!(!output.is_error, "{output:?}");
    assert_eq!(output.content, "token=[REDACTED:API_TOKEN]\n");
    // A file tool reading what the command wrote is scrubbed too.
    let read = sandbox
        .execute(ToolCall {
            name: "read".into(),
            input_json: json!({ "file_path": "leaked.txt" }).to_string(),
            idempotency_key: unique_key(),
            secrets: vec![secret.clone()],
        })
        .await
        .unwrap();
    assert!(read.content.contains("[REDACTED:API_TOKEN]") && !read.content.contains("s3cr3t"), "{read:?}");
    // The variable does not outlive the call, and the ledger holds no secret.
    assert_eq!(bash(&sandbox, "echo \"[${API_TOKEN:-unset}]\"").await.content, "[unset]\n");
    for entry in std::fs::read_dir(directory.path().join("ledger")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("s3cr3t-value-42"), "a ledger entry holds the secret");
    }
    // The replayed output is the scrubbed one.
    assert_eq!(sandbox.execute(with_secret("true", key)).await.unwrap().content, "token=[REDACTED:API_TOKEN]\n");
    let bad = sandbox
        .execute(ToolCall {
            name: "bash".into(),
            input_json: json!({ "command": "true" }).to_string(),
            idempotency_key: unique_key(),
            secrets: vec![Secret { name: "BAD NAME".into(), value: "x".into() }],
        })
        .await
        .unwrap();
    assert!(bad.is_error);
    sandbox.destroy().await.unwrap();
}
