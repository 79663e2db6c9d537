//! The OCI bundle (`config.json`) of an OCI sandbox, and the runc binary that runs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use super::workspace::WORKSPACE_MOUNT;
use super::{Limits, SandboxError};

/// Environment variable naming the runc binary; unset means `runc` on PATH.
pub const RUNC_ENV: &str = "AGENTD_RUNC";

/// Inside the container the shell runs as this unprivileged user (and group); the
/// workspace is handed to it on the host, where the same number means the same user
/// (the container has no user namespace).
pub(crate) const SANDBOX_UID: u32 = 1000;

/// The shell of the container; `scripts/oci-rootfs.sh` makes it busybox ash.
pub(crate) const SHELL_PATH: &str = "/bin/sh";

/// How long the probe container may take to start and exit.
const PROBE_TIMEOUT_MS: u64 = 5_000;

/// CPU time per period the container may use: one core, so a busy loop cannot take the host.
const CPU_QUOTA_US: i64 = 100_000;
const CPU_PERIOD_US: u64 = 100_000;
/// Relative CPU weight under contention (the cgroup v1 default is 1024).
const CPU_SHARES: u64 = 512;
/// Size of the container's `/dev` and `/dev/shm` tmpfs.
const DEV_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Open files per process.
const OPEN_FILES_MAX: u64 = 1024;

/// How to build the rootfs, for error messages.
const ROOTFS_HINT: &str = "build it with scripts/oci-rootfs.sh DIR (needs the `busybox-static` package)";

/// A usable runc binary.
#[derive(Debug, Clone)]
pub(crate) struct Runc {
    program: PathBuf,
}

impl Runc {
    /// The runc named by `AGENTD_RUNC`, else found on PATH (or in /usr/sbin, which root's
    /// PATH has but a service's may not).
    pub(crate) fn locate() -> Result<Runc, SandboxError> {
        if let Some(path) = std::env::var_os(RUNC_ENV) {
            let program = PathBuf::from(path);
            if !program.is_file() {
                return Err(SandboxError::Unavailable(format!(
                    "runc binary {} (from {RUNC_ENV}) does not exist: install the `runc` package \
                     (apt-get install runc)",
                    program.display()
                )));
            }
            return Ok(Runc { program });
        }
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|directory| directory.join("runc"))
            .find(|candidate| candidate.is_file())
            .map(|program| Runc { program })
            .ok_or_else(|| {
                SandboxError::Unavailable(
                    "runc was not found on PATH: install the `runc` package (apt-get install runc)".to_owned(),
                )
            })
    }

    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// Checks that `rootfs` looks like a rootfs from `scripts/oci-rootfs.sh`, then runs
    /// `/bin/true` in a container over it with a throwaway bundle and workspace.
    pub(crate) fn probe(&self, rootfs: &Path) -> Result<(), SandboxError> {
        check_rootfs(rootfs)?;
        let scratch = std::env::temp_dir().join(format!("agentd-oci-probe-{:016x}", rand::random::<u64>()));
        let result = self.probe_in(&scratch, rootfs);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn probe_in(&self, scratch: &Path, rootfs: &Path) -> Result<(), SandboxError> {
        let unavailable = |error: std::io::Error| SandboxError::Unavailable(format!("preparing the probe: {error}"));
        let workspace = scratch.join("workspace");
        std::fs::create_dir_all(&workspace).map_err(unavailable)?;
        let mut config = bundle_config(rootfs, &workspace, &Limits::default());
        config["process"]["args"] = json!(["/bin/true"]);
        let bundle = scratch.join("bundle");
        write_bundle(&bundle, &config).map_err(|error| SandboxError::Unavailable(error.to_string()))?;
        let container_id = format!("agentd-probe-{:016x}", rand::random::<u64>());
        let mut child = std::process::Command::new(&self.program)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&container_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| SandboxError::Unavailable(format!("cannot run {}: {error}", self.program.display())))?;
        let deadline = std::time::Instant::now() + Duration::from_millis(PROBE_TIMEOUT_MS);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.delete_blocking(&container_id);
                    return Err(SandboxError::Unavailable(format!(
                        "{} did not run a container within {PROBE_TIMEOUT_MS} ms",
                        self.program.display()
                    )));
                }
                Err(error) => return Err(SandboxError::Unavailable(format!("waiting for runc: {error}"))),
            }
        };
        self.delete_blocking(&container_id);
        if status.success() {
            return Ok(());
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        Err(SandboxError::Unavailable(format!(
            "runc cannot run a container here ({status}): {}; it needs root, cgroups and pid, mount, ipc, uts, \
             cgroup and network namespaces",
            stderr.trim()
        )))
    }

    /// Removes a container's state whatever it is doing; a missing container is fine.
    pub(crate) fn delete_blocking(&self, container_id: &str) {
        let _ = std::process::Command::new(&self.program)
            .args(["delete", "--force", container_id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

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
/// fresh namespaces (network too, unless `limits.network`) and cgroup limits.
pub(crate) fn bundle_config(rootfs: &Path, workspace: &Path, limits: &Limits) -> Value {
    let mut namespaces = vec![
        json!({ "type": "pid" }),
        json!({ "type": "ipc" }),
        json!({ "type": "uts" }),
        json!({ "type": "mount" }),
        json!({ "type": "cgroup" }),
    ];
    // An empty network namespace has only a loopback that is down: no network at all.
    if !limits.network {
        namespaces.push(json!({ "type": "network" }));
    }
    let no_capabilities: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": SANDBOX_UID, "gid": SANDBOX_UID },
            "args": [SHELL_PATH],
            "env": [
                "PATH=/bin:/sbin:/usr/bin",
                format!("HOME={WORKSPACE_MOUNT}"),
                "LANG=C.UTF-8",
                "TERM=dumb",
            ],
            "cwd": WORKSPACE_MOUNT,
            "capabilities": {
                "bounding": no_capabilities,
                "effective": no_capabilities,
                "inheritable": no_capabilities,
                "permitted": no_capabilities,
                "ambient": no_capabilities,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": OPEN_FILES_MAX, "soft": OPEN_FILES_MAX }],
            "noNewPrivileges": true,
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": "sandbox",
        "mounts": [
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
        ],
        "linux": {
            "resources": {
                "devices": [{ "allow": false, "access": "rwm" }],
                "memory": { "limit": limits.memory_bytes_max },
                "pids": { "limit": limits.pids_max },
                "cpu": { "shares": CPU_SHARES, "quota": CPU_QUOTA_US, "period": CPU_PERIOD_US },
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
