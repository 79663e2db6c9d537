//! Booted VMs kept ready, so that a session's first tool call does not wait
//! for a boot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_actors::sandbox::{Ledger, Limits, Network, SandboxError};
use agentd_protocol::limits::SANDBOX_BOOT_TIMEOUT_MS;
use agentd_protocol::sync::lock;

use super::vm::{self, Phase, Vm};
use super::{MicrovmImage, MicrovmSandbox, WORKSPACE_DISK};

/// Spares kept per shape of limits, unless `AGENTD_MICROVM_SPARES` says otherwise.
pub const SPARES_DEFAULT: usize = 1;
/// How many booted VMs to keep ready per shape of limits (0 turns the pool off).
pub const SPARES_ENV: &str = "AGENTD_MICROVM_SPARES";

/// Shapes of limits that keep spares at once: every environment with different
/// limits is a shape, and idle spares cost memory.
const SHAPES_WITH_SPARES_MAX: usize = 4;

/// What a guest is booted with; only a spare booted with the same can serve a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    memory_bytes_max: u64,
    wall_clock_ms: u64,
    output_bytes_max: usize,
    pids_max: u64,
    network: Network,
}

impl Shape {
    fn of(limits: &Limits) -> Shape {
        Shape {
            memory_bytes_max: limits.memory_bytes_max,
            wall_clock_ms: limits.wall_clock_ms,
            output_bytes_max: limits.output_bytes_max,
            pids_max: limits.pids_max,
            network: limits.network.clone(),
        }
    }
}

/// A booted VM waiting for a sandbox, with the directory of its files.
struct Spare {
    vm: Vm,
    directory: PathBuf,
}

/// Keeps up to `spares` booted VMs per shape of limits that a sandbox was asked
/// for, for at most `SHAPES_WITH_SPARES_MAX` shapes (first come). A sandbox takes a spare if one is ready and boots one otherwise; either
/// way a replacement boots in the background. Spares hold no session data
/// (empty workspace, fresh certificates); dropping the pool kills them.
pub struct MicrovmPool {
    image: MicrovmImage,
    /// Where spares keep their files until a sandbox takes them.
    directory: PathBuf,
    spares: usize,
    ready: Mutex<HashMap<Shape, Vec<Spare>>>,
    /// Shapes with a spare booting, so that one boot at a time refills each.
    booting: Mutex<HashMap<Shape, usize>>,
}

impl MicrovmPool {
    /// A pool that keeps `spares` VMs per shape (0: every sandbox boots its own) with
    /// their files under `directory`.
    pub fn new(image: MicrovmImage, directory: PathBuf, spares: usize) -> Arc<MicrovmPool> {
        Arc::new(MicrovmPool {
            image,
            directory,
            spares,
            ready: Mutex::new(HashMap::new()),
            booting: Mutex::new(HashMap::new()),
        })
    }

    /// The image from `MicrovmImage::prepare_default`, and `AGENTD_MICROVM_SPARES`
    /// spares per shape (default [`SPARES_DEFAULT`]).
    pub async fn from_env(directory: PathBuf) -> Result<Arc<MicrovmPool>, SandboxError> {
        let image = MicrovmImage::prepare_default().await?;
        let spares = match std::env::var(SPARES_ENV) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| SandboxError::Unavailable(format!("{SPARES_ENV} is not a number: {text:?}")))?,
            Err(_) => SPARES_DEFAULT,
        };
        Ok(MicrovmPool::new(image, directory, spares))
    }

    pub fn image(&self) -> &MicrovmImage {
        &self.image
    }

    /// A sandbox for `root` (as `MicrovmSandbox::provision`), from a spare if one is ready.
    pub async fn provision(self: &Arc<Self>, root: PathBuf, limits: Limits) -> Result<MicrovmSandbox, SandboxError> {
        let shape = Shape::of(&limits);
        let disk = root.join(WORKSPACE_DISK);
        // A spare's disk is blank: a session that has a workspace disk boots with it.
        let spare = if disk.exists() { None } else { self.take(&shape) };
        self.refill(shape, limits.clone());
        let Some(spare) = spare else { return MicrovmSandbox::provision(root, limits, &self.image).await };
        // The spare's blank disk becomes the session's (QEMU keeps it open across the rename).
        let adopted =
            std::fs::create_dir_all(&root).and_then(|()| std::fs::rename(spare.directory.join(WORKSPACE_DISK), &disk));
        if let Err(error) = adopted {
            tracing::warn!(%error, root = %root.display(), "could not move a spare's disk to the session; booting one");
            let _ = std::fs::remove_dir_all(&spare.directory);
            return MicrovmSandbox::provision(root, limits, &self.image).await;
        }
        let ledger = Ledger::open(root.join("ledger"))?;
        tracing::debug!(root = %root.display(), "microvm sandbox from a spare");
        MicrovmSandbox::assemble(spare.vm, spare.directory, ledger, self.image.accel())
    }

    /// QEMU process ids of the spares ready for `limits`.
    pub fn spare_pids(&self, limits: &Limits) -> Vec<u32> {
        let ready = lock(&self.ready);
        ready
            .get(&Shape::of(limits))
            .map_or_else(Vec::new, |spares| spares.iter().filter_map(|spare| spare.vm.child.id()).collect())
    }

    /// A ready spare whose QEMU still runs.
    fn take(&self, shape: &Shape) -> Option<Spare> {
        let mut ready = lock(&self.ready);
        let spares = ready.get_mut(shape)?;
        while let Some(spare) = spares.pop() {
            if *spare.vm.phase.borrow() == Phase::Ready {
                return Some(spare);
            }
            // Its QEMU is gone: dropping it removes the rest.
            let _ = std::fs::remove_dir_all(&spare.directory);
        }
        None
    }

    /// Boots spares in the background until `shape` has `spares` of them.
    fn refill(self: &Arc<Self>, shape: Shape, limits: Limits) {
        {
            let ready = lock(&self.ready);
            let mut booting = lock(&self.booting);
            let mut counts: HashMap<&Shape, usize> = HashMap::new();
            for (other, spares) in ready.iter() {
                *counts.entry(other).or_default() += spares.len();
            }
            for (other, count) in booting.iter() {
                *counts.entry(other).or_default() += count;
            }
            if !needs_spare(&counts, &shape, self.spares) {
                return;
            }
            *booting.entry(shape.clone()).or_default() += 1;
        }
        let pool = Arc::downgrade(self);
        let directory = self.directory.join(format!("spare-{:016x}", rand::random::<u64>()));
        let image = self.image.clone();
        tokio::spawn(async move {
            let disk = directory.join(WORKSPACE_DISK);
            let timeout = Duration::from_millis(SANDBOX_BOOT_TIMEOUT_MS);
            let booted = match vm::prepare_disk(&disk).await {
                Ok(()) => vm::boot(&image, &directory, Some(&disk), &limits, timeout).await,
                Err(error) => Err(error),
            };
            let Some(pool) = pool.upgrade() else {
                let _ = std::fs::remove_dir_all(&directory);
                return;
            };
            if let Some(count) = lock(&pool.booting).get_mut(&shape) {
                *count = count.saturating_sub(1);
            }
            match booted {
                Ok(vm) => lock(&pool.ready).entry(shape).or_default().push(Spare { vm, directory }),
                Err(error) => {
                    tracing::warn!(%error, "a spare microvm did not boot");
                    let _ = std::fs::remove_dir_all(&directory);
                }
            }
        });
    }
}

/// Whether `shape` should get one more spare, given the spares (ready or booting)
/// of every shape.
fn needs_spare(counts: &HashMap<&Shape, usize>, shape: &Shape, spares: usize) -> bool {
    let have = counts.get(shape).copied().unwrap_or(0);
    let other_shapes = counts.iter().filter(|(other, count)| **other != shape && **count > 0).count();
    have < spares && (have > 0 || other_shapes < SHAPES_WITH_SPARES_MAX)
}

impl Drop for MicrovmPool {
    fn drop(&mut self) {
        // The spares' QEMUs die with their `Vm`s; their files go here.
        let ready = self.ready.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for spare in ready.values().flatten() {
            let _ = std::fs::remove_dir_all(&spare.directory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_bounded_per_shape_and_in_shapes() {
        let shapes: Vec<Shape> =
            (0..6).map(|index| Shape::of(&Limits { wall_clock_ms: 1_000 + index, ..Limits::default() })).collect();
        let mut counts: HashMap<&Shape, usize> = HashMap::new();
        assert!(needs_spare(&counts, &shapes[0], 1));
        assert!(!needs_spare(&counts, &shapes[0], 0), "0 spares turns the pool off");
        for shape in &shapes[..SHAPES_WITH_SPARES_MAX] {
            counts.insert(shape, 1);
        }
        assert!(!needs_spare(&counts, &shapes[0], 1), "one spare per shape");
        assert!(needs_spare(&counts, &shapes[0], 2));
        assert!(!needs_spare(&counts, &shapes[SHAPES_WITH_SPARES_MAX], 1), "no new shape beyond the cap");
        counts.insert(&shapes[1], 0);
        assert!(needs_spare(&counts, &shapes[SHAPES_WITH_SPARES_MAX], 1), "a shape without spares frees a place");
    }
}
