//! The OCI bundle (`config.json`) of a container sandbox, for runc or gVisor's runsc.

use std::path::Path;

use serde_json::{json, Value};

use super::container_runtime::ContainerRuntime;
use crate::sandbox::call::WORKSPACE_MOUNT;
use crate::sandbox::egress::proxy_environment;
use crate::sandbox::resource_control::{cpu_quota_us, CPU_PERIOD_US};
use crate::sandbox::{Limits, Network, SandboxError};

/// Inside the container the shell runs as this unprivileged user (and group); the
/// workspace is handed to it on the host, where the same number means the same user
/// (the container has no user namespace).
pub(crate) const SANDBOX_UID: u32 = 1000;

/// The shell of the container; `scripts/oci-rootfs.sh` makes it busybox ash.
pub(crate) const SHELL_PATH: &str = "/bin/sh";

/// Relative CPU weight under contention (the cgroup v1 default is 1024).
const CPU_SHARES: u64 = 512;
/// Size of the container's `/dev` and `/dev/shm` tmpfs.
const DEV_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Open files per process.
const OPEN_FILES_MAX: u64 = 1024;
/// Memory that gVisor's own kernel (the sentry and its gofer) uses on top of the
/// sandbox's processes; the host cgroup's limit adds it to `Limits::memory_bytes_max`.
/// An idle sandbox takes about 15 MiB here, and each process some 100s of KiB more.
const GVISOR_KERNEL_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// Host tasks (sentry threads and ptrace stub processes) per process inside a gVisor
/// sandbox: about 9 were measured here (2 cores) with 200 processes; the host pids
/// cgroup is only a backstop, the sandbox's own process limit is RLIMIT_NPROC.
const GVISOR_HOST_TASKS_PER_PROCESS: u64 = 16;
/// Host tasks of an idle gVisor sandbox (about 40 measured) plus headroom.
const GVISOR_KERNEL_TASKS: u64 = 256;

/// How to build the rootfs, for error messages.
const ROOTFS_HINT: &str = "build it with scripts/oci-rootfs.sh DIR (needs the `busybox-static` package)";

/// Explains what is missing when `rootfs` cannot be the container's root.
pub(crate) fn check_rootfs(rootfs: &Path) -> Result<(), SandboxError> {
    if !rootfs.is_dir() {
        return Err(SandboxError::Unavailable(format!(
            "the OCI sandbox rootfs {} does not exist: {ROOTFS_HINT}",
            rootfs.display()
        )));
    }
    for needed in ["bin/sh", "etc/passwd", "tmp", "workspace"] {
        if std::fs::symlink_metadata(rootfs.join(needed)).is_err() {
            return Err(SandboxError::Unavailable(format!(
                "the OCI sandbox rootfs {} has no /{needed}: {ROOTFS_HINT}",
                rootfs.display()
            )));
        }
    }
    Ok(())
}

/// Writes `config` as `bundle/config.json`, creating `bundle`.
pub(crate) fn write_bundle(bundle: &Path, config: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let text = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    std::fs::write(bundle.join("config.json"), text)
}

/// The OCI runtime config of a sandbox: the shared `rootfs` read-only, the session's
/// `workspace` read-write at `/workspace`, an unprivileged shell without capabilities,
/// fresh namespaces and cgroup limits. The network namespace is a new empty one
/// (no network), the host's (unrestricted: none is named), or the sandbox's egress
/// namespace bound at `egress_namespace` (an allowlist; tools get the proxy variables).
///
/// Under gVisor the host cgroup holds gVisor's kernel as well as the sandbox's
/// processes, so its memory and pids limits get headroom for the kernel, and the
/// sandbox's process count is bounded inside gVisor by RLIMIT_NPROC (which gVisor's
/// kernel enforces per user of the sandbox; every process there is uid 1000).
pub(crate) fn bundle_config(
    runtime: ContainerRuntime,
    rootfs: &Path,
    workspace: &Path,
    limits: &Limits,
    egress_namespace: Option<&Path>,
) -> Value {
    let (namespaces, environment) = namespaces_and_environment(limits, egress_namespace);
    let (rlimits, memory_limit_bytes, pids_limit) = process_limits(runtime, limits);
    let no_capabilities: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": SANDBOX_UID, "gid": SANDBOX_UID },
            "args": [SHELL_PATH],
            "env": environment,
            "cwd": WORKSPACE_MOUNT,
            "capabilities": {
                "bounding": no_capabilities,
                "effective": no_capabilities,
                "inheritable": no_capabilities,
                "permitted": no_capabilities,
                "ambient": no_capabilities,
            },
            "rlimits": rlimits,
            "noNewPrivileges": true,
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": "sandbox",
        "mounts": mounts(workspace, limits),
        "linux": {
            "resources": {
                "devices": [{ "allow": false, "access": "rwm" }],
                "memory": { "limit": memory_limit_bytes },
                "pids": { "limit": pids_limit },
                "cpu": { "shares": CPU_SHARES, "quota": cpu_quota_us(limits), "period": CPU_PERIOD_US },
            },
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// The sandbox's namespaces and its shell's environment: the network
/// namespace is a new empty one (no network), the host's (unrestricted: none
/// is named), or the egress namespace (an allowlist; tools get the proxy variables).
fn namespaces_and_environment(limits: &Limits, egress_namespace: Option<&Path>) -> (Vec<Value>, Vec<String>) {
    let mut namespaces = vec![
        json!({ "type": "pid" }),
        json!({ "type": "ipc" }),
        json!({ "type": "uts" }),
        json!({ "type": "mount" }),
        json!({ "type": "cgroup" }),
    ];
    let mut environment: Vec<String> =
        ["PATH=/bin:/sbin:/usr/bin", &format!("HOME={WORKSPACE_MOUNT}"), "LANG=C.UTF-8", "TERM=dumb"]
            .map(str::to_owned)
            .to_vec();
    match (&limits.network, egress_namespace) {
        // A new network namespace has only a loopback: no network at all.
        (Network::None, _) | (Network::Allowlist(_), None) => namespaces.push(json!({ "type": "network" })),
        (Network::Unrestricted, _) => {}
        (Network::Allowlist(_), Some(path)) => {
            namespaces.push(json!({ "type": "network", "path": path }));
            environment.extend(proxy_environment().into_iter().map(|(name, value)| format!("{name}={value}")));
        }
    }
    (namespaces, environment)
}

/// The shell's rlimits, and the host cgroup's memory and pids limits (with
/// headroom for gVisor's kernel under gVisor).
fn process_limits(runtime: ContainerRuntime, limits: &Limits) -> (Vec<Value>, u64, u64) {
    let mut rlimits = vec![json!({ "type": "RLIMIT_NOFILE", "hard": OPEN_FILES_MAX, "soft": OPEN_FILES_MAX })];
    let (memory_limit_bytes, pids_limit) = match runtime {
        ContainerRuntime::Runc => (limits.memory_bytes_max, limits.pids_max),
        ContainerRuntime::Gvisor => {
            rlimits.push(json!({ "type": "RLIMIT_NPROC", "hard": limits.pids_max, "soft": limits.pids_max }));
            (
                limits.memory_bytes_max.saturating_add(GVISOR_KERNEL_MEMORY_BYTES),
                limits.pids_max.saturating_mul(GVISOR_HOST_TASKS_PER_PROCESS).saturating_add(GVISOR_KERNEL_TASKS),
            )
        }
    };
    (rlimits, memory_limit_bytes, pids_limit)
}

/// `/proc`, a small `/dev`, `/tmp` bounded like memory, and the workspace.
fn mounts(workspace: &Path, limits: &Limits) -> Value {
    json!([
        { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", format!("size={DEV_BYTES_MAX}")],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={DEV_BYTES_MAX}")],
        },
        // /tmp is memory: bounded like memory (its pages also count against the memory cgroup).
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", format!("size={}", limits.memory_bytes_max)],
        },
        {
            "destination": WORKSPACE_MOUNT,
            "type": "bind",
            "source": workspace,
            "options": ["rbind", "rw", "nosuid", "nodev"],
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_of(runtime: ContainerRuntime, cpu_millicores: u64) -> Value {
        let limits = Limits { cpu_millicores, ..Limits::default() };
        bundle_config(runtime, Path::new("/rootfs"), Path::new("/workspace"), &limits, None)["linux"]["resources"]
            ["cpu"]
            .clone()
    }

    #[test]
    fn the_cpu_quota_is_the_limit_and_the_shares_stay_half() {
        assert_eq!(Limits::default().cpu_millicores, 1000);
        for runtime in [ContainerRuntime::Runc, ContainerRuntime::Gvisor] {
            assert_eq!(cpu_of(runtime, 1000), json!({ "shares": 512, "quota": 100_000, "period": 100_000 }));
            assert_eq!(cpu_of(runtime, 2500), json!({ "shares": 512, "quota": 250_000, "period": 100_000 }));
        }
        // The kernel refuses quotas under 1 ms per period.
        assert_eq!(cpu_of(ContainerRuntime::Runc, 1)["quota"], json!(1_000));
        // The OCI spec's quota is signed: a huge limit stays in range.
        assert_eq!(cpu_of(ContainerRuntime::Runc, u64::MAX)["quota"], json!(1024 * 100_000));
    }
}
