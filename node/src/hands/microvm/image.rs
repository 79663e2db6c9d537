//! The kernel, initramfs, QEMU and accelerator every microVM of this host boots.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use agentd_actors::sandbox::{Limits, SandboxError};

use super::vm::boot;
use super::{ACCEL_ENV, CACHE_DIR_ENV, HANDS_BINARY_ENV, KERNEL_ENV, MICROVM_CACHE_DIR_DEFAULT, QEMU_ENV};

/// The initramfs builder, embedded so that an installed binary can build its image.
const INITRAMFS_SCRIPT: &str = include_str!("../../../../scripts/microvm-initramfs.sh");
/// How long the KVM probe waits for a guest to come up.
const KVM_PROBE_TIMEOUT_MS: u64 = 15_000;

/// What every microVM of this host boots: QEMU, a kernel, the base initramfs, the accelerator.
#[derive(Debug, Clone)]
pub struct MicrovmImage {
    pub(super) qemu: PathBuf,
    /// util-linux `setpriv`, if present: ties QEMU's life to this process.
    pub(super) setpriv: Option<PathBuf>,
    pub(super) kernel: PathBuf,
    pub(super) initramfs: PathBuf,
    pub(super) accel: Accel,
    /// `tsc_early_khz` for the guest: TCG guests cannot calibrate the TSC quickly.
    pub(super) tsc_khz: Option<u64>,
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
            let booted =
                boot(&probe, &directory, None, &Limits::default(), Duration::from_millis(KVM_PROBE_TIMEOUT_MS)).await;
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
}

fn locate_qemu() -> Result<PathBuf, SandboxError> {
    let search = std::env::var_os("PATH").unwrap_or_default();
    qemu_at(std::env::var_os(QEMU_ENV).map(PathBuf::from), &search)
}

/// QEMU at `chosen`, else `qemu-system-x86_64` on `search` (a `PATH` value).
fn qemu_at(chosen: Option<PathBuf>, search: &std::ffi::OsStr) -> Result<PathBuf, SandboxError> {
    let found = match chosen {
        Some(path) => path.is_file().then_some(path),
        None => find_in("qemu-system-x86_64", search),
    };
    found.ok_or_else(|| {
        SandboxError::Unavailable(
            "qemu-system-x86_64 not found; install the qemu-system-x86 package (scripts/setup.sh)".to_owned(),
        )
    })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    find_in(program, &std::env::var_os("PATH").unwrap_or_default())
}

fn find_in(program: &str, search: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(search).map(|directory| directory.join(program)).find(|candidate| candidate.is_file())
}

/// The newest Debian cloud kernel in /boot, unless `AGENTD_MICROVM_KERNEL` names one.
fn locate_kernel() -> Result<PathBuf, SandboxError> {
    match std::env::var_os(KERNEL_ENV) {
        Some(path) if Path::new(&path).is_file() => Ok(PathBuf::from(path)),
        Some(path) => Err(SandboxError::Unavailable(format!("{KERNEL_ENV} names no file: {path:?}"))),
        None => newest_cloud_kernel(Path::new("/boot")),
    }
}

/// The most recently installed `vmlinuz-*-cloud-amd64` in `boot`.
fn newest_cloud_kernel(boot: &Path) -> Result<PathBuf, SandboxError> {
    let kernels = std::fs::read_dir(boot).into_iter().flatten().filter_map(|entry| {
        let entry = entry.ok()?;
        let name = entry.file_name().into_string().ok()?;
        let is_cloud_kernel = name.starts_with("vmlinuz-") && name.ends_with("-cloud-amd64");
        is_cloud_kernel.then(|| (entry.metadata().and_then(|metadata| metadata.modified()).ok(), entry.path()))
    });
    kernels.max().map(|(_, path)| path).ok_or_else(|| {
        SandboxError::Unavailable(format!(
            "no {}/vmlinuz-*-cloud-amd64 kernel; install the linux-image-cloud-amd64 package (scripts/setup.sh)",
            boot.display()
        ))
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
    // One image per binary path: a rebuilt binary replaces its image, so the cache
    // holds at most one image per agentd binary on this host.
    let short_hash = |text: String| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(text.as_bytes()).iter().take(8).map(|byte| format!("{byte:02x}")).collect()
    };
    let binary_key = short_hash(agentd_binary.display().to_string());
    let version_key = short_hash(format!("{}|{modified}|{release}|{INITRAMFS_SCRIPT}", metadata.len()));
    let output = cache_dir.join(format!("initramfs-{binary_key}-{version_key}.cpio"));
    // Sandboxes provisioned at once wait for one build instead of each running their own.
    static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _building = BUILDING.lock().await;
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
    // Older images of this binary. Running VMs are unaffected: QEMU read theirs at start.
    let stale_prefix = format!("initramfs-{binary_key}-");
    for entry in std::fs::read_dir(cache_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&stale_prefix) && entry.path() != output {
            if let Err(error) = std::fs::remove_file(entry.path()) {
                tracing::debug!(%error, name, "could not remove a stale microvm image");
            }
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_qemu_names_the_package() {
        let error = qemu_at(None, std::ffi::OsStr::new("")).unwrap_err();
        assert!(matches!(&error, SandboxError::Unavailable(message) if message.contains("qemu-system-x86 package")));
        let error = qemu_at(Some(PathBuf::from("/nonexistent/qemu")), std::ffi::OsStr::new("")).unwrap_err();
        assert!(matches!(error, SandboxError::Unavailable(_)));
    }

    #[test]
    fn the_newest_cloud_kernel_is_chosen_and_a_missing_one_names_the_package() {
        let boot = std::env::temp_dir().join(format!("agentd-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&boot).unwrap();
        let error = newest_cloud_kernel(&boot).unwrap_err();
        assert!(matches!(&error, SandboxError::Unavailable(message) if message.contains("linux-image-cloud-amd64")));
        for name in ["vmlinuz-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-10-amd64", "vmlinuz-6.1.0-10-cloud-amd64"] {
            std::fs::write(boot.join(name), b"").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(newest_cloud_kernel(&boot).unwrap(), boot.join("vmlinuz-6.1.0-10-cloud-amd64"));
        assert_eq!(kernel_release(&boot.join("vmlinuz-6.1.0-10-cloud-amd64")).unwrap(), "6.1.0-10-cloud-amd64");
        std::fs::remove_dir_all(&boot).unwrap();
    }
}
