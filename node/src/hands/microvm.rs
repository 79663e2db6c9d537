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
//! - The guest sees only its initramfs (in guest RAM): no host file, no other
//!   sandbox. Its workspace lives in guest RAM and dies with it. Idempotency
//!   keys are recorded twice: by the agent, and on the host under
//!   `root/ledger` (the same files as the other drivers), which outlives the
//!   VM: a key whose call failed with the VM is answered "interrupted", never
//!   run again in the next VM.
//! - Memory: `-m` from `Limits::memory_bytes_max` (at least
//!   [`GUEST_MEMORY_MIB_MIN`]); the tools' processes are the OOM killer's
//!   first choice and the agent is exempt, so exhausting memory kills tools,
//!   not the sandbox. CPU: one virtual CPU.
//! - Processes: the shell runs as uid 1000 with `ulimit -u` of
//!   `Limits::pids_max`, so a fork bomb stops there; it cannot read the
//!   agent's key (root, 0600).
//! - Network: slirp (`-netdev user`) with one forwarded UDP port, from the
//!   host's loopback to the agent. slirp's `restrict=on` would cut egress but
//!   also drops the guest's UDP replies on the forwarded port, so it is not
//!   used. Instead, unless `Limits::network`, the tools' shell starts in a
//!   network namespace that has only loopback (`agentd hands --netns`); only
//!   the agent (root) has `eth0`. With `Limits::network`, the tools share the
//!   agent's namespace: slirp NAT to anything the host reaches, **including
//!   services on the host's loopback** (as 10.0.2.2).
//! - Wall clock and output: per call, enforced by the agent as in every
//!   driver. Boots are bounded by `SANDBOX_BOOT_TIMEOUT_MS`.
//!
//! # Acceleration
//! KVM is used only if a probe VM really boots with it (cached per process
//! and in the image cache); otherwise TCG. `AGENTD_MICROVM_ACCEL=kvm|tcg`
//! skips the probe.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_actors::sandbox::{
    interrupted_output, Ledger, LedgerState, Limits, Sandbox, SandboxError, ToolCall, ToolOutput,
};
use agentd_protocol::limits::SANDBOX_BOOT_TIMEOUT_MS;
use agentd_raft::tls::ClusterCa;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::AsyncBufReadExt;

use super::client::HandsClient;

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
/// The initramfs builder, embedded so that an installed binary can build its image.
const INITRAMFS_SCRIPT: &str = include_str!("../../../scripts/microvm-initramfs.sh");
/// The port the agent listens on inside the guest.
const GUEST_PORT: u16 = 4433;
/// The least memory a guest gets: the initramfs alone takes about 45 MB of it.
pub const GUEST_MEMORY_MIB_MIN: u64 = 256;
/// How long the KVM probe waits for a guest to come up.
const KVM_PROBE_TIMEOUT_MS: u64 = 15_000;
/// Bytes of the guest's console kept to explain a failure.
const CONSOLE_TAIL_BYTES_MAX: usize = 8 * 1024;
/// The line the agent prints when it listens.
const READY_LINE: &str = "agentd hands listening on";
/// Host-side ports tried when a forwarded port turns out to be taken.
const BOOT_ATTEMPTS: u32 = 2;

/// What every microVM of this host boots: QEMU, a kernel, the base initramfs, the accelerator.
#[derive(Debug, Clone)]
pub struct MicrovmImage {
    qemu: PathBuf,
    /// util-linux `setpriv`, if present: ties QEMU's life to this process.
    setpriv: Option<PathBuf>,
    kernel: PathBuf,
    initramfs: PathBuf,
    accel: Accel,
    /// `tsc_early_khz` for the guest: TCG guests cannot calibrate the TSC quickly.
    tsc_khz: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

static ACCEL_PROBED: tokio::sync::OnceCell<Accel> = tokio::sync::OnceCell::const_new();

impl MicrovmImage {
    /// Finds QEMU and the kernel, builds the initramfs for `agentd_binary` under
    /// `cache_dir` unless a current one is there, and picks the accelerator.
    /// Fails with `Unavailable` naming the missing packages.
    pub async fn prepare(agentd_binary: &Path, cache_dir: &Path) -> Result<MicrovmImage, SandboxError> {
        let qemu = locate_qemu()?;
        let kernel = locate_kernel()?;
        let release = kernel_release(&kernel)?;
        if !Path::new("/lib/modules").join(&release).is_dir() {
            return Err(SandboxError::Unavailable(format!(
                "no modules in /lib/modules/{release} for the microvm kernel {}; install linux-image-cloud-amd64",
                kernel.display()
            )));
        }
        let initramfs = build_initramfs(agentd_binary, &release, cache_dir).await?;
        let setpriv = find_in_path("setpriv");
        if setpriv.is_none() {
            tracing::warn!("setpriv (util-linux) not found: a microvm outlives a node that is killed with SIGKILL");
        }
        let mut image = MicrovmImage { qemu, setpriv, kernel, initramfs, accel: Accel::Tcg, tsc_khz: host_tsc_khz() };
        image.accel = match std::env::var(ACCEL_ENV).ok().as_deref() {
            Some("kvm") => Accel::Kvm,
            Some("tcg") => Accel::Tcg,
            _ => *ACCEL_PROBED.get_or_init(|| image.probe_kvm(cache_dir, &release)).await,
        };
        Ok(image)
    }

    /// `prepare` with the agent binary from `AGENTD_HANDS_BINARY` (else this program)
    /// and the cache from `AGENTD_MICROVM_CACHE` (else [`MICROVM_CACHE_DIR_DEFAULT`]).
    pub async fn prepare_default() -> Result<MicrovmImage, SandboxError> {
        let binary = match std::env::var_os(HANDS_BINARY_ENV) {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .map_err(|error| SandboxError::Unavailable(format!("cannot find this program's binary: {error}")))?,
        };
        let cache =
            std::env::var_os(CACHE_DIR_ENV).map_or_else(|| PathBuf::from(MICROVM_CACHE_DIR_DEFAULT), PathBuf::from);
        MicrovmImage::prepare(&binary, &cache).await
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// KVM if a probe VM boots with it: `/dev/kvm` can exist and still be unable to
    /// boot a stock kernel (nested `kvm-pvm`). The answer is cached in `cache_dir`.
    async fn probe_kvm(&self, cache_dir: &Path, release: &str) -> Accel {
        let cached = cache_dir.join(format!("accel-{release}"));
        match std::fs::read_to_string(&cached).map(|text| text.trim().to_owned()).as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        let accel = if !Path::new("/dev/kvm").exists() {
            Accel::Tcg
        } else {
            let probe = MicrovmImage { accel: Accel::Kvm, ..self.clone() };
            let directory = cache_dir.join(format!("kvm-probe-{}", std::process::id()));
            let booted = probe.boot(&directory, &Limits::default(), Duration::from_millis(KVM_PROBE_TIMEOUT_MS)).await;
            let _ = std::fs::remove_dir_all(&directory);
            match booted {
                Ok(_vm) => Accel::Kvm,
                Err(error) => {
                    tracing::info!(%error, "a KVM guest did not boot; microvm sandboxes use TCG");
                    Accel::Tcg
                }
            }
        };
        if let Err(error) = std::fs::write(&cached, accel.name()) {
            tracing::debug!(%error, "could not cache the KVM probe");
        }
        accel
    }

    /// Boots one VM whose files live in `directory` and waits until its agent answers.
    async fn boot(&self, directory: &Path, limits: &Limits, timeout: Duration) -> Result<Vm, SandboxError> {
        let io =
            |what: &str, error: std::io::Error| SandboxError::Io(format!("{what} in {}: {error}", directory.display()));
        std::fs::create_dir_all(directory).map_err(|error| io("creating the VM directory", error))?;
        let ca = ClusterCa::generate().map_err(|error| SandboxError::Unavailable(error.to_string()))?;
        let name = format!("vm-{:016x}", rand::random::<u64>());
        let identities = ca.issue_hands(&name).map_err(|error| SandboxError::Unavailable(error.to_string()))?;
        let files = [
            ("ca.pem", identities.agent.ca_cert_pem.clone()),
            ("agent.pem", identities.agent.cert_pem.clone()),
            ("agent.key", identities.agent.key_pem.clone()),
            ("config", guest_config(limits)),
        ];
        for (file, text) in &files {
            write_private(&directory.join(file), text).map_err(|error| io("writing the guest files", error))?;
        }
        let mut last_error = None;
        for _ in 0..BOOT_ATTEMPTS {
            let port =
                free_udp_port().map_err(|error| SandboxError::Unavailable(format!("no free UDP port: {error}")))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut vm = self.spawn(directory, limits, port)?;
            match vm.wait_ready(timeout).await {
                // A VM that did not come up in time will not do better on another port.
                Err(BootFailure::TimedOut(error)) => {
                    vm.kill().await;
                    return Err(error);
                }
                Ok(()) => {
                    let client = HandsClient::new(addr, &identities, limits.wall_clock_ms)?;
                    match client.ping().await {
                        Ok(()) => {
                            vm.client = Some(client);
                            return Ok(vm);
                        }
                        Err(error) => last_error = Some(vm.failure(format!("the agent did not answer: {error}"))),
                    }
                }
                Err(BootFailure::Exited(error)) => last_error = Some(error),
            }
            vm.kill().await;
        }
        Err(last_error.unwrap_or_else(|| SandboxError::Crashed("the VM did not boot".to_owned())))
    }

    fn spawn(&self, directory: &Path, limits: &Limits, port: u16) -> Result<Vm, SandboxError> {
        let memory_mib = (limits.memory_bytes_max / (1024 * 1024)).max(GUEST_MEMORY_MIB_MIN);
        let mut kernel_arguments = "console=ttyS0 quiet panic=-1 tsc=reliable".to_owned();
        if let Some(khz) = self.tsc_khz {
            kernel_arguments.push_str(&format!(" tsc_early_khz={khz}"));
        }
        // Not `restrict=on`: slirp then drops the guest's UDP replies to the forwarded
        // port as well. Without network, the tools' shell runs in a namespace that
        // has only loopback (see the initramfs's /init), so the agent alone uses eth0.
        let netdev = format!("user,id=net0,hostfwd=udp:127.0.0.1:{port}-10.0.2.15:{GUEST_PORT}");
        // QEMU must not outlive this process, even when it is SIGKILLed (kill_on_drop
        // covers only orderly drops): `setpriv --pdeathsig KILL` (util-linux) asks the
        // kernel to kill QEMU when the thread that started it dies. That is a runtime
        // worker thread, which lives as long as the runtime.
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut command = tokio::process::Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(&self.qemu);
                command
            }
            None => tokio::process::Command::new(&self.qemu),
        };
        command
            .args(["-M", "microvm,acpi=on", "-accel", self.accel.name()])
            .args(["-cpu", if self.accel == Accel::Kvm { "host" } else { "max" }])
            .args(["-smp", "1", "-m", &memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .args(["-append", &kernel_arguments])
            .args(["-netdev", &netdev, "-device", "virtio-net-device,netdev=net0"])
            .args(["-device", "virtio-rng-device"]);
        for file in ["ca.pem", "agent.pem", "agent.key", "config"] {
            let path = directory.join(file);
            command.arg("-fw_cfg").arg(format!("name=opt/agentd/{file},file={}", path.display()));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| SandboxError::Unavailable(format!("cannot start {}: {error}", self.qemu.display())))?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let (ready_sender, ready) = tokio::sync::watch::channel(false);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(read_console(stdout, console.clone(), Some(ready_sender)));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(read_console(stderr, console.clone(), None));
        }
        Ok(Vm { child, console, ready, client: None })
    }
}

/// Keeps the tail of the guest's console (and QEMU's own messages), and says when the agent listens.
async fn read_console(
    stream: impl tokio::io::AsyncRead + Unpin,
    console: Arc<Mutex<Vec<u8>>>,
    ready: Option<tokio::sync::watch::Sender<bool>>,
) {
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains(READY_LINE) {
            if let Some(ready) = &ready {
                ready.send_replace(true);
            }
        }
        if let Ok(mut tail) = console.lock() {
            tail.extend_from_slice(line.as_bytes());
            tail.push(b'\n');
            let excess = tail.len().saturating_sub(CONSOLE_TAIL_BYTES_MAX);
            tail.drain(..excess);
        }
    }
}

/// Why a VM did not come up.
enum BootFailure {
    /// QEMU exited (a taken port, a broken accelerator): another attempt may work.
    Exited(SandboxError),
    TimedOut(SandboxError),
}

/// One running VM. Dropping it kills QEMU.
struct Vm {
    child: tokio::process::Child,
    console: Arc<Mutex<Vec<u8>>>,
    ready: tokio::sync::watch::Receiver<bool>,
    client: Option<HandsClient>,
}

impl Vm {
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BootFailure> {
        let outcome = tokio::time::timeout(timeout, async {
            tokio::select! {
                ready = self.ready.wait_for(|ready| *ready) => ready.is_ok(),
                _ = self.child.wait() => false,
            }
        })
        .await;
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(BootFailure::Exited(self.failure("QEMU exited before the agent started".to_owned()))),
            Err(_) => Err(BootFailure::TimedOut(
                self.failure(format!("the VM did not boot within {} ms", timeout.as_millis())),
            )),
        }
    }

    fn failure(&self, what: String) -> SandboxError {
        let console = self.console.lock().map(|tail| String::from_utf8_lossy(&tail).into_owned()).unwrap_or_default();
        SandboxError::Crashed(format!("{what}; console: {}", console.trim()))
    }

    async fn kill(&mut self) {
        if let Some(client) = &self.client {
            client.close();
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A sandbox in a QEMU microVM. See the module docs.
pub struct MicrovmSandbox {
    vm: tokio::sync::Mutex<Option<Vm>>,
    client: HandsClient,
    /// The host's record of idempotency keys (`root/ledger`), which outlives the VM.
    ledger: Ledger,
    /// Serializes calls, so that a key's ledger check and its run are one step.
    calls: tokio::sync::Mutex<()>,
    /// The VM's files (certificates, config); removed on destroy.
    directory: PathBuf,
    accel: Accel,
}

impl MicrovmSandbox {
    /// Boots a VM for the sandbox whose directory on the host is `root` (its VM files
    /// go to `root/vm`) and waits until its agent answers, at most `SANDBOX_BOOT_TIMEOUT_MS`.
    pub async fn provision(
        root: PathBuf,
        limits: Limits,
        image: &MicrovmImage,
    ) -> Result<MicrovmSandbox, SandboxError> {
        let directory = root.join("vm");
        let ledger = Ledger::open(root.join("ledger"))?;
        let mut vm = image.boot(&directory, &limits, Duration::from_millis(SANDBOX_BOOT_TIMEOUT_MS)).await?;
        let client = vm.client.take().ok_or_else(|| SandboxError::Crashed("the VM has no client".to_owned()))?;
        tracing::debug!(root = %root.display(), accel = image.accel.name(), "microvm sandbox booted");
        Ok(MicrovmSandbox {
            vm: tokio::sync::Mutex::new(Some(vm)),
            client,
            ledger,
            calls: tokio::sync::Mutex::new(()),
            directory,
            accel: image.accel,
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
            let ledger = self.ledger.clone();
            let lookup = key.clone();
            let state = tokio::task::spawn_blocking(move || -> Result<LedgerState, SandboxError> {
                let state = ledger.state(&lookup)?;
                if matches!(state, LedgerState::New) {
                    ledger.begin(&lookup)?;
                }
                Ok(state)
            })
            .await
            .map_err(|error| SandboxError::Io(format!("ledger task failed: {error}")))??;
            match state {
                LedgerState::New => {}
                LedgerState::Recorded(output) => return Ok(output),
                LedgerState::Interrupted => {
                    let output = interrupted_output();
                    self.record(key, output.clone()).await?;
                    return Ok(output);
                }
            }
        }
        let result = self.call_guest(call).await;
        // After a failure the guest may or may not have run the call: the marker stays, so
        // a retry with this key is answered "interrupted" instead of running twice.
        if let (Ok(output), false) = (&result, key.is_empty()) {
            self.record(key, output.clone()).await?;
        }
        result
    }

    async fn record(&self, key: String, output: ToolOutput) -> Result<(), SandboxError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.record(&key, &output))
            .await
            .map_err(|error| SandboxError::Io(format!("ledger task failed: {error}")))?
    }

    async fn call_guest(&self, call: ToolCall) -> Result<ToolOutput, SandboxError> {
        let result = self.client.execute(call).await;
        if let Err(SandboxError::Crashed(message)) = &result {
            // Say why, if QEMU is gone.
            let mut vm = self.vm.lock().await;
            if let Some(current) = vm.as_mut() {
                if matches!(current.child.try_wait(), Ok(Some(_))) {
                    return Err(current.failure(format!("the VM exited ({message})")));
                }
            }
        }
        result
    }

    async fn destroy_vm(&self) -> Result<(), SandboxError> {
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
}

fn guest_config(limits: &Limits) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or(0);
    let memory_mib = (limits.memory_bytes_max / (1024 * 1024)).max(GUEST_MEMORY_MIB_MIN);
    format!(
        "AGENTD_NOW={now}\nAGENTD_PORT={GUEST_PORT}\nAGENTD_TMP_BYTES={}\nAGENTD_WALL_CLOCK_MS={}\n\
         AGENTD_OUTPUT_BYTES_MAX={}\nAGENTD_PIDS_MAX={}\nAGENTD_NETWORK={}\n",
        memory_mib * 1024 * 1024 / 4,
        limits.wall_clock_ms,
        limits.output_bytes_max,
        limits.pids_max,
        u8::from(limits.network)
    )
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn locate_qemu() -> Result<PathBuf, SandboxError> {
    if let Some(path) = std::env::var_os(QEMU_ENV) {
        return Ok(PathBuf::from(path));
    }
    find_in_path("qemu-system-x86_64").ok_or_else(|| {
        SandboxError::Unavailable(
            "qemu-system-x86_64 not found; install the qemu-system-x86 package (scripts/setup.sh)".to_owned(),
        )
    })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|directory| directory.join(program)).find(|candidate| candidate.is_file())
}

/// The newest Debian cloud kernel in /boot, unless `AGENTD_MICROVM_KERNEL` names one.
fn locate_kernel() -> Result<PathBuf, SandboxError> {
    if let Some(path) = std::env::var_os(KERNEL_ENV) {
        return Ok(PathBuf::from(path));
    }
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.starts_with("vmlinuz-") && name.ends_with("-cloud-amd64"))
                })
                .collect()
        })
        .unwrap_or_default();
    kernels.sort();
    kernels.pop().ok_or_else(|| {
        SandboxError::Unavailable(
            "no /boot/vmlinuz-*-cloud-amd64 kernel; install the linux-image-cloud-amd64 package (scripts/setup.sh)"
                .to_owned(),
        )
    })
}

fn kernel_release(kernel: &Path) -> Result<String, SandboxError> {
    kernel
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinuz-"))
        .map(str::to_owned)
        .ok_or_else(|| SandboxError::Unavailable(format!("cannot tell the release of {}", kernel.display())))
}

fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo.lines().find(|line| line.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The cached initramfs for this binary and kernel, built if missing.
async fn build_initramfs(agentd_binary: &Path, release: &str, cache_dir: &Path) -> Result<PathBuf, SandboxError> {
    let metadata = std::fs::metadata(agentd_binary)
        .map_err(|error| SandboxError::Unavailable(format!("the agent binary {}: {error}", agentd_binary.display())))?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    use sha2::Digest;
    let digest = sha2::Sha256::digest(
        format!("{}|{}|{modified}|{release}|{INITRAMFS_SCRIPT}", agentd_binary.display(), metadata.len()).as_bytes(),
    );
    let key: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    let output = cache_dir.join(format!("initramfs-{key}.cpio"));
    if output.is_file() {
        return Ok(output);
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(|error| SandboxError::Io(format!("creating {}: {error}", cache_dir.display())))?;
    let result = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(INITRAMFS_SCRIPT)
        .arg("microvm-initramfs.sh")
        .arg(agentd_binary)
        .arg(release)
        .arg(&output)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| SandboxError::Unavailable(format!("cannot run bash to build the microvm image: {error}")))?;
    if !result.status.success() {
        return Err(SandboxError::Unavailable(format!(
            "building the microvm initramfs failed: {}",
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    Ok(output)
}
