//! A runsc that never starts its container is cut off and cleaned up, and provisioning
//! says so. gVisor's kvm platform hangs on this machine kind's nested KVM, so a wrapper
//! that swaps agentd's `--platform=ptrace` for `--platform=kvm` gives a real runsc that
//! hangs. Its own test binary, because it sets `AGENTD_RUNSC` for the whole process.

#![allow(clippy::disallowed_methods, reason = "tests of real sandboxes on the host, timed by the wall clock")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentd_actors::sandbox::{ContainerRuntime, Limits, OciSandbox, SandboxError, GVISOR_STATE_ROOT, RUNSC_ENV};

const ROOTFS: &str = "/var/cache/agentd/oci-rootfs";
const RUNSC: &str = "/usr/bin/runsc";

/// Host processes of runsc on the kvm platform (only this test starts any).
fn kvm_runsc_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(command_line) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let command_line = String::from_utf8_lossy(&command_line).replace('\0', " ");
        if command_line.contains("runsc") && command_line.contains("--platform=kvm") {
            found.push(command_line);
        }
    }
    found
}

/// Probe containers' cgroups (pids hierarchy) and runsc state files.
fn probe_leftovers() -> Vec<PathBuf> {
    [Path::new("/sys/fs/cgroup/pids"), Path::new(GVISOR_STATE_ROOT)]
        .iter()
        .flat_map(|directory| std::fs::read_dir(directory).into_iter().flatten().flatten())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("agentd-probe-"))
        .map(|entry| entry.path())
        .collect()
}

fn new_probe_leftovers(before: &[PathBuf]) -> Vec<PathBuf> {
    probe_leftovers().into_iter().filter(|path| !before.contains(path)).collect()
}

#[tokio::test]
async fn a_runsc_start_that_hangs_fails_provisioning_and_leaves_nothing_behind() {
    if let Err(error) = OciSandbox::probe_with(ContainerRuntime::Gvisor, Path::new(ROOTFS)) {
        eprintln!("skipped: gVisor is unavailable here: {error}");
        return;
    }
    let directory = tempfile::tempdir().expect("a temporary directory");
    let wrapper = directory.path().join("runsc-kvm");
    let script = format!(
        "#!/bin/sh\nfor argument; do shift; [ \"$argument\" = --platform=ptrace ] && argument=--platform=kvm; \
         set -- \"$@\" \"$argument\"; done\nexec {RUNSC} \"$@\"\n"
    );
    std::fs::write(&wrapper, script).expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("make the wrapper executable");
    std::env::set_var(RUNSC_ENV, &wrapper);

    let before = probe_leftovers();
    let started = Instant::now();
    let result = OciSandbox::provision_with(
        ContainerRuntime::Gvisor,
        directory.path().join("session"),
        Limits::default(),
        ROOTFS.into(),
    )
    .await;
    let elapsed = started.elapsed();
    match result.map(|_sandbox| ()) {
        Ok(()) => {
            eprintln!("skipped: runsc's kvm platform works here, so nothing hangs");
            return;
        }
        Err(SandboxError::Unavailable(message)) => {
            assert!(message.contains("did not run a container within"), "{message}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(30), "provisioning took {elapsed:?}");
    // The sandbox and gofer are attached to `runsc run`: killing it ends them too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !kvm_runsc_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(kvm_runsc_processes(), Vec::<String>::new(), "runsc processes outlived the timeout");
    // Nor any cgroup or runsc state of the probe container. Other test binaries may run
    // runc probes (named alike) meanwhile: only names that were not there before and stay
    // count.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !new_probe_leftovers(&before).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(new_probe_leftovers(&before), Vec::<PathBuf>::new(), "the timed-out probe left these behind");
}
