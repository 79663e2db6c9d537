//! Real containers, for every container runtime: tools, idempotency, confinement and
//! limits over the same busybox rootfs. `sandbox_oci.rs` runs these tests under runc and
//! `sandbox_gvisor.rs` under gVisor's runsc, each through `container_sandbox_tests!`.
//! Where the runtimes really differ (how a write to the read-only root fails, what an
//! allocation past the memory limit kills) the test says which does what.
//!
//! Needs the runtime's package and the rootfs (scripts/setup.sh installs and builds
//! both). Each test is skipped, with the reason on stderr, only when
//! `OciSandbox::probe_with` says the runtime is unavailable here.

#![allow(clippy::unwrap_used)] // Test code, outside `#[test]` functions.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentd_actors::sandbox::{
    ContainerRuntime, Limits, Network, OciSandbox, Sandbox, Secret, ToolCall, GVISOR_STATE_ROOT,
};
use serde_json::json;

use crate::sandbox_calls::{
    assert_error, assert_ok, bash, bash_with_secrets, call, call_with_key, egress_reaches_only_listed_hosts,
    serve_hello, unique_key, EgressTargets,
};

/// Where scripts/setup.sh builds the rootfs; `AGENTD_OCI_ROOTFS` overrides it.
const DEFAULT_ROOTFS: &str = "/var/cache/agentd/oci-rootfs";

/// Defines one `#[tokio::test]` per shared test below, run under `$runtime`.
macro_rules! container_sandbox_tests {
    ($runtime:expr) => {
        container_sandbox_tests!(@each $runtime;
            bash_keeps_shell_state_between_calls_and_restarts,
            file_tools_share_the_workspace_with_bash,
            repeated_idempotency_key_runs_once_even_after_reprovisioning,
            bash_cannot_touch_the_host_system_or_a_sibling_session,
            network_is_off_unless_allowed,
            egress_allowlist_reaches_only_listed_hosts,
            fork_bomb_and_memory_hog_are_bounded_and_the_next_call_works,
            timeout_kills_the_command_and_the_next_call_works,
            output_is_capped_with_a_note,
            secrets_reach_the_command_and_never_its_recorded_output,
            destroy_stops_a_running_call_and_drop_removes_the_container
        );

        #[tokio::test]
        async fn probe_names_what_is_missing() {
            container_sandbox::probe_names_what_is_missing($runtime).await;
        }
    };
    (@each $runtime:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(driver) = container_sandbox::Driver::available($runtime, stringify!($name)) else {
                    return;
                };
                container_sandbox::$name(&driver).await;
            }
        )*
    };
}

/// A container runtime that can run here, and the rootfs it runs over.
pub struct Driver {
    pub runtime: ContainerRuntime,
    pub rootfs: PathBuf,
}

impl Driver {
    /// The driver if it can run here; otherwise prints why `test` is skipped.
    pub fn available(runtime: ContainerRuntime, test: &str) -> Option<Driver> {
        let rootfs =
            std::env::var_os("AGENTD_OCI_ROOTFS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS));
        match OciSandbox::probe_with(runtime, &rootfs) {
            Ok(()) => Some(Driver { runtime, rootfs }),
            Err(error) => {
                eprintln!("skipped: {test} ({}): {error}", runtime.driver());
                None
            }
        }
    }

    pub async fn provision(&self, root: &Path, limits: Limits) -> OciSandbox {
        OciSandbox::provision_with(self.runtime, root.to_path_buf(), limits, self.rootfs.clone())
            .await
            .expect("provision")
    }

    /// The runtime's command line, with the state directory agentd uses.
    pub fn cli(&self) -> std::process::Command {
        match self.runtime {
            ContainerRuntime::Runc => std::process::Command::new("runc"),
            ContainerRuntime::Gvisor => {
                let mut command = std::process::Command::new("runsc");
                command.args(["--root", GVISOR_STATE_ROOT]);
                command
            }
        }
    }

    /// How many of the runtime's containers run over `bundle`.
    pub fn containers_over(&self, bundle: &Path) -> usize {
        let list = self.cli().args(["list", "--quiet"]).output().expect("the runtime lists its containers");
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|id| {
                let state = self.cli().args(["state", id]).output();
                state.is_ok_and(|state| String::from_utf8_lossy(&state.stdout).contains(&*bundle.to_string_lossy()))
            })
            .count()
    }
}

pub async fn bash_keeps_shell_state_between_calls_and_restarts(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = driver.provision(directory.path(), Limits::default()).await;

    let output = bash(&sandbox, "mkdir -p sub && cd sub && export X=1").await;
    assert_ok(&output);
    let output = bash(&sandbox, "pwd; echo $X; echo $HOME; id -u").await;
    assert_eq!(output.content, "/workspace/sub\n1\n/workspace\n1000\n");

    let output = bash(&sandbox, "echo to-stderr >&2; exit_code_test() { return 3; }; exit_code_test").await;
    assert_error(&output);
    assert!(output.content.contains("to-stderr"), "{}", output.content);
    assert!(output.content.contains("[exit code 3]"), "{}", output.content);

    assert_ok(&call(&sandbox, "bash", json!({ "restart": true })).await);
    assert_eq!(bash(&sandbox, "pwd; echo ${X:-unset}").await.content, "/workspace\nunset\n");

    // Hostile framing through busybox ash: unbalanced quotes, a heredoc, stdin, a fake sentinel, escapes.
    assert_error(&bash(&sandbox, "echo 'unterminated").await);
    let output = bash(&sandbox, "cat <<EOF\nline one\nEOF\ncat; echo __agentd_done_x__ 0").await;
    assert_eq!(output.content, "line one\n__agentd_done_x__ 0\n");
    let output = bash(&sandbox, "printf '%s\\n' \"it's a \\\\ back\tslash ü\"").await;
    assert_eq!(output.content, "it's a \\ back\tslash ü\n");
    assert_eq!(bash(&sandbox, "bash -c 'echo via-bash'").await.content, "via-bash\n");

    // `exit` ends the container's shell: an error now, a fresh container next time.
    let output = bash(&sandbox, "cd sub; exit 4").await;
    assert_error(&output);
    assert!(output.content.contains("shell exited"), "{}", output.content);
    assert_eq!(bash(&sandbox, "pwd").await.content, "/workspace\n");
    sandbox.destroy().await.unwrap();
    assert!(sandbox
        .execute(ToolCall {
            name: "bash".into(),
            input_json: json!({ "command": "true" }).to_string(),
            idempotency_key: String::new(),
            secrets: vec![],
        })
        .await
        .is_err());
}

pub async fn file_tools_share_the_workspace_with_bash(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = driver.provision(directory.path(), Limits::default()).await;

    assert_ok(&call(&sandbox, "write", json!({ "file_path": "src/b.rs", "content": "fn beta() {}\n" })).await);
    assert_eq!(bash(&sandbox, "cat src/b.rs").await.content, "fn beta() {}\n");
    // What the file tools create belongs to the container's user, so bash can change it.
    assert_ok(&bash(&sandbox, "echo '// more' >> src/b.rs && printf 'alpha\\nBETA\\n' > /workspace/a.txt").await);
    let output = call(&sandbox, "read", json!({ "file_path": "/workspace/src/b.rs" })).await;
    assert_ok(&output);
    assert!(output.content.contains("fn beta() {}") && output.content.contains("// more"), "{}", output.content);
    let edit = json!({ "file_path": "a.txt", "old_string": "alpha", "new_string": "gamma" });
    assert_ok(&call(&sandbox, "edit", edit).await);
    // The container sees the host's edit at once (gVisor does not cache the workspace).
    assert_eq!(bash(&sandbox, "cat a.txt").await.content, "gamma\nBETA\n");
    let output = call(&sandbox, "glob", json!({ "pattern": "**/*.rs" })).await;
    assert_ok(&output);
    assert!(output.content.contains("src/b.rs"), "{}", output.content);
    let output = call(&sandbox, "grep", json!({ "pattern": "BETA" })).await;
    assert_eq!(output.content, "a.txt:2:BETA\n");
    assert_error(&call(&sandbox, "read", json!({ "file_path": "/etc/passwd" })).await);
    assert_error(&call(&sandbox, "write", json!({ "file_path": "../escape", "content": "x" })).await);
    assert_error(&call(&sandbox, "teleport", json!({})).await);
    sandbox.destroy().await.unwrap();
}

pub async fn repeated_idempotency_key_runs_once_even_after_reprovisioning(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let command = json!({ "command": "echo x >> log; wc -l < log" });
    let sandbox = driver.provision(directory.path(), Limits::default()).await;
    let first = call_with_key(&sandbox, "bash", command.clone(), "call-1").await;
    assert_ok(&first);
    assert_eq!(first.content.trim(), "1");
    assert_eq!(call_with_key(&sandbox, "bash", command.clone(), "call-1").await, first);
    let log = directory.path().join("workspace/log");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\n");
    sandbox.destroy().await.unwrap();
    drop(sandbox);

    // A new sandbox over the same root (a restarted node) still knows the key.
    let sandbox = driver.provision(directory.path(), Limits::default()).await;
    assert_eq!(call_with_key(&sandbox, "bash", command.clone(), "call-1").await, first);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\n");
    let second = call_with_key(&sandbox, "bash", command, "call-2").await;
    assert_eq!(second.content.trim(), "2");

    // A call that started but never finished (a crash) is answered as interrupted, not run.
    use sha2::Digest;
    let name: String = sha2::Sha256::digest(b"cut-off").iter().map(|byte| format!("{byte:02x}")).collect();
    std::fs::write(directory.path().join("ledger").join(format!("{name}.started")), b"").unwrap();
    let output = call_with_key(&sandbox, "bash", json!({ "command": "echo ran >> log" }), "cut-off").await;
    assert_error(&output);
    assert!(output.content.contains("interrupted"), "{}", output.content);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\nx\n");
    sandbox.destroy().await.unwrap();
}

pub async fn bash_cannot_touch_the_host_system_or_a_sibling_session(driver: &Driver) {
    let parent = tempfile::tempdir().unwrap();
    let first = driver.provision(&parent.path().join("session-a"), Limits::default()).await;
    let second = driver.provision(&parent.path().join("session-b"), Limits::default()).await;
    crate::sandbox_calls::sibling_workspace_is_out_of_reach(&first, &second, &parent.path().join("session-b")).await;

    // The root is mounted read-only. runc answers a write to it with EROFS; gVisor checks
    // the (root-owned) directory's permissions first, so creating a file there is EACCES.
    let output = bash(&first, "awk '$2 == \"/\" { split($4, options, \",\"); print options[1] }' /proc/mounts").await;
    assert_eq!(output.content, "ro\n");
    for command in ["touch /usr/agentd-test", "touch /etc/agentd-test", "touch /bin/x", "mkdir /agentd-test"] {
        let output = bash(&first, command).await;
        assert_error(&output);
        assert!(
            output.content.contains("Read-only file system") || output.content.contains("Permission denied"),
            "{command}: {}",
            output.content
        );
    }
    for written in ["usr/agentd-test", "etc/agentd-test", "bin/x", "agentd-test"] {
        assert!(!driver.rootfs.join(written).exists(), "{written} was written to the rootfs");
    }
    // The host's /etc/shadow (and the rest of the host) is not in the container at all.
    assert!(Path::new("/etc/shadow").exists());
    let output = bash(&first, "ls /etc/shadow").await;
    assert_error(&output);
    assert!(output.content.contains("No such file"), "{}", output.content);
    let output = bash(&first, "grep CapEff /proc/self/status; ps -o pid | wc -l").await;
    assert_ok(&output);
    assert!(output.content.starts_with("CapEff:\t0000000000000000\n"), "{}", output.content);
    let processes: u32 = output.content.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(processes < 10, "host processes visible: {}", output.content);
    first.destroy().await.unwrap();
    second.destroy().await.unwrap();
}

pub async fn network_is_off_unless_allowed(driver: &Driver) {
    let (port, connections) = serve_hello("127.0.0.1");
    // busybox nc, not wget: the static busybox's wget crashes resolving even a numeric address.
    let fetch = format!("echo GET | nc 127.0.0.1 {port}");

    let directory = tempfile::tempdir().unwrap();
    let sandbox = driver.provision(&directory.path().join("offline"), Limits::default()).await;
    let output = bash(&sandbox, &fetch).await;
    assert_error(&output);
    assert!(!output.content.contains("hello"), "{}", output.content);
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the host server was reached from the sandbox");
    sandbox.destroy().await.unwrap();

    // The same command works with the network allowed, so the check above can fail.
    let limits = Limits { network: Network::Unrestricted, ..Limits::default() };
    let online = driver.provision(&directory.path().join("online"), limits).await;
    let output = bash(&online, &fetch).await;
    assert_ok(&output);
    assert!(output.content.ends_with("hello"), "{}", output.content);
    online.destroy().await.unwrap();
}

pub async fn egress_allowlist_reaches_only_listed_hosts(driver: &Driver) {
    let targets = EgressTargets::start();
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path().join("limited");
    let sandbox = driver.provision(&root, Limits { network: targets.network(), ..Limits::default() }).await;
    // busybox ash has no /dev/tcp: nc speaks to the proxy.
    let to_proxy = |request: &str| format!("printf '{request}' | nc 127.0.0.1 3128");
    let direct = |port: u16| format!("echo GET | nc 127.0.0.2 {port} && echo connected");
    egress_reaches_only_listed_hosts(&sandbox, &targets, to_proxy, direct).await;
    assert!(root.join("netns").exists());
    sandbox.destroy().await.unwrap();
    assert!(!root.join("netns").exists(), "destroy left the sandbox's network namespace bound");
}

pub async fn fork_bomb_and_memory_hog_are_bounded_and_the_next_call_works(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let limits = Limits { pids_max: 64, memory_bytes_max: 256 * 1024 * 1024, ..Limits::default() };
    let sandbox = driver.provision(directory.path(), limits).await;
    // The container's processes hit pids_max (runc: the pids cgroup; gVisor: RLIMIT_NPROC
    // in its kernel): forks fail inside (ash gives up, status 2), and the builtin
    // `kill -9 -1` frees the container again without forking.
    let spawn = "sh -c 'i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done' 2>/dev/null; \
                 echo status $?; kill -9 -1; echo freed";
    let output = bash(&sandbox, spawn).await;
    assert!(output.content.starts_with("status 2\nfreed"), "pids_max not enforced: {}", output.content);
    let output = call(&sandbox, "bash", json!({ "command": "f() { f | f & }; f; sleep 5", "timeout_ms": 2_000 })).await;
    assert_error(&output);
    assert_eq!(bash(&sandbox, "echo alive").await.content, "alive\n");

    // Memory: dd's 400 MB block outgrows the 256 MB limit as /dev/zero fills it.
    assert_ok(&bash(&sandbox, "export BEFORE=kept").await);
    let output = bash(&sandbox, "dd if=/dev/zero of=/dev/null bs=400M count=1 2>/dev/null && echo survived").await;
    assert_error(&output);
    assert!(!output.content.contains("survived"), "memory_bytes_max not enforced: {}", output.content);
    let after = bash(&sandbox, "echo ${BEFORE:-fresh}").await;
    match driver.runtime {
        // The container's OOM killer takes the biggest process, dd; the shell lives on.
        ContainerRuntime::Runc => {
            assert!(output.content.contains("[exit code 137]"), "{}", output.content);
            assert_eq!(after.content, "kept\n");
        }
        // The host's OOM killer takes gVisor's kernel, so the whole sandbox dies with dd;
        // the next call gets a fresh one.
        ContainerRuntime::Gvisor => {
            assert!(output.content.contains("shell exited"), "{}", output.content);
            assert_eq!(after.content, "fresh\n");
        }
    }
    sandbox.destroy().await.unwrap();
}

pub async fn timeout_kills_the_command_and_the_next_call_works(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = driver.provision(directory.path(), Limits::default()).await;
    crate::sandbox_calls::timeout_kills_the_command_and_the_next_call_works(&sandbox).await;
    sandbox.destroy().await.unwrap();
}

pub async fn output_is_capped_with_a_note(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = driver.provision(directory.path(), Limits::default()).await;
    let output = bash(&sandbox, "yes | head -c 10000000").await;
    assert_ok(&output);
    assert!(output.content.len() < 100 * 1024 + 200, "{} bytes kept", output.content.len());
    assert!(output.content.starts_with("y\ny\n"));
    assert!(output.content.contains("[output truncated: 9897600 bytes dropped"), "{}", output.content.len());
    assert_eq!(bash(&sandbox, "echo next").await.content, "next\n");
    sandbox.destroy().await.unwrap();
}

pub async fn secrets_reach_the_command_and_never_its_recorded_output(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = driver.provision(directory.path(), Limits::default()).await;
    let secret = Secret { name: "API_TOKEN".into(), value: "s3cr3t 'value' 42".into() };
    let key = unique_key();
    let with_secret = |command: &str, key: String| bash_with_secrets(command, key, vec![secret.clone()]);
    let output = sandbox
        .execute(with_secret("echo token=$API_TOKEN; echo \"$API_TOKEN\" > leaked.txt", key.clone()))
        .await
        .unwrap();
    assert_eq!(output.content, "token=[REDACTED:API_TOKEN]\n");
    assert_eq!(std::fs::read_to_string(directory.path().join("workspace/leaked.txt")).unwrap(), "s3cr3t 'value' 42\n");
    assert_eq!(bash(&sandbox, "echo \"[${API_TOKEN:-unset}]\"").await.content, "[unset]\n");
    for entry in std::fs::read_dir(directory.path().join("ledger")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("s3cr3t"), "a ledger entry holds the secret");
    }
    assert_eq!(sandbox.execute(with_secret("true", key)).await.unwrap().content, "token=[REDACTED:API_TOKEN]\n");
    sandbox.destroy().await.unwrap();
}

pub async fn probe_names_what_is_missing(runtime: ContainerRuntime) {
    let error = OciSandbox::probe_with(runtime, Path::new("/nonexistent/agentd-rootfs")).unwrap_err().to_string();
    assert!(error.contains("oci-rootfs.sh") || error.contains("apt-get install"), "{error}");
    let directory = tempfile::tempdir().unwrap();
    let result =
        OciSandbox::provision_with(runtime, directory.path().join("s"), Limits::default(), "/nonexistent/x".into())
            .await;
    assert!(result.is_err());
}

pub async fn destroy_stops_a_running_call_and_drop_removes_the_container(driver: &Driver) {
    let directory = tempfile::tempdir().unwrap();
    let sandbox = std::sync::Arc::new(driver.provision(&directory.path().join("a"), Limits::default()).await);
    let running = {
        let sandbox = std::sync::Arc::clone(&sandbox);
        tokio::spawn(async move { bash(&*sandbox, "echo started; sleep 60").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    sandbox.destroy().await.unwrap();
    let output = running.await.unwrap();
    assert_error(&output);
    assert!(output.content.contains("destroyed"), "{}", output.content);
    assert!(started.elapsed() < Duration::from_secs(30));

    // Dropping a sandbox with a live shell kills and deletes its container.
    let dropped = driver.provision(&directory.path().join("b"), Limits::default()).await;
    assert_ok(&bash(&dropped, "true").await);
    // Other tests run containers at the same time: count only those over this bundle.
    let bundle = directory.path().join("b/bundle");
    assert_eq!(driver.containers_over(&bundle), 1, "the live container of {} was not listed", bundle.display());
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(10);
    while driver.containers_over(&bundle) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(driver.containers_over(&bundle), 0, "the dropped sandbox's container is still there");
}
