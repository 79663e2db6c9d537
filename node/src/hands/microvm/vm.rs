//! One running QEMU: booting it with a VM's files, watching its console, killing it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_actors::sandbox::{Limits, Network, SandboxError};
use agentd_transport::tls::ClusterCa;
use tokio::io::AsyncBufReadExt;

use super::image::{Accel, MicrovmImage};
use super::GUEST_MEMORY_MIB_MIN;
use crate::hands::client::HandsClient;
use agentd_protocol::limits::MICROVM_WORKSPACE_DISK_BYTES;

/// The port the agent listens on inside the guest.
const GUEST_PORT: u16 = 4433;
/// Bytes of the guest's console kept to explain a failure.
const CONSOLE_TAIL_BYTES_MAX: usize = 8 * 1024;
/// The line the agent prints when it listens.
const READY_LINE: &str = "agentd hands listening on";
/// Host-side ports tried when a forwarded port turns out to be taken.
const BOOT_ATTEMPTS: u32 = 2;

/// How long making a workspace disk's file system may take.
const MKFS_TIMEOUT_MS: u64 = 30_000;

/// Makes the workspace disk at `disk` unless it exists: a sparse file of
/// `MICROVM_WORKSPACE_DISK_BYTES` holding an empty ext4 file system whose root
/// belongs to the tools' user (uid 1000). Made under a temporary name and
/// renamed, so a crash never leaves half a file system at `disk`.
pub(super) async fn prepare_disk(disk: &Path) -> Result<(), SandboxError> {
    if disk.exists() {
        return Ok(());
    }
    if let Some(parent) = disk.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| SandboxError::Io(format!("creating {}: {error}", parent.display())))?;
    }
    let partial = disk.with_extension("img.partial");
    let io = |what: &str, error: std::io::Error| SandboxError::Io(format!("{what} {}: {error}", partial.display()));
    std::fs::File::create(&partial)
        .and_then(|file| file.set_len(MICROVM_WORKSPACE_DISK_BYTES))
        .map_err(|error| io("creating", error))?;
    let mut command = tokio::process::Command::new("mkfs.ext4");
    // A 16 MiB journal: the default (64 MiB for this size) would be most of what an empty disk takes.
    command
        .args(["-q", "-F", "-m", "0", "-J", "size=16", "-E", "root_owner=1000:1000"])
        .arg(&partial)
        .kill_on_drop(true);
    let failure = match tokio::time::timeout(Duration::from_millis(MKFS_TIMEOUT_MS), command.output()).await {
        Ok(Ok(output)) if output.status.success() => None,
        Ok(Ok(output)) => Some(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim())),
        Ok(Err(error)) => Some(error.to_string()),
        Err(_elapsed) => Some(format!("no answer within {MKFS_TIMEOUT_MS} ms")),
    };
    if let Some(failure) = failure {
        let _ = std::fs::remove_file(&partial);
        return Err(SandboxError::Unavailable(format!(
            "making the workspace disk with mkfs.ext4 failed ({failure}); install e2fsprogs"
        )));
    }
    std::fs::rename(&partial, disk).map_err(|error| io("renaming", error))
}

/// Boots one VM whose files live in `directory`, with `disk` (see [`prepare_disk`])
/// as its workspace (without one, the workspace is in guest RAM), and waits until
/// its agent answers.
pub(super) async fn boot(
    image: &MicrovmImage,
    directory: &Path,
    disk: Option<&Path>,
    limits: &Limits,
    timeout: Duration,
) -> Result<Vm, SandboxError> {
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
        ("allowlist", guest_allowlist(limits)),
    ];
    for (file, text) in &files {
        write_private(&directory.join(file), text).map_err(|error| io("writing the guest files", error))?;
    }
    let mut last_error = None;
    for _ in 0..BOOT_ATTEMPTS {
        let port = free_udp_port().map_err(|error| SandboxError::Unavailable(format!("no free UDP port: {error}")))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut vm = spawn(image, directory, disk, limits, port)?;
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

fn spawn(
    image: &MicrovmImage,
    directory: &Path,
    disk: Option<&Path>,
    limits: &Limits,
    port: u16,
) -> Result<Vm, SandboxError> {
    let memory_mib = (limits.memory_bytes_max / (1024 * 1024)).max(GUEST_MEMORY_MIB_MIN);
    let mut kernel_arguments = "console=ttyS0 quiet panic=-1 tsc=reliable".to_owned();
    if let Some(khz) = image.tsc_khz {
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
    let mut command = match &image.setpriv {
        Some(setpriv) => {
            let mut command = tokio::process::Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(&image.qemu);
            command
        }
        None => tokio::process::Command::new(&image.qemu),
    };
    command
        .args(["-M", "microvm,acpi=on", "-accel", image.accel.name()])
        .args(["-cpu", if image.accel == Accel::Kvm { "host" } else { "max" }])
        .args(["-smp", "1", "-m", &memory_mib.to_string()])
        .args(["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        .args(["-append", &kernel_arguments])
        .args(["-netdev", &netdev, "-device", "virtio-net-device,netdev=net0"])
        .args(["-device", "virtio-rng-device"]);
    if let Some(disk) = disk {
        let file = disk.display().to_string().replace(',', ",,");
        command.arg("-drive").arg(format!("file={file},if=none,id=workspace,format=raw"));
        command.args(["-device", "virtio-blk-device,drive=workspace"]);
    }
    for file in ["ca.pem", "agent.pem", "agent.key", "config", "allowlist"] {
        // QEMU's option syntax escapes a comma by doubling it.
        let path = directory.join(file).display().to_string().replace(',', ",,");
        command.arg("-fw_cfg").arg(format!("name=opt/agentd/{file},file={path}"));
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| SandboxError::Unavailable(format!("cannot start {}: {error}", image.qemu.display())))?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let (phase_sender, phase) = tokio::sync::watch::channel(Phase::Booting);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_console(stdout, console.clone(), Some(phase_sender)));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_console(stderr, console.clone(), None));
    }
    Ok(Vm { child, console, phase, client: None })
}

/// Keeps the tail of the guest's console (and QEMU's own messages), and says when the agent listens.
async fn read_console(
    stream: impl tokio::io::AsyncRead + Unpin,
    console: Arc<Mutex<Vec<u8>>>,
    phase: Option<tokio::sync::watch::Sender<Phase>>,
) {
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains(READY_LINE) {
            if let Some(phase) = &phase {
                phase.send_replace(Phase::Ready);
            }
        }
        if let Ok(mut tail) = console.lock() {
            tail.extend_from_slice(line.as_bytes());
            tail.push(b'\n');
            let excess = tail.len().saturating_sub(CONSOLE_TAIL_BYTES_MAX);
            tail.drain(..excess);
        }
    }
    // QEMU's standard output (the serial console) ends when QEMU does.
    if let Some(phase) = &phase {
        phase.send_replace(Phase::Exited);
    }
}

/// Where a VM is in its life, as seen on its console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Booting,
    /// The agent printed that it listens.
    Ready,
    /// QEMU is gone.
    Exited,
}

/// Why a VM did not come up.
enum BootFailure {
    /// QEMU exited (a taken port, a broken accelerator): another attempt may work.
    Exited(SandboxError),
    TimedOut(SandboxError),
}

/// One running VM. Dropping it kills QEMU.
pub(super) struct Vm {
    pub(super) child: tokio::process::Child,
    pub(super) console: Arc<Mutex<Vec<u8>>>,
    pub(super) phase: tokio::sync::watch::Receiver<Phase>,
    pub(super) client: Option<HandsClient>,
}

impl Vm {
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BootFailure> {
        let outcome = tokio::time::timeout(timeout, async {
            tokio::select! {
                phase = self.phase.wait_for(|phase| *phase != Phase::Booting) => {
                    phase.is_ok_and(|phase| *phase == Phase::Ready)
                }
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

    pub(super) fn failure(&self, what: String) -> SandboxError {
        let console = self.console.lock().map(|tail| String::from_utf8_lossy(&tail).into_owned()).unwrap_or_default();
        SandboxError::Crashed(format!("{what}; console: {}", console.trim()))
    }

    pub(super) async fn kill(&mut self) {
        if let Some(client) = &self.client {
            client.close();
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
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
        match limits.network {
            Network::None => "none",
            Network::Unrestricted => "unrestricted",
            Network::Allowlist(_) => "allowlist",
        }
    )
}

/// The egress allowlist, an entry per line (entries are validated and have no
/// whitespace), for `agentd hands --allow-hosts-file`; empty without one.
fn guest_allowlist(limits: &Limits) -> String {
    match &limits.network {
        Network::Allowlist(entries) => entries.iter().map(|entry| format!("{}\n", entry.trim())).collect(),
        Network::None | Network::Unrestricted => String::new(),
    }
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
