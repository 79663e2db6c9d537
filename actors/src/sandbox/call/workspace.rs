//! Confinement of the host-side file tools to one session's workspace.

use std::path::{Component, Path, PathBuf};

/// Where the workspace appears inside the sandbox; tools accept paths under it.
pub(crate) const WORKSPACE_MOUNT: &str = "/workspace";

/// A session's workspace directory on the host, and the rules that keep file
/// tools inside it.
///
/// **Boundary:** paths come from a model and are hostile. A path is accepted
/// only if it is relative or under `/workspace`, has no `..`, and its
/// canonical form (all symlinks followed) stays under the canonical root.
/// Writes never follow a symlink at the final component.
///
/// The checks and the IO are separate system calls, so a process inside the
/// sandbox that swaps a directory for a symlink between the check and the
/// IO could still redirect one host-side operation (a TOCTOU race). Closing
/// that needs `openat2(RESOLVE_BENEATH)`, which this crate cannot call without
/// `unsafe` or a new dependency.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    root: PathBuf,
    /// The host user that must own what the file tools create, when the sandbox
    /// runs as a different host user than this process (the rlimit fallback as root).
    owner: Option<u32>,
}

impl Workspace {
    /// `root` must exist; it is canonicalized once here. With an `owner`, everything
    /// already in the workspace is handed to that host user.
    pub(crate) fn new(root: &Path, owner: Option<u32>) -> std::io::Result<Workspace> {
        let workspace = Workspace { root: root.canonicalize()?, owner };
        if owner.is_some() {
            for entry in walkdir::WalkDir::new(&workspace.root).follow_links(false) {
                workspace.hand_over(entry?.path())?;
            }
        }
        Ok(workspace)
    }

    /// Gives `path` (not a symlink's target) to the workspace's owner, if it has one.
    pub(crate) fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        match self.owner {
            Some(owner) => std::os::unix::fs::lchown(path, Some(owner), Some(owner)),
            None => Ok(()),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The host path for a model-supplied path, without following symlinks yet.
    pub(crate) fn lexical(&self, requested: &str) -> Result<PathBuf, String> {
        if requested.is_empty() {
            return Err("the path is empty".to_owned());
        }
        if requested.contains('\0') {
            return Err("the path contains a NUL byte".to_owned());
        }
        let requested_path = Path::new(requested);
        let relative = if requested_path.is_absolute() {
            requested_path.strip_prefix(WORKSPACE_MOUNT).map_err(|_| {
                format!("{requested} is outside the workspace: use a path relative to {WORKSPACE_MOUNT} or under it")
            })?
        } else {
            requested_path
        };
        let mut host = self.root.clone();
        for component in relative.components() {
            match component {
                Component::Normal(part) => host.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(format!("{requested}: `..` is not allowed in paths")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("{requested} is outside the workspace"));
                }
            }
        }
        Ok(host)
    }

    /// The canonical host path of an existing file or directory inside the workspace.
    pub(crate) fn existing(&self, requested: &str) -> Result<PathBuf, String> {
        let host = self.lexical(requested)?;
        let canonical = host.canonicalize().map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => format!("{requested}: no such file or directory"),
            _ => format!("{requested}: {error}"),
        })?;
        self.check_inside(requested, canonical)
    }

    /// The host path to write `requested` to: its parent directories are created
    /// inside the workspace, and a symlink at the final component is refused.
    pub(crate) fn writable(&self, requested: &str) -> Result<PathBuf, String> {
        let host = self.lexical(requested)?;
        if host == self.root {
            return Err(format!("{requested} is the workspace directory itself, not a file"));
        }
        let (Some(parent), Some(name)) = (host.parent(), host.file_name()) else {
            return Err(format!("{requested} has no file name"));
        };
        self.create_directories(requested, parent)?;
        let parent = parent.canonicalize().map_err(|error| format!("{requested}: {error}"))?;
        let parent = self.check_inside(requested, parent)?;
        let target = parent.join(name);
        match std::fs::symlink_metadata(&target) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                Err(format!("{requested} is a symlink; refusing to write through it"))
            }
            Ok(metadata) if metadata.is_dir() => Err(format!("{requested} is a directory")),
            Ok(_) => Ok(target),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(target),
            Err(error) => Err(format!("{requested}: {error}")),
        }
    }

    /// Creates `directory` and its missing ancestors, checking each existing one stays inside.
    fn create_directories(&self, requested: &str, directory: &Path) -> Result<(), String> {
        let relative =
            directory.strip_prefix(&self.root).map_err(|_| format!("{requested} is outside the workspace"))?;
        let mut current = self.root.clone();
        for component in relative.components() {
            current.push(component);
            match std::fs::symlink_metadata(&current) {
                Ok(_) => {
                    let canonical = current.canonicalize().map_err(|error| format!("{requested}: {error}"))?;
                    let canonical = self.check_inside(requested, canonical)?;
                    if !canonical.is_dir() {
                        return Err(format!("{requested}: {} is not a directory", self.display(&canonical)));
                    }
                    current = canonical;
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&current).map_err(|error| format!("{requested}: {error}"))?;
                    self.hand_over(&current).map_err(|error| format!("{requested}: {error}"))?;
                }
                Err(error) => return Err(format!("{requested}: {error}")),
            }
        }
        Ok(())
    }

    fn check_inside(&self, requested: &str, canonical: PathBuf) -> Result<PathBuf, String> {
        if canonical.starts_with(&self.root) {
            Ok(canonical)
        } else {
            Err(format!("{requested} resolves outside the workspace (through a symlink); access denied"))
        }
    }

    /// How a host path inside the workspace is shown to the model: relative to the workspace.
    pub(crate) fn display(&self, host: &Path) -> String {
        match host.strip_prefix(&self.root) {
            Ok(relative) if relative.as_os_str().is_empty() => ".".to_owned(),
            Ok(relative) => relative.to_string_lossy().into_owned(),
            Err(_) => host.to_string_lossy().into_owned(),
        }
    }
}
