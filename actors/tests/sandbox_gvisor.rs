//! Real gVisor (runsc) containers: the container tests shared with runc (in
//! `container_sandbox/`), plus what only gVisor does. Needs the `runsc` package and a
//! busybox rootfs (scripts/setup.sh installs both and builds the rootfs with
//! scripts/oci-rootfs.sh); each test is skipped, with the reason on stderr, only when
//! the probe says runsc cannot run a container here.

#![allow(clippy::disallowed_methods, reason = "tests of real sandboxes on the host, timed by the wall clock")]

#[macro_use]
mod container_sandbox;
mod sandbox_calls;

use agentd_actors::sandbox::{ContainerRuntime, Limits, Sandbox};
use container_sandbox::Driver;
use sandbox_calls::{assert_ok, bash};

container_sandbox_tests!(ContainerRuntime::Gvisor);

/// The shell really runs on gVisor's kernel, not the host's: it reports gVisor's
/// emulated Linux version and boot messages, and its limits come from the bundle.
#[tokio::test]
async fn the_shell_runs_on_gvisors_kernel_with_the_sandbox_limits() {
    let Some(driver) = Driver::available(ContainerRuntime::Gvisor, "the_shell_runs_on_gvisors_kernel") else {
        return;
    };
    let directory = tempfile::tempdir().unwrap();
    let limits = Limits { pids_max: 100, memory_bytes_max: 300 * 1024 * 1024, ..Limits::default() };
    let sandbox = driver.provision(directory.path(), limits).await;
    let output = bash(&sandbox, "dmesg | head -1; ulimit -u; grep MemTotal /proc/meminfo").await;
    assert_ok(&output);
    let mut lines = output.content.lines();
    assert!(lines.next().unwrap().contains("Starting gVisor"), "{}", output.content);
    // RLIMIT_NPROC is pids_max; the kernel's memory is the limit plus gVisor's own 64 MiB.
    assert_eq!(lines.next(), Some("100"), "{}", output.content);
    assert_eq!(lines.next().map(|line| line.split_whitespace().nth(1)), Some(Some("372736")), "{}", output.content);
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let sandbox_kernel = bash(&sandbox, "uname -r").await.content;
    assert_ne!(sandbox_kernel.trim(), host_kernel.trim(), "uname shows the host's kernel");
    sandbox.destroy().await.unwrap();
}
