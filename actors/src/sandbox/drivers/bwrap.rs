//! The bubblewrap command line of a namespace sandbox, and the check that it runs here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::sandbox::call::WORKSPACE_MOUNT;
use crate::sandbox::egress::proxy_environment;
use crate::sandbox::{Limits, Network, SandboxError};

/// Environment variable naming the bwrap binary; unset means `bwrap` on PATH.
pub const BWRAP_ENV: &str = "AGENTD_BWRAP";

/// How long the probe sandbox may take to start and exit.
const PROBE_TIMEOUT_MS: u64 = 5_000;

/// Host directories bound read-only when they are directories (symlinks are recreated as symlinks).
const SYSTEM_DIRECTORIES: [&str; 5] = ["/usr", "/bin", "/sbin", "/lib", "/lib64"];

/// Files and directories of /etc that programs need. The rest of /etc (shadow,
/// ssh keys, host secrets) stays invisible.
const ETC_ENTRIES: [&str; 14] = [
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/bash.bashrc",
];

/// Inside the sandbox, the shell runs as this unprivileged user of its own user namespace.
const SANDBOX_UID: &str = "1000";

/// A usable bwrap binary.
#[derive(Debug, Clone)]
pub(crate) struct Bwrap {
    program: PathBuf,
}

impl Bwrap {
    /// The bwrap named by `AGENTD_BWRAP`, else found on PATH, checked by starting a sandbox.
    pub(crate) fn locate() -> Result<Bwrap, SandboxError> {
        match std::env::var_os(BWRAP_ENV) {
            Some(path) => Bwrap::probe_at(Path::new(&path)),
            None => {
                let found = std::env::var_os("PATH")
                    .into_iter()
                    .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                    .map(|directory| directory.join("bwrap"))
                    .find(|candidate| candidate.is_file());
                match found {
                    Some(program) => Bwrap::probe_at(&program),
                    None => Err(SandboxError::Unavailable(
                        "bwrap was not found on PATH: install the `bubblewrap` package (apt-get install bubblewrap)"
                            .to_owned(),
                    )),
                }
            }
        }
    }

    /// Checks that `program` exists and can create every namespace the sandbox uses.
    pub(crate) fn probe_at(program: &Path) -> Result<Bwrap, SandboxError> {
        if !program.is_file() {
            return Err(SandboxError::Unavailable(format!(
                "bwrap binary {} does not exist: install the `bubblewrap` package (apt-get install bubblewrap) \
                 or point {BWRAP_ENV} at it",
                program.display()
            )));
        }
        let bwrap = Bwrap { program: program.to_path_buf() };
        let scratch = std::env::temp_dir();
        let mut arguments = bwrap.arguments(&scratch, &Limits::default());
        arguments.push("/bin/true".to_owned());
        let mut child = std::process::Command::new(&bwrap.program)
            .args(&arguments)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| SandboxError::Unavailable(format!("cannot run {}: {error}", program.display())))?;
        let deadline = std::time::Instant::now() + Duration::from_millis(PROBE_TIMEOUT_MS);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SandboxError::Unavailable(format!(
                        "{} did not start a sandbox within {PROBE_TIMEOUT_MS} ms",
                        program.display()
                    )));
                }
                Err(error) => return Err(SandboxError::Unavailable(format!("waiting for bwrap: {error}"))),
            }
        };
        if status.success() {
            return Ok(bwrap);
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        Err(SandboxError::Unavailable(format!(
            "bwrap cannot create the sandbox's namespaces here ({status}): {}; it needs user, pid, mount, ipc, uts \
             and network namespaces (check kernel.unprivileged_userns_clone and user.max_user_namespaces, \
             or the container's seccomp profile)",
            stderr.trim()
        )))
    }

    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// bwrap's options (the command to run follows them) for a sandbox whose workspace is
    /// `workspace` on the host.
    pub(crate) fn arguments(&self, workspace: &Path, limits: &Limits) -> Vec<String> {
        let mut arguments: Vec<String> = [
            "--unshare-all",
            "--unshare-user",
            "--uid",
            SANDBOX_UID,
            "--gid",
            SANDBOX_UID,
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--setenv",
            "HOME",
            WORKSPACE_MOUNT,
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "TERM",
            "dumb",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        match &limits.network {
            Network::None => {}
            // The host's network namespace.
            Network::Unrestricted => arguments.push("--share-net".to_owned()),
            // bwrap starts inside the sandbox's egress namespace (see `Shell::start`) and stays there.
            Network::Allowlist(_) => {
                arguments.push("--share-net".to_owned());
                for (name, value) in proxy_environment() {
                    arguments.extend(["--setenv".to_owned(), name.to_owned(), value.to_owned()]);
                }
            }
        }
        for directory in SYSTEM_DIRECTORIES {
            bind_host_entry(&mut arguments, Path::new(directory));
        }
        for entry in ETC_ENTRIES {
            bind_host_entry(&mut arguments, Path::new(entry));
        }
        let workspace = workspace.to_string_lossy().into_owned();
        // /tmp is memory: bounded like memory even where no cgroup counts its pages.
        let tmp_bytes_max = limits.memory_bytes_max.to_string();
        for argument in [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            &tmp_bytes_max,
            "--tmpfs",
            "/tmp",
            "--bind",
            &workspace,
            WORKSPACE_MOUNT,
            "--chdir",
            WORKSPACE_MOUNT,
            // Everything not mounted writable above (the root, /etc, /usr) is read-only.
            "--remount-ro",
            "/",
        ] {
            arguments.push(argument.to_owned());
        }
        arguments
    }
}

/// Makes host `path` visible read-only at the same place: a symlink stays a symlink
/// (merged-/usr layouts), a missing path is skipped.
fn bind_host_entry(arguments: &mut Vec<String>, path: &Path) {
    let Ok(metadata) = std::fs::symlink_metadata(path) else { return };
    let shown = path.to_string_lossy().into_owned();
    if metadata.file_type().is_symlink() {
        if let Ok(target) = std::fs::read_link(path) {
            arguments.extend(["--symlink".to_owned(), target.to_string_lossy().into_owned(), shown]);
        }
    } else {
        arguments.extend(["--ro-bind".to_owned(), shown.clone(), shown]);
    }
}
