//! The idempotency ledger: one file per idempotency key under `root/ledger`.
//!
//! Per key, the files are named by the key's hex SHA-256. `<name>.started` is
//! made durable (fsync of the file and of the directory) before the tool runs;
//! `<name>` holds the output as JSON, written as a temporary file, fsynced,
//! renamed into place and the directory fsynced, before the call returns.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sandbox::{SandboxError, ToolOutput};

/// Recorded tool outputs, keyed by idempotency key, persisted before a call returns.
///
/// Per key (file name = hex SHA-256 of the key): `<name>.started` is made durable
/// before the tool runs, `<name>` holds the output once it finished.
///
/// **Invariant:** a tool runs at most once per key. A key with an output returns
/// it; a key that started but has no output (the host crashed mid-call) is not
/// run again: it is answered with an "interrupted" error, which is then recorded.
/// An output file, once renamed into place, is complete and never rewritten.
#[derive(Debug, Clone)]
pub struct Ledger {
    directory: PathBuf,
}

/// What the ledger knows about one key.
#[derive(Debug)]
pub enum LedgerState {
    /// Never seen: run the tool.
    New,
    /// Started before a crash and never finished: do not run it again.
    Interrupted,
    /// Finished with this output.
    Recorded(ToolOutput),
}

/// What [`Ledger::claim`] decided for a key.
#[derive(Debug)]
pub enum Claim {
    /// Marked started: run the call, then record its output.
    Run,
    /// Answered from the ledger without running: the recorded output, or (a call
    /// that started before a crash and never finished) the interrupted answer,
    /// now recorded too.
    Answered { output: ToolOutput, interrupted: bool },
}

#[derive(Serialize, Deserialize)]
struct Entry {
    idempotency_key: String,
    output: ToolOutput,
}

/// The answer to a call that started before a crash and never finished: it is
/// not run again.
pub fn interrupted_output() -> ToolOutput {
    ToolOutput::failure(
        "this tool call was interrupted by a crash before it finished; it was not run again \
         (it runs at most once per idempotency key), and its effects may be partial",
    )
}

impl Ledger {
    /// Runs ledger work on the blocking pool (it writes and fsyncs files).
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Ledger) -> Result<T, SandboxError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let ledger = self.clone();
        tokio::task::spawn_blocking(move || work(&ledger))
            .await
            .map_err(|error| SandboxError::Io(format!("ledger task failed: {error}")))?
    }

    /// Decides a key in one hop off the runtime: a new key is marked started
    /// (durably) before this returns, so the caller may run the call; a known
    /// key is answered (an interrupted one is answered, and recorded, as
    /// [`interrupted_output`]).
    pub async fn claim(&self, idempotency_key: &str) -> Result<Claim, SandboxError> {
        let key = idempotency_key.to_owned();
        self.off_runtime(move |ledger| match ledger.state(&key)? {
            LedgerState::New => {
                ledger.begin(&key)?;
                Ok(Claim::Run)
            }
            LedgerState::Recorded(output) => Ok(Claim::Answered { output, interrupted: false }),
            LedgerState::Interrupted => {
                let output = interrupted_output();
                ledger.record(&key, &output)?;
                Ok(Claim::Answered { output, interrupted: true })
            }
        })
        .await
    }

    /// [`Ledger::record`] off the runtime.
    pub async fn record_async(&self, idempotency_key: &str, output: &ToolOutput) -> Result<(), SandboxError> {
        let (key, output) = (idempotency_key.to_owned(), output.clone());
        self.off_runtime(move |ledger| ledger.record(&key, &output)).await
    }

    /// [`Ledger::abandon`] off the runtime.
    pub async fn abandon_async(&self, idempotency_key: &str) -> Result<(), SandboxError> {
        let key = idempotency_key.to_owned();
        self.off_runtime(move |ledger| ledger.abandon(&key)).await
    }

    pub fn open(directory: PathBuf) -> Result<Ledger, SandboxError> {
        std::fs::create_dir_all(&directory)
            .map_err(|error| SandboxError::Io(format!("creating ledger {}: {error}", directory.display())))?;
        Ok(Ledger { directory })
    }

    fn path_of(&self, idempotency_key: &str) -> PathBuf {
        let digest = Sha256::digest(idempotency_key.as_bytes());
        let name: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        self.directory.join(name)
    }

    fn started_path_of(&self, idempotency_key: &str) -> PathBuf {
        self.path_of(idempotency_key).with_extension("started")
    }

    /// What is known about `idempotency_key`.
    pub fn state(&self, idempotency_key: &str) -> Result<LedgerState, SandboxError> {
        if let Some(output) = self.get(idempotency_key)? {
            return Ok(LedgerState::Recorded(output));
        }
        if self.started_path_of(idempotency_key).exists() {
            return Ok(LedgerState::Interrupted);
        }
        Ok(LedgerState::New)
    }

    /// Durably notes that the call with `idempotency_key` is about to run.
    pub fn begin(&self, idempotency_key: &str) -> Result<(), SandboxError> {
        let path = self.started_path_of(idempotency_key);
        let write = || -> std::io::Result<()> {
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path)?.sync_all()?;
            sync_directory(&self.directory)
        };
        write().map_err(|error| SandboxError::Io(format!("writing ledger marker {}: {error}", path.display())))
    }

    /// Forgets that the call with `idempotency_key` started: it did not run (the
    /// sandbox failed before the tool did), so a retry may run it.
    pub fn abandon(&self, idempotency_key: &str) -> Result<(), SandboxError> {
        let path = self.started_path_of(idempotency_key);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(SandboxError::Io(format!("removing ledger marker {}: {error}", path.display())))
            }
            _ => Ok(()),
        }
    }

    /// The recorded output of `idempotency_key`, if any.
    fn get(&self, idempotency_key: &str) -> Result<Option<ToolOutput>, SandboxError> {
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
    pub fn record(&self, idempotency_key: &str, output: &ToolOutput) -> Result<(), SandboxError> {
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
        })?;
        // The output takes precedence over the marker, so its removal need not be durable.
        match std::fs::remove_file(self.started_path_of(idempotency_key)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(%error, "could not remove a ledger marker");
            }
            _ => {}
        }
        Ok(())
    }
}

fn sync_directory(directory: &Path) -> std::io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}
