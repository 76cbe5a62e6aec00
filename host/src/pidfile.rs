//! The pid file `{pid_root}/{name}.pid`: held under an exclusive `flock` for the master's whole life, so the
//! lock, not the number in the file, says whether a master runs.
//!
//! A forked worker closes its copy of the descriptor and never unlocks: `flock` locks belong to the open file
//! description, which the master shares with its children, so an unlock in a child would free the master's lock.

use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::unistd::Pid;
use thiserror::Error;

use crate::rundir::{Dir, PID_FILE_LIMIT, RunDirError, pid_file_name};

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
    #[error("cannot use the pid file")]
    File(#[from] RunDirError),
}

/// The master's locked pid file.
#[derive(Debug)]
pub struct PidFile {
    file: File,
    root: Dir,
    name: String,
}

/// Refuses a pid file that is not the caller's: another user could then take or fake the lock.
fn check_owner(file: &File, path: &std::path::Path) -> Result<std::fs::Metadata, PidFileError> {
    let meta = file.metadata().map_err(|source| PidFileError::Io { path: path.to_owned(), source })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(PidFileError::Untrusted {
            path: path.to_owned(),
            reason: format!("it belongs to uid {}, not to you (uid {me}); remove it", meta.uid()),
        });
    }
    Ok(meta)
}

impl PidFile {
    /// Takes the pid file for the master `name` in the pid root `root`: refused if another master holds it; a
    /// stale file is reused.
    pub fn acquire(root: &Dir, name: &str) -> Result<PidFile, PidFileError> {
        let file_name = pid_file_name(name);
        let path = root.display_path(&file_name);
        let io_err = |source| PidFileError::Io { path: path.clone(), source };
        let mut file = root.open_or_create(&file_name)?;
        check_owner(&file, &path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = (&file).take(PID_FILE_LIMIT).read_to_string(&mut pid);
                let pid = if pid.trim().is_empty() { "not yet written".to_owned() } else { pid.trim().to_owned() };
                return Err(PidFileError::AlreadyRunning { name: name.to_owned(), pid, path });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        let root = root.try_clone().map_err(io_err)?;
        Ok(PidFile { file, root, name: file_name })
    }

    /// Rewrites the file with this process's pid (a daemonized master inherits the lock from the CLI).
    pub fn record_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{}", std::process::id())
    }

    /// The locked file, to hand over to a new image of the master (the lock belongs to the open file, so it
    /// survives `execve` with the descriptor).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// The pid file handed over by a previous image of this master, still locked.
    pub fn handed_over(root: &Dir, name: &str, fd: std::os::fd::OwnedFd) -> io::Result<PidFile> {
        Ok(PidFile { file: File::from(fd), root: root.try_clone()?, name: pid_file_name(name) })
    }

    /// Where the file is, for messages.
    pub fn path(&self) -> PathBuf {
        self.root.display_path(&self.name)
    }

    /// Removes the file, then releases the lock (in that order, so a new master never sees its file vanish).
    pub fn remove(self) {
        self.root.remove(&self.name);
        drop(self.file);
    }
}

/// The pid of the master `name` holding its pid file in `root`, or `None` when no master holds it (no file, or a
/// stale one).
///
/// A pid is only returned when it can be trusted with a signal: the pid root is trusted (checked when it was
/// opened), the file is a regular file belonging to the caller, and the process it names has this very file open
/// (a master keeps it open for its whole life). A lock held by someone else on a file naming an arbitrary pid is
/// refused, never signalled.
pub fn running_master(root: &Dir, name: &str) -> Result<Option<Pid>, PidFileError> {
    let file_name = pid_file_name(name);
    let path = root.display_path(&file_name);
    let untrusted = |reason: String| PidFileError::Untrusted { path: path.clone(), reason };
    let Some(mut file) = root.open_file(&file_name)? else { return Ok(None) };
    let meta = check_owner(&file, &path)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            (&mut file)
                .take(PID_FILE_LIMIT)
                .read_to_string(&mut text)
                .map_err(|source| PidFileError::Io { path: path.clone(), source })?;
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
        Err(TryLockError::Error(e)) => Err(PidFileError::Io { path, source: e }),
    }
}

/// Whether process `pid` has the file described by `meta` open (same device and inode).
///
/// The master opens its pid file among its first descriptors, so the low ones are looked at first: listing
/// `/proc/PID/fd` of a master of 1024 workers (two output pipes each) would cost every command a few
/// milliseconds. The whole list is the fallback (a master re-executed by an upgrade may hold it higher).
fn has_open(pid: Pid, meta: &std::fs::Metadata) -> bool {
    let same =
        |path: &std::path::Path| std::fs::metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
    if (0..LOW_FDS).any(|fd| same(std::path::Path::new(&format!("/proc/{pid}/fd/{fd}")))) {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| same(&fd.path()))
}

/// Descriptors looked at one by one before the whole list (see [`has_open`]).
const LOW_FDS: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_and_stale_file_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let root = crate::rundir::open_root(tmp.path(), false).unwrap().unwrap();
        let path = tmp.path().join("x.pid");
        std::fs::write(&path, "1\n").unwrap(); // stale: nobody holds the lock
        assert_eq!(running_master(&root, "x").unwrap(), None);
        let held = PidFile::acquire(&root, "x").unwrap();
        assert!(matches!(PidFile::acquire(&root, "x"), Err(PidFileError::AlreadyRunning { .. })));
        assert_eq!(running_master(&root, "x").unwrap(), Some(Pid::this()));
        // A locked file naming a process that does not hold it is refused.
        std::fs::write(&path, "1234567\n").unwrap();
        assert!(matches!(running_master(&root, "x"), Err(PidFileError::Untrusted { .. })));
        held.remove();
        assert!(!path.exists());
    }
}
