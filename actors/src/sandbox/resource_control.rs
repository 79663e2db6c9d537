//! How a sandbox's memory, process and CPU limits are enforced: a cgroup if the
//! host lets us create one, else per-process rlimits (and no CPU limit).

use std::path::{Path, PathBuf};
use std::sync::Once;

use super::Limits;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The host user ("nobody") a root-run sandbox switches to under the rlimit fallback.
/// RLIMIT_NPROC counts all processes of this user, so fallback sandboxes share one budget.
const RLIMIT_HOST_USER: u32 = 65534;
/// How long `remove` waits for a destroyed sandbox's cgroups to empty.
const CGROUP_REMOVE_WAIT_MS: u64 = 5_000;
/// The CFS period of a sandbox's CPU quota (the kernel's default period).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts: 1 ms per period (10 millicores).
const CPU_QUOTA_US_MIN: u64 = 1_000;
/// The largest quota set: 1024 cores, more than any host has (and within what the
/// kernel and the OCI spec's signed quota accept).
const CPU_QUOTA_US_MAX: u64 = 1024 * CPU_PERIOD_US;

/// Said once per process: every sandbox of a host lacks the cpu controller alike.
static NO_CPU_LIMIT_WARNING: Once = Once::new();

/// CPU time per [`CPU_PERIOD_US`] that `limits` gives all processes of a sandbox together.
pub(crate) fn cpu_quota_us(limits: &Limits) -> u64 {
    limits.cpu_millicores.saturating_mul(CPU_PERIOD_US / 1000).clamp(CPU_QUOTA_US_MIN, CPU_QUOTA_US_MAX)
}

/// The enforcement chosen for one sandbox at provision time.
#[derive(Debug)]
pub(crate) enum ResourceControl {
    /// The sandbox's processes join these cgroups (v1: one per controller; v2: one).
    /// Memory and pids are limited for all processes of the sandbox together, and CPU
    /// time too if `cpu_limited` (the host may not offer the cpu controller).
    Cgroup { directories: Vec<PathBuf>, cpu_limited: bool },
    /// No writable cgroup: `prlimit` sets RLIMIT_AS (per process) and RLIMIT_NPROC
    /// (per host user) on the sandbox's first process, and CPU time is not limited.
    /// The kernel does not apply RLIMIT_NPROC to root, so when this process is root
    /// the sandbox runs as the unprivileged host user `host_user` (via `setpriv`),
    /// which then owns the workspace.
    Rlimit { address_space_bytes: u64, processes: u64, host_user: Option<u32> },
}

impl ResourceControl {
    /// Creates the sandbox's cgroups named `name`, falling back to rlimits with the reason logged.
    pub(crate) fn create(name: &str, limits: &Limits) -> ResourceControl {
        let attempt = if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            create_v2(name, limits)
        } else {
            create_v1(name, limits)
        };
        match attempt {
            Ok(control) => control,
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "no writable cgroup; falling back to rlimits (RLIMIT_AS per process, RLIMIT_NPROC; no CPU limit)"
                );
                ResourceControl::rlimits(limits)
            }
        }
    }

    /// Forces the rlimit fallback (for hosts, and tests, that must not use cgroups).
    pub(crate) fn rlimits(limits: &Limits) -> ResourceControl {
        let host_user = (effective_uid() == Some(0)).then_some(RLIMIT_HOST_USER);
        ResourceControl::Rlimit { address_space_bytes: limits.memory_bytes_max, processes: limits.pids_max, host_user }
    }

    /// The host user that must own the workspace, if the sandbox does not run as this process's user.
    pub(crate) fn host_user(&self) -> Option<u32> {
        match self {
            ResourceControl::Rlimit { host_user, .. } => *host_user,
            ResourceControl::Cgroup { .. } => None,
        }
    }

    /// Whether the sandbox's CPU time is limited (by a cpu cgroup).
    pub(crate) fn limits_cpu(&self) -> bool {
        matches!(self, ResourceControl::Cgroup { cpu_limited: true, .. })
    }

    /// Whether the cgroups still exist (a host cleanup may have removed them), so that
    /// the next shell can join them.
    pub(crate) fn check(&self) -> Result<(), String> {
        let ResourceControl::Cgroup { directories, .. } = self else { return Ok(()) };
        match directories.iter().find(|directory| !directory.is_dir()) {
            Some(missing) => Err(format!("the sandbox's cgroup {} is gone", missing.display())),
            None => Ok(()),
        }
    }

    /// A short description for logs and docs.
    pub(crate) fn describe(&self) -> String {
        match self {
            ResourceControl::Cgroup { directories, cpu_limited: true } => format!("cgroups {directories:?}"),
            ResourceControl::Cgroup { directories, cpu_limited: false } => {
                format!("cgroups {directories:?} (no CPU limit: no cpu controller)")
            }
            ResourceControl::Rlimit { host_user: Some(user), .. } => {
                format!("rlimits (RLIMIT_AS, RLIMIT_NPROC; no CPU limit) as host user {user}")
            }
            ResourceControl::Rlimit { host_user: None, .. } => {
                "rlimits (RLIMIT_AS, RLIMIT_NPROC; no CPU limit)".to_owned()
            }
        }
    }

    /// The host command that puts itself under these limits, then execs `program args...`.
    /// Returns (program, arguments).
    pub(crate) fn wrap(&self, program: &Path, arguments: Vec<String>) -> (PathBuf, Vec<String>) {
        match self {
            ResourceControl::Cgroup { directories, .. } => {
                // The shell joins the cgroups before exec, so every process bwrap forks starts inside them.
                let mut wrapped = vec![
                    "-c".to_owned(),
                    r#"while [ "$1" != "--" ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; shift; exec "$@""#
                        .to_owned(),
                    "agentd-sandbox".to_owned(),
                ];
                wrapped.extend(directories.iter().map(|directory| directory.to_string_lossy().into_owned()));
                wrapped.push("--".to_owned());
                wrapped.push(program.to_string_lossy().into_owned());
                wrapped.extend(arguments);
                (PathBuf::from("/bin/sh"), wrapped)
            }
            ResourceControl::Rlimit { address_space_bytes, processes, host_user } => {
                let mut wrapped = Vec::new();
                if let Some(user) = host_user {
                    wrapped.extend([
                        format!("--reuid={user}"),
                        format!("--regid={user}"),
                        "--clear-groups".to_owned(),
                        "--".to_owned(),
                        "/usr/bin/prlimit".to_owned(),
                    ]);
                }
                wrapped.extend([
                    format!("--as={address_space_bytes}"),
                    format!("--nproc={processes}"),
                    "--".to_owned(),
                    program.to_string_lossy().into_owned(),
                ]);
                wrapped.extend(arguments);
                let launcher = if host_user.is_some() { "/usr/bin/setpriv" } else { "/usr/bin/prlimit" };
                (PathBuf::from(launcher), wrapped)
            }
        }
    }

    /// Waits (up to `timeout`) until no process is left in the cgroups: a killed
    /// sandbox's processes are reaped asynchronously and still count against pids.max.
    pub(crate) async fn wait_until_empty(&self, timeout: std::time::Duration) {
        let ResourceControl::Cgroup { directories, .. } = self else { return };
        let deadline = tokio::time::Instant::now() + timeout;
        let occupied = || {
            directories.iter().any(|directory| {
                std::fs::read_to_string(directory.join("cgroup.procs")).is_ok_and(|procs| !procs.trim().is_empty())
            })
        };
        while occupied() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Removes the cgroups. Their processes must already be dead; retries for a while
    /// because the kernel reaps a killed PID namespace asynchronously.
    pub(crate) async fn remove(&self) {
        let ResourceControl::Cgroup { directories, .. } = self else { return };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(CGROUP_REMOVE_WAIT_MS);
        for directory in directories {
            loop {
                match std::fs::remove_dir(directory) {
                    Ok(()) => break,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                    Err(error) if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(directory = %directory.display(), %error, "could not remove sandbox cgroup");
                        break;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            }
        }
    }
}

/// This process's effective uid, from /proc/self/status.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The cgroup path of this process for `controller` ("" for v2), from /proc/self/cgroup.
fn own_cgroup(controller: &str) -> Result<String, String> {
    let table = std::fs::read_to_string("/proc/self/cgroup").map_err(|error| format!("/proc/self/cgroup: {error}"))?;
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let matches = if controller.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|name| name == controller)
            };
            matches.then(|| path.to_owned())
        })
        .next()
        .ok_or_else(|| format!("this process has no {controller:?} cgroup"))
}

fn create_child(parent: PathBuf, name: &str) -> Result<PathBuf, String> {
    let directory = parent.join(name);
    match std::fs::create_dir(&directory) {
        Ok(()) => Ok(directory),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(directory),
        Err(error) => Err(format!("creating {}: {error}", directory.display())),
    }
}

fn write_setting(directory: &Path, file: &str, value: &str) -> Result<(), String> {
    let path = directory.join(file);
    std::fs::write(&path, value).map_err(|error| format!("writing {value} to {}: {error}", path.display()))
}

/// Logs, once per process, that sandboxes run without a CPU limit, and why.
fn warn_no_cpu_limit(reason: &str) {
    NO_CPU_LIMIT_WARNING.call_once(|| {
        tracing::warn!(%reason, "no cpu cgroup controller; sandboxes run without a CPU limit");
    });
}

/// cgroup v1 (and the hybrid layout): a child of this process's own memory and pids cgroups,
/// so the sandbox stays inside whatever limits the host already puts on us, and of its cpu
/// cgroup if the host mounts that controller (without it, no CPU limit).
fn create_v1(name: &str, limits: &Limits) -> Result<ResourceControl, String> {
    let memory_parent = Path::new(CGROUP_ROOT).join("memory").join(own_cgroup("memory")?.trim_start_matches('/'));
    let pids_parent = Path::new(CGROUP_ROOT).join("pids").join(own_cgroup("pids")?.trim_start_matches('/'));
    let memory = create_child(memory_parent, name)?;
    let pids = create_child(pids_parent, name).inspect_err(|_| {
        let _ = std::fs::remove_dir(&memory);
    })?;
    let configure = || -> Result<(), String> {
        write_setting(&memory, "memory.limit_in_bytes", &limits.memory_bytes_max.to_string())?;
        // Without swap accounting the file is absent; the memory limit still applies to RAM.
        if memory.join("memory.memsw.limit_in_bytes").exists() {
            write_setting(&memory, "memory.memsw.limit_in_bytes", &limits.memory_bytes_max.to_string())?;
        }
        write_setting(&pids, "pids.max", &limits.pids_max.to_string())
    };
    configure().inspect_err(|_| {
        let _ = std::fs::remove_dir(&memory);
        let _ = std::fs::remove_dir(&pids);
    })?;
    let mut directories = vec![memory, pids];
    let cpu_limited = match create_v1_cpu(name, limits) {
        Ok(cpu) => {
            directories.push(cpu);
            true
        }
        Err(reason) => {
            warn_no_cpu_limit(&reason);
            false
        }
    };
    Ok(ResourceControl::Cgroup { directories, cpu_limited })
}

/// A child of this process's v1 cpu cgroup with a CFS quota of `limits.cpu_millicores`.
fn create_v1_cpu(name: &str, limits: &Limits) -> Result<PathBuf, String> {
    let mount = Path::new(CGROUP_ROOT).join("cpu");
    if !mount.join("cpu.cfs_quota_us").exists() {
        return Err(format!("{} is not a cgroup v1 cpu controller", mount.display()));
    }
    let cpu = create_child(mount.join(own_cgroup("cpu")?.trim_start_matches('/')), name)?;
    let configure = || -> Result<(), String> {
        write_setting(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
        write_setting(&cpu, "cpu.cfs_quota_us", &cpu_quota_us(limits).to_string())
    };
    configure().inspect_err(|_| {
        let _ = std::fs::remove_dir(&cpu);
    })?;
    Ok(cpu)
}

/// cgroup v2: a child of this process's cgroup with memory.max and pids.max, and cpu.max
/// if the parent delegates the cpu controller (without it, no CPU limit). Fails (and the
/// caller falls back) when the parent does not delegate memory and pids.
fn create_v2(name: &str, limits: &Limits) -> Result<ResourceControl, String> {
    let parent = Path::new(CGROUP_ROOT).join(own_cgroup("")?.trim_start_matches('/'));
    let directory = create_child(parent, name)?;
    let configure = || -> Result<(), String> {
        write_setting(&directory, "memory.max", &limits.memory_bytes_max.to_string())?;
        if directory.join("memory.swap.max").exists() {
            write_setting(&directory, "memory.swap.max", "0")?;
        }
        write_setting(&directory, "pids.max", &limits.pids_max.to_string())
    };
    configure().inspect_err(|_| {
        let _ = std::fs::remove_dir(&directory);
    })?;
    let cpu_limited = match configure_v2_cpu(&directory, limits) {
        Ok(()) => true,
        Err(reason) => {
            warn_no_cpu_limit(&reason);
            false
        }
    };
    Ok(ResourceControl::Cgroup { directories: vec![directory], cpu_limited })
}

/// Sets `cpu.max` ("quota period") if the cgroup has the cpu controller.
fn configure_v2_cpu(directory: &Path, limits: &Limits) -> Result<(), String> {
    let controllers = std::fs::read_to_string(directory.join("cgroup.controllers"))
        .map_err(|error| format!("reading {}/cgroup.controllers: {error}", directory.display()))?;
    if !controllers.split_whitespace().any(|controller| controller == "cpu") {
        return Err(format!("the parent of {} does not delegate the cpu controller", directory.display()));
    }
    write_setting(directory, "cpu.max", &format!("{} {CPU_PERIOD_US}", cpu_quota_us(limits)))
}
