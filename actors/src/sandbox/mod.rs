//! Sandboxes ("the hands") and the built-in tools.
//!
//! The agent loop hands each tool call (`bash`, `read`, `write`, `edit`, `glob`,
//! `grep`) to the session's [`Sandbox`]. Tool failures are outputs with
//! `is_error`; `Err` means the sandbox itself failed (before the tool ran).
//!
//! [`Sandbox::health`] says whether a sandbox can serve another call now, and
//! is cheap: no tool runs and nothing is recorded. The shell drivers answer
//! from their own state: not destroyed, and the shell's process (bwrap, the
//! runtime's `run`, the local shell), if one was started, has not exited (a
//! shell not started yet is healthy: it starts with the next `bash` call); the
//! namespace sandbox also needs its cgroups to still exist. A running call
//! holds the shell, which then counts as alive. The hands client pings its
//! agent; the microvm driver checks that QEMU runs, then pings. A dead sandbox
//! answers `SandboxError::Crashed` with the reason, and its owner replaces it
//! (the node's hands do so before a call, and the idle reaper drops it).
//!
//! Idempotency: the ledger under `root/ledger` has, per key, files named by
//! the key's hex SHA-256. `<name>.started` is made durable (fsync of the file
//! and of the directory) before the tool runs; `<name>` holds the output as
//! JSON, written as a temporary file, fsynced, renamed into place and the
//! directory fsynced, before the call returns. A repeated key returns the
//! recorded output without running; a key that started but never finished
//! (the host crashed mid-call) is not run again and is answered, and
//! recorded, as an "interrupted" error. So a call runs at most once per key,
//! and retries see the recorded result. An empty key disables the ledger for
//! that call.
//!
//! # The namespace sandbox ([`NamespaceSandbox`])
//!
//! `bash` runs in one persistent `/bin/bash` per session inside bubblewrap:
//! - new user (mapped to uid 1000 inside, the host's uid outside), PID, mount,
//!   IPC, UTS, cgroup and network namespaces (`--unshare-all --unshare-user`;
//!   the network namespace is the host's with `Network::Unrestricted`, and the
//!   sandbox's egress namespace with an allowlist, see below), all
//!   capabilities dropped, `--new-session` (no TIOCSTI into the host
//!   terminal), `--die-with-parent`, and a cleared environment (`HOME` and
//!   cwd `/workspace`, a fixed `PATH`);
//! - the filesystem is an empty read-only root with `/usr` (and the
//!   merged-/usr symlinks) bound read-only, a short list of `/etc` files
//!   (`ld.so.cache`, `passwd`, `alternatives`, `ssl` ...; not `shadow`),
//!   a private `/tmp` tmpfs, a fresh `/proc` and minimal `/dev`, and the
//!   session's workspace read-write at `/workspace`. No other host path, and
//!   so no other session's workspace, is visible.
//!
//! Each command is sent as one `eval $'...'` line with stdin from
//! `/dev/null`, followed by `echo "<random sentinel> $?"`; output is read up
//! to the sentinel. A timeout kills the sandbox's PID namespace init, which
//! takes every process of the sandbox (background ones included) with it,
//! then bwrap; the next call starts a fresh shell. Output that background
//! processes print after their command finished shows up in a later call's
//! output. Calls run one at a time per sandbox; `destroy` stops a running
//! `bash` call at once (its output says so, and is recorded) and waits for a
//! running file tool, which its wall-clock budget bounds.
//!
//! ## Limits: what is and is not enforced
//! - Wall clock: per `bash` call (`timeout_ms`, at most `Limits::wall_clock_ms`);
//!   `read` and `grep` give up after `Limits::wall_clock_ms` too.
//! - Output: at most `Limits::output_bytes_max` bytes kept per call; the rest
//!   is read and dropped, and the output says how much was dropped.
//! - Memory and processes: if this process can create cgroups (v1 memory and
//!   pids controllers under its own cgroups, as on the hybrid layout of the
//!   build machines, or v2 with those controllers delegated), the sandbox's
//!   processes join a per-sandbox cgroup with `memory.limit_in_bytes` (plus
//!   `memsw` when swap accounting exists) / `memory.max`, and `pids.max`:
//!   limits for all of the sandbox's processes together, OOM kills inside.
//!   Otherwise the fallback is `prlimit --as --nproc` on the sandbox's first
//!   process: RLIMIT_AS bounds each process's address space (not their sum),
//!   and RLIMIT_NPROC bounds the processes of the sandbox's host user. The
//!   kernel never applies RLIMIT_NPROC to root, so when agentd runs as root
//!   the fallback starts the sandbox as host user 65534 (`setpriv`), hands
//!   the workspace to that user (and every file the file tools create), and
//!   needs the session root's parent directories to be traversable by it.
//!   All fallback sandboxes of a host share that user's process budget. A
//!   warning is logged when the fallback is used;
//!   [`NamespaceSandbox::uses_cgroup`] reports which is in force. On the
//!   build machines (cgroup v1 hybrid, root) the cgroup path is used.
//! - `/tmp` is a tmpfs of at most `Limits::memory_bytes_max` bytes (its pages
//!   also count against the memory cgroup).
//! - CPU time: with the cgroup path and a cpu controller (v1 `cpu` under this
//!   process's own cpu cgroup, or v2 with `cpu` delegated), the sandbox's
//!   processes together get a CFS quota of `Limits::cpu_millicores`
//!   (`cpu.cfs_quota_us` = millicores × 100 per `cpu.cfs_period_us` of
//!   100000, or `cpu.max` "quota 100000"; at least 1 ms per period): a busy
//!   loop in the background takes at most that share of the host. Without a
//!   cpu controller, and under the rlimit fallback, CPU time is not limited (a
//!   busy loop keeps a core busy until a call times out, the shell is
//!   restarted or the sandbox is destroyed); a warning is logged once per
//!   process and [`NamespaceSandbox::limits_cpu`] reports it. On the build
//!   machines the v1 cpu controller is used.
//! - Not enforced: CPU weight under contention (no `cpu.shares` / `cpu.weight`),
//!   CPU time where there is no cpu controller (above), disk usage of the
//!   workspace, and the number of open files beyond the host default.
//!
//! The file tools run on the host, in Rust, confined to the workspace (see
//! `workspace.rs` for the rules and the remaining TOCTOU race against
//! processes inside the sandbox).
//!
//! # The OCI sandbox ([`OciSandbox`])
//!
//! The same tools, ledger, secrets and shell protocol, with `bash` served by a
//! busybox `sh` (ash, which understands the `eval $'...'` lines) in a runc
//! container run in the foreground (`runc run`, stdio piped). The bundle under
//! `root/bundle` is generated per sandbox (`oci_bundle.rs`):
//! - the root is a shared read-only rootfs built by `scripts/oci-rootfs.sh`
//!   (busybox-static and its applets, `/bin/bash` running ash, an `/etc/passwd`
//!   with uid 1000); no host path is visible except the session's workspace,
//!   bound read-write at `/workspace`;
//! - fresh `/proc`, a tmpfs `/dev` with runc's default devices, `/tmp` a tmpfs of
//!   at most `Limits::memory_bytes_max` bytes;
//! - the shell runs as uid/gid 1000 without a user namespace (the workspace is
//!   handed to host uid 1000, as are the files the file tools create), with no
//!   capabilities and `noNewPrivileges`;
//! - new PID, IPC, UTS, mount, cgroup and network namespaces (the network one
//!   is the host's with `Network::Unrestricted`, the sandbox's egress
//!   namespace with an allowlist);
//! - cgroup limits set by runc: memory (`Limits::memory_bytes_max`), pids
//!   (`Limits::pids_max`) and CPU (a quota of `Limits::cpu_millicores`, one core
//!   by default, computed as for the namespace sandbox, and half the default
//!   shares), so a background busy loop is bounded.
//!
//! Every shell gets a new container (a fresh id); a timeout, `restart`,
//! `destroy` or drop runs `runc kill <id> KILL` (which ends the PID namespace)
//! and `runc delete --force <id>`. Needs root and the `runc` and
//! `busybox-static` packages.
//!
//! # The gVisor sandbox ([`OciSandbox`] with [`ContainerRuntime::Gvisor`])
//!
//! The same bundle and rootfs, run by gVisor's `runsc --platform=ptrace` (state
//! under [`GVISOR_STATE_ROOT`]) instead of runc. The difference is the kernel:
//! the container's system calls never reach the host kernel; gVisor's
//! user-space kernel (the sentry, itself under a seccomp filter) serves them,
//! and file access goes through its gofer, which sees only the bundle's mounts.
//! A kernel bug reachable from a system call is therefore not reachable from
//! the sandbox. What the sandbox sees is the OCI sandbox's view (read-only
//! busybox root, the workspace at `/workspace`, uid 1000, no capabilities, its
//! own PID, IPC, UTS and mount namespaces), served by gVisor's kernel.
//! - Network: with `Network::None`, `--network=none` and a new network
//!   namespace: only gVisor's own loopback. Otherwise `--network=host`:
//!   sockets pass through the sentry to the host stack of the namespace the
//!   sandbox runs in, the host's (unrestricted) or the sandbox's egress
//!   namespace (an allowlist). (runsc's own `sandbox` network would need a
//!   prepared network namespace with a veth pair, which agentd does not set up.)
//! - Processes: RLIMIT_NPROC = `Limits::pids_max`, enforced by gVisor's
//!   kernel per user inside the sandbox (every process there is uid 1000, which
//!   cannot raise it): a fork past it fails with EAGAIN, as under runc's pids
//!   cgroup. The host's pids cgroup is only a backstop, at 16 host tasks per
//!   allowed process plus 256, because the ptrace platform spends about 9 host
//!   tasks (sentry threads, stub processes) per sandbox process.
//! - Memory: the host's memory cgroup around the whole sandbox, at
//!   `Limits::memory_bytes_max` plus 64 MiB for gVisor's own kernel (`MemTotal`
//!   inside shows that sum). gVisor (the 2022 Debian build) has no OOM killer
//!   of its own, so going past it makes the host kill gVisor's kernel: **the
//!   whole sandbox dies, not just the offending process** (the call fails with
//!   "the shell exited", the shell's state is lost, the next call gets a fresh
//!   sandbox). `/tmp` is a tmpfs of at most `Limits::memory_bytes_max`, which
//!   gVisor honours.
//! - CPU: the same quota (`Limits::cpu_millicores`) and half shares as runc, on
//!   the host cgroup.
//! - Wall clock and output: the same as every driver. A shell must answer
//!   within the shell start timeout (10 s; runsc starts in about 0.25 s here),
//!   else it is killed: `runsc kill`, then the `runsc run` process (the
//!   sandbox is attached to it and dies with it), then `runsc delete --force`,
//!   then the empty cgroup directories and the lock file that a start killed
//!   before runsc recorded it leaves behind are removed.
//! - Cost: a cold start of about 0.25 s, every system call and page fault is
//!   a round trip through ptrace, and each process costs the host some 100s of
//!   KiB of gVisor memory.
//!
//! Needs root, the `runsc` package (`apt-get install runsc`) and ptrace. The
//! first provisioning in a process (and [`OciSandbox::probe_with`]) starts a
//! `/bin/true` container within a timeout, so a machine that cannot run
//! gVisor fails provisioning with `SandboxError::Unavailable` saying what is
//! missing (the same holds for runc).
//!
//! # Egress to an allowlist of hosts (every driver)
//!
//! With `Network::Allowlist`, the sandbox gets a network namespace of its own
//! (bound at `root/netns`) whose only interface is loopback, and an HTTP proxy
//! at `127.0.0.1:3128` inside it that the node serves from the host's
//! namespace; tools get `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY`. bwrap is
//! started in that namespace through `nsenter`; runc joins it through the
//! bundle, and runsc too (with `--network=host`, so gVisor's sockets are the
//! namespace's). The proxy opens `CONNECT` tunnels and forwards absolute
//! `http://` requests to listed hosts only, and never to a loopback or
//! link-local address a name resolves to. Needs root, util-linux's `unshare`
//! and `nsenter`, and iproute2's `ip`; see [`egress`] for the details.
//!
//! # The local sandbox ([`LocalSandbox`])
//!
//! The same runner with `bash` a plain local shell (bash, or busybox ash) in
//! its own process group, working in the workspace; a timeout or `destroy`
//! kills the group (a process that left it with `setsid` survives). It
//! isolates nothing: `agentd hands` serves it from inside a VM, which is the
//! boundary. The shell gets `oom_score_adj` 1000 so that memory exhaustion
//! kills tool processes before the agent; with `run_as` it runs as that uid
//! under `ulimit -u pids_max`. Memory and CPU are the VM's (`Limits::cpu_millicores`
//! does not apply).

mod bwrap;
mod call_runner;
mod capped_output;
mod container_runtime;
pub mod egress;
mod error;
mod file_tools;
mod ledger;
mod limits;
mod local_sandbox;
mod namespace_sandbox;
mod oci_bundle;
mod oci_sandbox;
mod resource_control;
mod shell;
mod tool_call;
mod workspace;

use futures_util::future::BoxFuture;

pub use bwrap::BWRAP_ENV;
pub use container_runtime::{ContainerRuntime, GVISOR_STATE_ROOT, RUNC_ENV, RUNSC_ENV};
pub use error::SandboxError;
pub use ledger::{interrupted_output, Claim, Ledger, LedgerState};
pub use limits::{Limits, Network};
pub use local_sandbox::{LocalSandbox, LocalShell};
pub use namespace_sandbox::NamespaceSandbox;
pub use oci_sandbox::OciSandbox;

/// Where `scripts/oci-rootfs.sh` builds the OCI sandbox's root filesystem.
pub const OCI_ROOTFS_DEFAULT: &str = "/var/cache/agentd/oci-rootfs";
pub use tool_call::{redact, Secret, ToolCall, ToolOutput};

/// One session's sandbox: runs tool calls in isolation.
pub trait Sandbox: Send + Sync + 'static {
    /// Runs one tool call. Tool failures (bad input, non-zero exit, timeout, missing file) are Ok(ToolOutput{is_error:true}) with a clear message;
    /// Err is for the sandbox itself failing. A repeated idempotency_key returns the recorded output without running again.
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>>;
    /// Tears the sandbox down; later calls fail with `SandboxError::Crashed`.
    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>>;
    /// Whether the sandbox can serve another call now. Cheap: no tool runs and nothing is
    /// recorded. `Err(SandboxError::Crashed)` says why not (destroyed, its shell, VM or
    /// agent died); the caller then replaces the sandbox.
    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>>;
}
