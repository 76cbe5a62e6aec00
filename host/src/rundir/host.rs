//! The directories of one named host, and the name of every file in them: the one place that knows the layout
//! `{pid_root}/{name}.pid`, `{status_root}/{name}/{status.json, metrics.prom, plugins/, requests/}`.

use std::path::{Path, PathBuf};

use super::dir::{Dir, RunDirError};
use super::trust::open_root;

/// The status snapshot, in the status directory.
pub const STATUS_FILE: &str = "status.json";
/// The Prometheus text file, in the status directory.
pub const METRICS_FILE: &str = "metrics.prom";
/// Staged plugin copies, below the status directory.
pub const PLUGINS_DIR: &str = "plugins";
/// Control requests from the CLI, below the status directory.
pub const REQUESTS_DIR: &str = "requests";

/// Largest `status.json` read (1024 workers of 64 tasks fit in well under a tenth of this).
pub const STATUS_LIMIT: u64 = 16 << 20;
/// Largest control request read.
pub const REQUEST_LIMIT: u64 = 64 << 10;
/// Largest pid file read.
pub const PID_FILE_LIMIT: u64 = 64;

/// A host's pid root and status directory, held open.
#[derive(Debug)]
pub struct HostDirs {
    name: String,
    status_root: PathBuf,
    pid_root: Dir,
    status: Dir,
}

impl HostDirs {
    /// Opens (`create`: creating what is missing) the roots and the host's status directory, after checking
    /// every directory on their way. `Ok(None)` when something does not exist and `create` is not set.
    pub fn open(
        pid_root: &Path,
        status_root: &Path,
        name: &str,
        create: bool,
    ) -> Result<Option<HostDirs>, RunDirError> {
        let Some(pid_root) = open_root(pid_root, create)? else { return Ok(None) };
        let Some(status) = open_status(status_root, name, create)? else { return Ok(None) };
        Ok(Some(HostDirs { name: name.to_owned(), status_root: status_root.to_owned(), pid_root, status }))
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid root.
    pub fn pid_root(&self) -> &Dir {
        &self.pid_root
    }

    /// `{name}.pid`, the pid file's name in the pid root.
    pub fn pid_file_name(&self) -> String {
        pid_file_name(&self.name)
    }

    /// `{pid_root}/{name}.pid`, for messages.
    pub fn pid_file_path(&self) -> PathBuf {
        self.pid_root.display_path(&self.pid_file_name())
    }

    /// `{status_root}/{name}`.
    pub fn status(&self) -> &Dir {
        &self.status
    }

    /// `{status_root}/{name}/plugins`.
    pub fn plugins(&self, create: bool) -> Result<Option<Dir>, RunDirError> {
        self.status.subdir(PLUGINS_DIR, create)
    }

    /// `{status_root}/{name}/requests`.
    pub fn requests(&self, create: bool) -> Result<Option<Dir>, RunDirError> {
        self.status.subdir(REQUESTS_DIR, create)
    }

    /// Opens the status directory again after it was removed (by a tmp cleaner or a person): re-checks and
    /// re-creates the way there. The old descriptor is kept if that fails.
    pub fn recreate_status(&mut self) -> Result<(), RunDirError> {
        if let Some(status) = open_status(&self.status_root, &self.name, true)? {
            self.status = status;
        }
        Ok(())
    }

    /// Removes what a stopped host leaves behind: its status files, staged plugins, pending requests and the
    /// status directory itself (when nothing else was put in it).
    pub fn remove_status(&self) {
        for file in [STATUS_FILE, METRICS_FILE] {
            self.status.remove(file);
        }
        for sub in [PLUGINS_DIR, REQUESTS_DIR] {
            if let Ok(Some(dir)) = self.status.subdir(sub, false) {
                for (name, _) in dir.entries().unwrap_or_default() {
                    dir.remove(&name);
                }
                self.status.remove_dir(sub);
            }
        }
        if let Ok(Some(root)) = open_root(&self.status_root, false) {
            root.remove_dir(&self.name);
        }
    }
}

/// `{name}.pid`.
pub fn pid_file_name(name: &str) -> String {
    format!("{name}.pid")
}

fn open_status(status_root: &Path, name: &str, create: bool) -> Result<Option<Dir>, RunDirError> {
    let Some(root) = open_root(status_root, create)? else { return Ok(None) };
    root.subdir(name, create)
}
