//! The `microvm` sandbox driver: every sandbox is a QEMU virtual machine
//! (`-M microvm`, virtio-mmio) running `agentd hands`, reached over QUIC
//! through slirp's UDP port forwarding.
//!
//! # The image
//! The kernel is Debian's cloud kernel (`linux-image-cloud-amd64`); the
//! initramfs is built once per agentd binary by `scripts/microvm-initramfs.sh`
//! (embedded here, so an installed binary needs no checkout) into the image
//! cache directory: busybox-static, the virtio, network, rng and fw_cfg
//! modules of that kernel, the agentd binary (stripped) with its
//! shared libraries, and an `/init` that configures slirp networking
//! (10.0.2.15/24, gateway 10.0.2.2) and hands over to busybox `init`, which
//! reaps orphans and restarts the agent if it dies.
//!
//! Per VM, the certificates (`ClusterCa::issue_hands` from a CA made for that
//! VM alone, see `hands/mod.rs`), the limits and the
//! host's clock reach the guest as QEMU `fw_cfg` files (no copy of the 45 MB
//! initramfs per VM); the guest copies them to `/etc/agentd` (mode 0700).
//!
//! # Isolation and limits
//! - The guest sees only its initramfs (in guest RAM) and its workspace
//!   disk: no host file, no other sandbox. The workspace is the session's
//!   disk, `root/workspace.img` on the host: a sparse raw file of
//!   `MICROVM_WORKSPACE_DISK_BYTES` (so that is also the workspace's size
//!   limit) holding ext4, made with `mkfs.ext4` at the session's first
//!   sandbox and attached as virtio-blk; the guest mounts it at `/workspace`.
//!   It outlives the VM, as the other drivers' workspaces do: the session's
//!   next sandbox (after an idle timeout, or a crash) boots with it. A
//!   destroy asks the guest to `sync` first; a VM that dies on its own loses
//!   what its page cache held (ext4's journal keeps the file system
//!   consistent). A spare boots with a blank disk of its own, which moves to
//!   the session that takes it; a session that has a disk never takes a
//!   spare. Idempotency
//!   keys are recorded twice: by the agent, and on the host under
//!   `root/ledger` (the same files as the other drivers), which outlives the
//!   VM: a key whose call failed with the VM is answered "interrupted", never
//!   run again in the next VM.
//! - Memory: `-m` from `Limits::memory_bytes_max` (at least
//!   [`GUEST_MEMORY_MIB_MIN`]); the tools' processes are the OOM killer's
//!   first choice and the agent is exempt, so exhausting memory kills tools,
//!   not the sandbox. CPU: one virtual CPU (`Limits::cpu_millicores` is not
//!   applied).
//! - Processes: the shell runs as uid 1000 with `ulimit -u` of
//!   `Limits::pids_max`, so a fork bomb stops there; it cannot read the
//!   agent's key (root, 0600).
//! - Network: slirp (`-netdev user`) with one forwarded UDP port, from the
//!   host's loopback to the agent. slirp's `restrict=on` would cut egress but
//!   also drops the guest's UDP replies on the forwarded port, so it is not
//!   used. Instead, unless the network is unrestricted, the tools' shell
//!   starts in a network namespace that has only loopback (`agentd hands
//!   --netns`); only the agent (root) has `eth0`. With an allowlist, the agent
//!   also serves the egress proxy (`actors::sandbox::egress`) at
//!   `127.0.0.1:3128` inside that namespace (`--allow-hosts-file`, the list
//!   coming in as the fw_cfg file `allowlist`), and connects from its own.
//!   With `Network::Unrestricted`, the tools share the agent's namespace:
//!   slirp NAT to anything the host reaches, **including services on the
//!   host's loopback** (as 10.0.2.2).
//! - Wall clock and output: per call, enforced by the agent as in every
//!   driver. Boots are bounded by `SANDBOX_BOOT_TIMEOUT_MS`.
//!
//! # Spares
//! Nodes provision through a [`MicrovmPool`]: after a sandbox of a given
//! shape of limits, it boots a spare of that shape in the background
//! (`AGENTD_MICROVM_SPARES` per shape, default 1, 0 turns it off), and the
//! next sandbox of that shape takes it: its first call then waits for a
//! shell, not for a boot. A spare holds nothing of any session (empty
//! workspace, its own certificates); the host ledger is the session's.
//! Spares cost their guest's memory and a little CPU while idle; at most four
//! shapes keep spares at once.
//!
//! # Acceleration
//! KVM is used only if a probe VM really boots with it (cached per process
//! and in the image cache); otherwise TCG. `AGENTD_MICROVM_ACCEL=kvm|tcg`
//! skips the probe.

mod image;
mod pool;
mod vm;

use std::path::PathBuf;
use std::time::Duration;

use agentd_actors::sandbox::{Claim, Ledger, Limits, Sandbox, SandboxError, ToolCall, ToolOutput};
use agentd_protocol::limits::SANDBOX_BOOT_TIMEOUT_MS;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

pub use image::{Accel, MicrovmImage};
pub use pool::{MicrovmPool, SPARES_DEFAULT, SPARES_ENV};
use vm::{Phase, Vm};

use super::client::{CallFailure, HandsClient};

/// Where images are built and cached by default.
pub const MICROVM_CACHE_DIR_DEFAULT: &str = "/var/cache/agentd/microvm";
/// Overrides the QEMU binary.
pub const QEMU_ENV: &str = "AGENTD_QEMU";
/// Overrides the guest kernel (its modules must be in `/lib/modules/RELEASE`).
pub const KERNEL_ENV: &str = "AGENTD_MICROVM_KERNEL";
/// `kvm` or `tcg`: skips the KVM probe.
pub const ACCEL_ENV: &str = "AGENTD_MICROVM_ACCEL";
/// The agentd binary put into the guest (default: this program). Embedders whose
/// program is not `agentd` set it.
pub const HANDS_BINARY_ENV: &str = "AGENTD_HANDS_BINARY";
/// Overrides the image cache directory.
pub const CACHE_DIR_ENV: &str = "AGENTD_MICROVM_CACHE";
/// The least memory a guest gets: the initramfs alone takes about 45 MB of it.
pub const GUEST_MEMORY_MIB_MIN: u64 = 256;
/// A session's workspace disk, in its directory on the host (`root/workspace.img`).
pub const WORKSPACE_DISK: &str = "workspace.img";
/// How long a destroy waits for the guest to write its caches to the workspace disk.
const SYNC_TIMEOUT_MS: u64 = 5_000;

/// A sandbox in a QEMU microVM. See the module docs.
pub struct MicrovmSandbox {
    vm: tokio::sync::Mutex<Option<Vm>>,
    client: HandsClient,
    /// The host's record of idempotency keys (`root/ledger`), which outlives the VM.
    ledger: Ledger,
    /// Serializes calls, so that a key's ledger check and its run are one step.
    calls: tokio::sync::Mutex<()>,
    /// Says when QEMU exits, so that a call does not wait for network timeouts.
    phase: tokio::sync::watch::Receiver<Phase>,
    /// The VM's files (certificates, config); removed on destroy.
    directory: PathBuf,
    accel: Accel,
}

impl MicrovmSandbox {
    /// Boots a VM for the sandbox whose directory on the host is `root` (its VM files
    /// go to `root/vm`, its workspace disk is `root/workspace.img`, made if missing)
    /// and waits until its agent answers, at most `SANDBOX_BOOT_TIMEOUT_MS`.
    pub async fn provision(
        root: PathBuf,
        limits: Limits,
        image: &MicrovmImage,
    ) -> Result<MicrovmSandbox, SandboxError> {
        let directory = root.join("vm");
        let ledger = Ledger::open(root.join("ledger"))?;
        let disk = root.join(WORKSPACE_DISK);
        vm::prepare_disk(&disk).await?;
        let timeout = Duration::from_millis(SANDBOX_BOOT_TIMEOUT_MS);
        let vm = vm::boot(image, &directory, Some(&disk), &limits, timeout).await?;
        tracing::debug!(root = %root.display(), accel = image.accel().name(), "microvm sandbox booted");
        MicrovmSandbox::assemble(vm, directory, ledger, image.accel())
    }

    /// A sandbox over a VM that is already up; its files are in `directory`.
    fn assemble(mut vm: Vm, directory: PathBuf, ledger: Ledger, accel: Accel) -> Result<MicrovmSandbox, SandboxError> {
        let client = vm.client.take().ok_or_else(|| SandboxError::Crashed("the VM has no client".to_owned()))?;
        Ok(MicrovmSandbox {
            phase: vm.phase.clone(),
            vm: tokio::sync::Mutex::new(Some(vm)),
            client,
            ledger,
            calls: tokio::sync::Mutex::new(()),
            directory,
            accel,
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's process id, while the VM runs.
    pub async fn qemu_pid(&self) -> Option<u32> {
        self.vm.lock().await.as_ref().and_then(|vm| vm.child.id())
    }

    /// The host's ledger first (the guest's dies with the VM), then the guest.
    async fn execute_call(&self, call: ToolCall) -> Result<ToolOutput, SandboxError> {
        let _serial = self.calls.lock().await;
        if self.client.is_closed() {
            return Err(SandboxError::Crashed("the sandbox was destroyed".to_owned()));
        }
        let key = call.idempotency_key.clone();
        if !key.is_empty() {
            if let Claim::Answered { output, .. } = self.ledger.claim(&key).await? {
                return Ok(output);
            }
        }
        match self.call_guest(call).await {
            Ok(output) => {
                if !key.is_empty() {
                    self.ledger.record_async(&key, &output).await?;
                }
                Ok(output)
            }
            // Known not to have run: a retry with this key may run it.
            Err(CallFailure { error, may_have_run: false }) => {
                if !key.is_empty() {
                    self.ledger.abandon_async(&key).await?;
                }
                Err(error)
            }
            // The guest may have run it: the marker stays, so a retry with this key is
            // answered "interrupted" instead of running twice.
            Err(CallFailure { error, may_have_run: true }) => Err(error),
        }
    }

    async fn call_guest(&self, call: ToolCall) -> Result<ToolOutput, CallFailure> {
        let mut phase = self.phase.clone();
        let mut result = if *phase.borrow() == Phase::Exited {
            Err(CallFailure { error: SandboxError::Crashed("QEMU is gone".to_owned()), may_have_run: false })
        } else {
            tokio::select! {
                result = self.client.execute_call(call) => result,
                _ = phase.wait_for(|phase| *phase == Phase::Exited) => Err(CallFailure {
                    error: SandboxError::Crashed("QEMU exited during the call".to_owned()),
                    may_have_run: true,
                }),
            }
        };
        if let Err(CallFailure { error: error @ SandboxError::Crashed(_), .. }) = &mut result {
            // Say why, if QEMU is gone.
            let mut vm = self.vm.lock().await;
            if let Some(current) = vm.as_mut() {
                if matches!(current.child.try_wait(), Ok(Some(_))) {
                    *error = current.failure(format!("the VM exited ({error})"));
                }
            }
        }
        result
    }

    /// QEMU still runs and its agent answers a ping. Does not wait for a running call.
    async fn check_health(&self) -> Result<(), SandboxError> {
        if self.client.is_closed() {
            return Err(SandboxError::Crashed("the sandbox was destroyed".to_owned()));
        }
        {
            let mut vm = self.vm.lock().await;
            let Some(current) = vm.as_mut() else {
                return Err(SandboxError::Crashed("the VM was destroyed".to_owned()));
            };
            if let Ok(Some(status)) = current.child.try_wait() {
                return Err(current.failure(format!("QEMU exited ({status})")));
            }
            if *self.phase.borrow() == Phase::Exited {
                return Err(current.failure("QEMU closed its console".to_owned()));
            }
        }
        self.client.health_check().await
    }

    /// Asks the guest to write its caches to the workspace disk (briefly), then
    /// kills QEMU. The disk stays: it is the session's.
    async fn destroy_vm(&self) -> Result<(), SandboxError> {
        if !self.client.is_closed() && *self.phase.borrow() == Phase::Ready {
            let sync = ToolCall {
                name: "bash".to_owned(),
                input_json: serde_json::json!({ "command": "sync" }).to_string(),
                idempotency_key: String::new(),
                secrets: Vec::new(),
            };
            let _ = tokio::time::timeout(Duration::from_millis(SYNC_TIMEOUT_MS), self.client.execute_call(sync)).await;
        }
        self.client.close();
        if let Some(mut vm) = self.vm.lock().await.take() {
            vm.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.directory);
        Ok(())
    }
}

impl Drop for MicrovmSandbox {
    /// QEMU is killed by its `Child` (kill on drop); the VM's certificates go too.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

impl Sandbox for MicrovmSandbox {
    fn execute(&self, call: ToolCall) -> BoxFuture<'_, Result<ToolOutput, SandboxError>> {
        self.execute_call(call).boxed()
    }

    /// Kills QEMU; the workspace (in guest RAM) goes with it.
    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        self.destroy_vm().boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        self.check_health().boxed()
    }
}
