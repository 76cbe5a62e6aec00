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
pub fn running_master(path: &Path) -> Result<Option<Pid>, PidFileError> {
    let io_err = |source| PidFileError::Io { path: path.to_owned(), source };
    let mut file = match open(path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(io_err)?;
            Ok(text.trim().parse::<i32>().ok().filter(|pid| *pid > 1).map(Pid::from_raw))
        }
        Err(TryLockError::Error(e)) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_and_stale_file_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.pid");
        std::fs::write(&path, "1\n").unwrap(); // stale: nobody holds the lock
        assert_eq!(running_master(&path).unwrap(), None);
        let held = PidFile::acquire(&path, "x").unwrap();
        assert!(matches!(PidFile::acquire(&path, "x"), Err(PidFileError::AlreadyRunning { .. })));
        assert_eq!(running_master(&path).unwrap(), Some(Pid::this()));
        held.remove();
        assert!(!path.exists());
    }
}
