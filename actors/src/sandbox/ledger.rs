//! The idempotency ledger: one file per idempotency key under `root/ledger`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{SandboxError, ToolOutput};

/// Recorded tool outputs, keyed by idempotency key, persisted before a call returns.
///
/// **Invariant:** a key's file, once renamed into place, is complete and never
/// rewritten, so a call cut off by a crash and re-sent takes effect at most once
/// if it had finished, and runs if it had not.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    directory: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    idempotency_key: String,
    output: ToolOutput,
}

impl Ledger {
    pub(crate) fn open(directory: PathBuf) -> Result<Ledger, SandboxError> {
        std::fs::create_dir_all(&directory)
            .map_err(|error| SandboxError::Io(format!("creating ledger {}: {error}", directory.display())))?;
        Ok(Ledger { directory })
    }

    fn path_of(&self, idempotency_key: &str) -> PathBuf {
        let digest = Sha256::digest(idempotency_key.as_bytes());
        let name: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        self.directory.join(name)
    }

    /// The recorded output of `idempotency_key`, if any.
    pub(crate) fn get(&self, idempotency_key: &str) -> Result<Option<ToolOutput>, SandboxError> {
        let path = self.path_of(idempotency_key);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(SandboxError::Io(format!("reading ledger entry {}: {error}", path.display()))),
        };
        let entry: Entry = serde_json::from_slice(&bytes)
            .map_err(|error| SandboxError::Io(format!("corrupt ledger entry {}: {error}", path.display())))?;
        if entry.idempotency_key != idempotency_key {
            return Err(SandboxError::Io(format!("ledger entry {} belongs to another key", path.display())));
        }
        Ok(Some(entry.output))
    }

    /// Durably records `output` for `idempotency_key`: temporary file, fsync, rename, fsync of the directory.
    pub(crate) fn record(&self, idempotency_key: &str, output: &ToolOutput) -> Result<(), SandboxError> {
        let path = self.path_of(idempotency_key);
        let entry = Entry { idempotency_key: idempotency_key.to_owned(), output: output.clone() };
        let bytes =
            serde_json::to_vec(&entry).map_err(|error| SandboxError::Io(format!("encoding ledger entry: {error}")))?;
        let temporary = path.with_extension(format!("tmp-{}", rand::random::<u64>()));
        let io = |error: std::io::Error| SandboxError::Io(format!("writing ledger entry {}: {error}", path.display()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            sync_directory(&self.directory)
        };
        write().map_err(|error| {
            // Best effort: a leftover temporary file is harmless but untidy.
            let _ = std::fs::remove_file(&temporary);
            io(error)
        })
    }
}

fn sync_directory(directory: &Path) -> std::io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}
