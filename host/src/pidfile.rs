//! The pid file `{pid_root}/{name}.pid`: held under an exclusive `flock` for the master's whole life, so the
//! lock, not the number in the file, says whether a master runs.
//!
//! A forked worker closes its copy of the descriptor and never unlocks: `flock` locks belong to the open file
//! description, which the master shares with its children, so an unlock in a child would free the master's lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use thiserror::Error;

/// The pid file could not be taken or read.
#[derive(Debug, Error)]
pub enum PidFileError {
    #[error("a master named {name} is already running (pid {pid}, pid file {path})")]
    AlreadyRunning { name: String, pid: String, path: PathBuf },
    #[error("refusing pid file {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },
    #[error("cannot use pid file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The master's locked pid file.
#[derive(Debug)]
pub struct PidFile {
    file: File,
    path: PathBuf,
}

fn open(path: &Path, write: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if write {
        options.write(true).create(true).mode(0o600);
    }
    options.open(path)
}

impl PidFile {
    /// Takes the pid file for the master `name`: refused if another master holds it; a stale file is reused.
    pub fn acquire(path: &Path, name: &str) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io { path: path.to_owned(), source };
        let mut file = open(path, true).map_err(io_err)?;
        // A stale file of another user would be reused (root can write it), and then every command that checks
        // the file's owner before signalling would refuse this master: refuse it now instead.
        let owner = std::os::unix::fs::MetadataExt::uid(&file.metadata().map_err(io_err)?);
        let me = nix::unistd::geteuid().as_raw();
        if owner != me {
            return Err(PidFileError::Untrusted {
                path: path.to_owned(),
                reason: format!("it belongs to uid {owner}, not to you (uid {me}); remove it if no master uses it"),
            });
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = if pid.trim().is_empty() { "not yet written".to_owned() } else { pid.trim().to_owned() };
                return Err(PidFileError::AlreadyRunning { name: name.to_owned(), pid, path: path.to_owned() });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(PidFile { file, path: path.to_owned() })
    }

    /// Rewrites the file with this process's pid (a daemonized master inherits the lock from the CLI).
    pub fn record_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{}", std::process::id())
    }

    /// The descriptor a forked child must close (and only close).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Removes the file, then releases the lock (in that order, so a new master never sees its file vanish).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// The pid of the master holding `path`, or `None` when no master holds it (no file, or a stale one).
///
/// A pid is only returned when it can be trusted with a signal: the directory is private to the caller
/// ([`rundir::check_private_dir`](crate::rundir::check_private_dir)), the file belongs to the caller, and the
/// process it names has this very file open (a master keeps it open for its whole life). A lock held by someone
/// else on a file naming an arbitrary pid is refused, never signalled.
pub fn running_master(path: &Path) -> Result<Option<Pid>, PidFileError> {
    let io_err = |source| PidFileError::Io { path: path.to_owned(), source };
    let untrusted = |reason: String| PidFileError::Untrusted { path: path.to_owned(), reason };
    if let Some(dir) = path.parent()
        && dir.exists()
    {
        crate::rundir::check_private_dir(dir).map_err(|e| untrusted(e.to_string()))?;
    }
    let mut file = match open(path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let meta = file.metadata().map_err(io_err)?;
    let me = nix::unistd::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        return Err(untrusted(format!(
            "it belongs to uid {}, not to you (uid {me})",
            std::os::unix::fs::MetadataExt::uid(&meta)
        )));
    }
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(io_err)?;
            // PID 1 is valid: a master that is a container's entrypoint. `has_open` below keeps a pid that means
            // another process in this pid namespace (the host's init) from ever being signalled.
            let Some(pid) = text.trim().parse::<i32>().ok().filter(|pid| *pid >= 1).map(Pid::from_raw) else {
                return Err(untrusted(format!("it is locked but names no valid pid ({:?})", text.trim())));
            };
            if !has_open(pid, &meta) {
                return Err(untrusted(format!("it names pid {pid}, which does not hold it")));
            }
            Ok(Some(pid))
        }
        Err(TryLockError::Error(e)) => Err(io_err(e)),
    }
}

/// Whether process `pid` has the file described by `meta` open (same device and inode).
fn has_open(pid: Pid, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_and_stale_file_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let path = tmp.path().join("x.pid");
        std::fs::write(&path, "1\n").unwrap(); // stale: nobody holds the lock
        assert_eq!(running_master(&path).unwrap(), None);
        let held = PidFile::acquire(&path, "x").unwrap();
        assert!(matches!(PidFile::acquire(&path, "x"), Err(PidFileError::AlreadyRunning { .. })));
        assert_eq!(running_master(&path).unwrap(), Some(Pid::this()));
        // A locked file naming a process that does not hold it is refused.
        std::fs::write(&path, "1234567\n").unwrap();
        assert!(matches!(running_master(&path), Err(PidFileError::Untrusted { .. })));
        held.remove();
        assert!(!path.exists());
    }
}
