//! The OCI runtimes that run a container sandbox (runc, gVisor's runsc) and their
//! command lines: where the binary is, which global flags every invocation gets, and
//! the probe that checks a container really starts here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentd_protocol::agent::SandboxDriver;
use serde_json::json;

use super::oci_bundle::{bundle_config, check_rootfs, write_bundle};
use crate::sandbox::{Limits, Network, SandboxError};

/// Environment variable naming the runc binary; unset means `runc` on PATH.
pub const RUNC_ENV: &str = "AGENTD_RUNC";
/// Environment variable naming the runsc (gVisor) binary; unset means `runsc` on PATH.
pub const RUNSC_ENV: &str = "AGENTD_RUNSC";
/// runsc's state directory (`--root`) for agentd's containers, apart from any other
/// runsc user's: `runsc --root /run/agentd/runsc list` shows them.
pub const GVISOR_STATE_ROOT: &str = "/run/agentd/runsc";

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long the probe container may take to start and exit (runsc takes about 0.25 s
/// here; a platform that hangs, like this machine's kvm, must not hang the caller).
const PROBE_TIMEOUT_MS: u64 = 10_000;

/// Which OCI runtime runs a container sandbox over the same bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerRuntime {
    /// runc: Linux namespaces and cgroups; the container's system calls reach the host kernel.
    Runc,
    /// gVisor's runsc on its ptrace platform: the container's system calls are served by
    /// gVisor's user-space kernel (the sentry), which itself runs under a seccomp filter.
    Gvisor,
}

impl ContainerRuntime {
    /// The sandbox driver that runs containers with this runtime.
    pub fn driver(self) -> SandboxDriver {
        match self {
            ContainerRuntime::Runc => SandboxDriver::Oci,
            ContainerRuntime::Gvisor => SandboxDriver::Gvisor,
        }
    }

    fn binary(self) -> &'static str {
        match self {
            ContainerRuntime::Runc => "runc",
            ContainerRuntime::Gvisor => "runsc",
        }
    }

    fn binary_env(self) -> &'static str {
        match self {
            ContainerRuntime::Runc => RUNC_ENV,
            ContainerRuntime::Gvisor => RUNSC_ENV,
        }
    }

    /// The Debian package that ships the binary (both are named after it).
    fn package(self) -> &'static str {
        self.binary()
    }

    /// What the runtime needs from the machine, for the probe's error message.
    fn needs(self) -> &'static str {
        match self {
            ContainerRuntime::Runc => "root, cgroups and pid, mount, ipc, uts, cgroup and network namespaces",
            ContainerRuntime::Gvisor => {
                "root, cgroups, namespaces and ptrace (its ptrace platform; the kvm platform is not used)"
            }
        }
    }
}

/// A located runtime binary and the global flags each of its invocations gets.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeCli {
    runtime: ContainerRuntime,
    program: PathBuf,
    global_arguments: Vec<OsString>,
}

impl RuntimeCli {
    /// The binary named by the runtime's environment variable, else found on PATH (or in
    /// /usr/sbin and /usr/bin, which root's PATH has but a service's may not).
    pub(crate) fn locate(runtime: ContainerRuntime) -> Result<RuntimeCli, SandboxError> {
        let search = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
        let program = find_program(runtime, std::env::var_os(runtime.binary_env()).map(PathBuf::from), search)?;
        let global_arguments = match runtime {
            ContainerRuntime::Runc => Vec::new(),
            // ptrace: systrap is absent from Debian's 2022 build and kvm hangs on this
            // machine kind's nested KVM.
            ContainerRuntime::Gvisor => {
                vec!["--root".into(), GVISOR_STATE_ROOT.into(), "--platform=ptrace".into()]
            }
        };
        Ok(RuntimeCli { runtime, program, global_arguments })
    }

    pub(crate) fn runtime(&self) -> ContainerRuntime {
        self.runtime
    }

    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments of `subcommand`, after the global flags.
    pub(crate) fn arguments<I, S>(&self, subcommand: I) -> Vec<OsString>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.global_arguments.iter().cloned().chain(subcommand.into_iter().map(Into::into)).collect()
    }

    /// The arguments that run the container `container_id` of `bundle` in the foreground
    /// (its stdio are the container process's). runsc chooses the container's network
    /// here: `none` gives it only its own loopback; `host` passes its sockets through the
    /// sentry to the host's network stack of the network namespace the sandbox runs in:
    /// the host's when the bundle names none (unrestricted), the sandbox's egress
    /// namespace when the bundle names it (an allowlist). runsc's own `sandbox` network
    /// would need a veth pair in a prepared namespace, which agentd does not set up.
    pub(crate) fn run_arguments(&self, bundle: &Path, container_id: &str, network: &Network) -> Vec<OsString> {
        let mut arguments = self.global_arguments.clone();
        if self.runtime == ContainerRuntime::Gvisor {
            let mode = if *network == Network::None { "--network=none" } else { "--network=host" };
            arguments.push(mode.into());
        }
        arguments.extend(["run".into(), "--bundle".into(), bundle.as_os_str().to_owned(), container_id.into()]);
        arguments
    }

    /// Makes the state directory the runtime keeps its containers in (runc's default
    /// exists already).
    fn prepare(&self) -> Result<(), SandboxError> {
        if self.runtime == ContainerRuntime::Gvisor {
            std::fs::create_dir_all(GVISOR_STATE_ROOT).map_err(|error| {
                SandboxError::Unavailable(format!("creating runsc's state directory {GVISOR_STATE_ROOT}: {error}"))
            })?;
        }
        Ok(())
    }

    /// [`RuntimeCli::probe`], unless a probe of this runtime already succeeded in this
    /// process. Failures are not remembered: once the operator installs what was missing,
    /// the next provisioning works.
    pub(crate) fn probe_once(&self, rootfs: &Path) -> Result<(), SandboxError> {
        static PROBED: Mutex<Vec<ContainerRuntime>> = Mutex::new(Vec::new());
        if PROBED.lock().is_ok_and(|probed| probed.contains(&self.runtime)) {
            return Ok(());
        }
        self.probe(rootfs)?;
        if let Ok(mut probed) = PROBED.lock() {
            probed.push(self.runtime);
        }
        Ok(())
    }

    /// Checks that `rootfs` looks like a rootfs from `scripts/oci-rootfs.sh`, then runs
    /// `/bin/true` in a container over it with a throwaway bundle and workspace.
    pub(crate) fn probe(&self, rootfs: &Path) -> Result<(), SandboxError> {
        check_rootfs(rootfs)?;
        self.prepare()?;
        let scratch = std::env::temp_dir().join(format!("agentd-oci-probe-{:016x}", rand::random::<u64>()));
        let result = self.probe_in(&scratch, rootfs);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn probe_in(&self, scratch: &Path, rootfs: &Path) -> Result<(), SandboxError> {
        let unavailable = |error: std::io::Error| SandboxError::Unavailable(format!("preparing the probe: {error}"));
        let workspace = scratch.join("workspace");
        std::fs::create_dir_all(&workspace).map_err(unavailable)?;
        let limits = Limits::default();
        let mut config = bundle_config(self.runtime, rootfs, &workspace, &limits, None);
        config["process"]["args"] = json!(["/bin/true"]);
        let bundle = scratch.join("bundle");
        write_bundle(&bundle, &config).map_err(|error| SandboxError::Unavailable(error.to_string()))?;
        let container_id = format!("agentd-probe-{:016x}", rand::random::<u64>());
        let binary = self.runtime.binary();
        let mut child = std::process::Command::new(&self.program)
            .args(self.run_arguments(&bundle, &container_id, &limits.network))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| SandboxError::Unavailable(format!("cannot run {}: {error}", self.program.display())))?;
        let deadline = Instant::now() + Duration::from_millis(PROBE_TIMEOUT_MS);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    self.kill_blocking(&container_id);
                    let _ = child.kill();
                    let _ = child.wait();
                    self.delete_blocking(&container_id);
                    return Err(SandboxError::Unavailable(format!(
                        "{} did not run a container within {PROBE_TIMEOUT_MS} ms",
                        self.program.display()
                    )));
                }
                Err(error) => return Err(SandboxError::Unavailable(format!("waiting for {binary}: {error}"))),
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
            "{binary} cannot run a container here ({status}): {}; it needs {} (package `{}`)",
            stderr.trim(),
            self.runtime.needs(),
            self.runtime.package()
        )))
    }

    fn kill_blocking(&self, container_id: &str) {
        self.quietly(&["kill", container_id, "KILL"]);
    }

    /// Removes a container's state whatever it is doing; a missing container is fine.
    pub(crate) fn delete_blocking(&self, container_id: &str) {
        self.quietly(&["delete", "--force", container_id]);
        self.remove_leftovers(container_id);
    }

    /// Removes what a container killed before the runtime recorded its state leaves
    /// behind, which `delete` cannot find: its (empty) cgroup directories, which both
    /// runtimes name after the container id, and runsc's lock file for it. A cgroup that
    /// still has processes cannot be removed, so a live container is never touched.
    pub(crate) fn remove_leftovers(&self, container_id: &str) {
        let root = Path::new(CGROUP_ROOT);
        let controllers = std::fs::read_dir(root).into_iter().flatten().flatten().map(|entry| entry.path());
        for cgroup in controllers.chain([root.to_path_buf()]).map(|directory| directory.join(container_id)) {
            let _ = std::fs::remove_dir(cgroup);
        }
        if self.runtime == ContainerRuntime::Gvisor {
            let lock = format!("{container_id}_sandbox:{container_id}.lock");
            let _ = std::fs::remove_file(Path::new(GVISOR_STATE_ROOT).join(lock));
        }
    }

    fn quietly(&self, subcommand: &[&str]) {
        let _ = std::process::Command::new(&self.program)
            .args(self.arguments(subcommand.iter().copied()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The runtime's binary: `explicit` (from its environment variable) if given, else the
/// first in `search`. The error names the package to install.
fn find_program(
    runtime: ContainerRuntime,
    explicit: Option<PathBuf>,
    search: impl Iterator<Item = PathBuf>,
) -> Result<PathBuf, SandboxError> {
    let (binary, package) = (runtime.binary(), runtime.package());
    let install = format!("install the `{package}` package (apt-get install {package})");
    match explicit {
        Some(program) if program.is_file() => Ok(program),
        Some(program) => Err(SandboxError::Unavailable(format!(
            "{binary} binary {} (from {}) does not exist: {install}",
            program.display(),
            runtime.binary_env()
        ))),
        None => search
            .map(|directory| directory.join(binary))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| SandboxError::Unavailable(format!("{binary} was not found on PATH: {install}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_package_to_install() {
        let empty = tempfile::tempdir().expect("a temporary directory");
        let search = || std::iter::once(empty.path().to_path_buf());
        let error = find_program(ContainerRuntime::Gvisor, None, search()).unwrap_err().to_string();
        assert!(error.contains("runsc was not found") && error.contains("apt-get install runsc"), "{error}");
        let error =
            find_program(ContainerRuntime::Runc, Some(empty.path().join("runc")), search()).unwrap_err().to_string();
        assert!(error.contains(RUNC_ENV) && error.contains("apt-get install runc"), "{error}");

        let program = empty.path().join("runsc");
        std::fs::write(&program, b"").expect("a stand-in binary");
        assert_eq!(find_program(ContainerRuntime::Gvisor, None, search()).ok(), Some(program));
    }
}
