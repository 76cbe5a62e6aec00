//! A trusted run directory held by descriptor, and every file operation below it: relative to the descriptor,
//! never through a symlink, only on regular files, with bounded reads.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use thiserror::Error;

/// A run directory or file could not be used.
#[derive(Debug, Error)]
pub enum RunDirError {
    #[error("cannot create directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open directory {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a directory (a symlink or a file is in the way); remove it or choose another root")]
    NotADirectory { path: PathBuf },
    #[error("refusing directory {path}: it is owned by uid {owner}, not by you (uid {me})")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("refusing directory {path}: it is writable by group or others (mode {mode:o}); run `chmod 700 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "refusing a run directory below {path}: {reason}, so its owner could swap what pmhost reads; choose a root \
         whose every parent belongs to root or to you"
    )]
    UntrustedAncestor { path: PathBuf, reason: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing {path}: it is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("refusing {path}: it has {size} bytes, more than the {limit} such a file may have")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a directory entry is, as far as a run directory cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Other,
}

/// A trusted directory, held open. `path` is where it was when opened, for messages only.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}

fn kind_of(mode: u32) -> FileKind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Directory,
        _ => FileKind::Other,
    }
}

fn kind_name(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
        SFlag::S_IFLNK => "a symlink",
        _ => "not a regular file",
    }
}

impl Dir {
    pub(super) fn from_fd(fd: OwnedFd, path: PathBuf) -> Dir {
        Dir { fd, path }
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir { fd: self.fd.try_clone()?, path: self.path.clone() })
    }

    /// Where the directory was when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `{path}/{name}`, for messages.
    pub fn display_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The descriptor (workers and inotify reach the directory through `/proc/self/fd/N`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A path that names this very directory (not whatever is at [`Dir::path`] now) while the descriptor is open.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Whether the directory has been removed (it is then still usable for reading what we hold, but nothing
    /// new can be created in it).
    pub fn is_removed(&self) -> bool {
        fstat(&self.fd).is_ok_and(|stat| stat.st_nlink == 0)
    }

    /// Opens (creating it 0700 if `create`) the subdirectory `name`, which must be a real directory owned by
    /// the caller and closed to group and others. `Ok(None)` when it does not exist and `create` is not set.
    pub fn subdir(&self, name: &str, create: bool) -> Result<Option<Dir>, RunDirError> {
        let path = self.display_path(name);
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(RunDirError::Create { path, source: io_err(e) }),
                }
                openat(&self.fd, name, flags, Mode::empty()).map_err(|e| not_a_directory(e, &path))?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(not_a_directory(e, &path)),
        };
        let stat = fstat(&fd).map_err(|e| RunDirError::Open { path: path.clone(), source: io_err(e) })?;
        let me = nix::unistd::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(RunDirError::ForeignOwner { path, owner: stat.st_uid, me });
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(RunDirError::TooOpen { path, mode });
        }
        Ok(Some(Dir { fd, path }))
    }

    /// Opens the regular file `name` for reading (`O_NONBLOCK`, so a FIFO planted there never blocks the open;
    /// it is then refused). `Ok(None)` when there is no such file.
    pub fn open_file(&self, name: &str) -> Result<Option<File>, RunDirError> {
        let path = self.display_path(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(RunDirError::NotAFile { path, kind: "a symlink" }),
            Err(e) => return Err(RunDirError::Read { path, source: io_err(e) }),
        };
        let stat = fstat(&fd).map_err(|e| RunDirError::Read { path: path.clone(), source: io_err(e) })?;
        if kind_of(stat.st_mode) != FileKind::File {
            return Err(RunDirError::NotAFile { path, kind: kind_name(stat.st_mode) });
        }
        // Reads of a regular file never block; clear the flag anyway so nothing downstream sees EAGAIN.
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        Ok(Some(File::from(fd)))
    }

    /// Reads the regular file `name`, at most `limit` bytes (a larger one is refused, not read). `Ok(None)`
    /// when there is no such file.
    pub fn read_file(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, RunDirError> {
        let Some(file) = self.open_file(name)? else { return Ok(None) };
        let path = || self.display_path(name);
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > limit {
            return Err(RunDirError::TooLarge { path: path(), size, limit });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(limit + 1).read_to_end(&mut bytes).map_err(|source| RunDirError::Read { path: path(), source })?;
        if bytes.len() as u64 > limit {
            return Err(RunDirError::TooLarge { path: path(), size: bytes.len() as u64, limit });
        }
        Ok(Some(bytes))
    }

    /// Creates a private temp file for `name` (`.name.tmp.PID`, unique per process), for callers that stream
    /// into it and then [`Dir::rename`] it into place.
    pub fn create_temp(&self, name: &str) -> io::Result<(File, String)> {
        let temp = format!(".{name}.tmp.{}", std::process::id());
        let _ = unlinkat(&self.fd, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, temp.as_str(), flags, Mode::from_bits_truncate(0o600)).map_err(io_err)?;
        Ok((File::from(fd), temp))
    }

    /// Replaces `name` with `bytes` atomically: a private temp file, then a rename. A symlink planted at `name`
    /// is replaced, never followed.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), RunDirError> {
        self.write_atomic_with(name, |file| file.write_all(bytes))
    }

    /// As [`Dir::write_atomic`], with the contents written by `write` into the temporary file (through a buffer),
    /// so a large file never needs to exist whole in memory first.
    pub fn write_atomic_with(
        &self,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), RunDirError> {
        let fail = |source| RunDirError::Write { path: self.display_path(name), source };
        let (file, temp) = self.create_temp(name).map_err(fail)?;
        let mut buffered = io::BufWriter::with_capacity(64 * 1024, file);
        let written = write(&mut buffered).and_then(|()| buffered.flush());
        drop(buffered);
        if let Err(e) = written.and_then(|()| self.rename(&temp, name)) {
            self.remove(&temp);
            return Err(fail(e));
        }
        Ok(())
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        renameat(&self.fd, from, &self.fd, to).map_err(io_err)
    }

    /// Removes the file `name` (never a directory); returns whether it was there to remove.
    pub fn remove(&self, name: &str) -> bool {
        unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir).is_ok()
    }

    /// Removes the empty subdirectory `name`; false if it is not empty or not there.
    pub fn remove_dir(&self, name: &str) -> bool {
        unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir).is_ok()
    }

    /// The names in this directory with what they are (no `.` and `..`), read through the descriptor.
    pub fn entries(&self) -> io::Result<Vec<(String, FileKind)>> {
        let dup = self.fd.try_clone()?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(io_err)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(nix::dir::Type::File) => FileKind::File,
                Some(nix::dir::Type::Directory) => FileKind::Directory,
                _ => FileKind::Other,
            };
            names.push((name, kind));
        }
        Ok(names)
    }

    /// Opens the regular file `name` for reading and writing, creating it (mode 0600) if missing; never
    /// through a symlink, and a FIFO or other special file is refused.
    pub fn open_or_create(&self, name: &str) -> Result<File, RunDirError> {
        let path = self.display_path(name);
        let flags =
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let fd = match openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(RunDirError::NotAFile { path, kind: "a symlink" }),
            Err(e) => return Err(RunDirError::Write { path, source: io_err(e) }),
        };
        let stat = fstat(&fd).map_err(|e| RunDirError::Write { path: path.clone(), source: io_err(e) })?;
        if kind_of(stat.st_mode) != FileKind::File {
            return Err(RunDirError::NotAFile { path, kind: kind_name(stat.st_mode) });
        }
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` read-only for a long-lived hold (e.g. a staged plugin a worker loads).
    pub fn open_held(&self, name: &str) -> Result<OwnedFd, RunDirError> {
        let path = self.display_path(name);
        match self.open_file(name)? {
            Some(file) => Ok(OwnedFd::from(file)),
            None => Err(RunDirError::Read { path, source: io::ErrorKind::NotFound.into() }),
        }
    }

    /// Whether `name` exists here (as anything).
    pub fn contains(&self, name: impl AsRef<OsStr>) -> bool {
        nix::sys::stat::fstatat(&self.fd, name.as_ref(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }
}

fn not_a_directory(errno: Errno, path: &Path) -> RunDirError {
    match errno {
        Errno::ENOTDIR | Errno::ELOOP => RunDirError::NotADirectory { path: path.to_owned() },
        other => RunDirError::Open { path: path.to_owned(), source: io_err(other) },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn root() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = super::super::open_root(tmp.path(), false).unwrap().unwrap();
        (tmp, dir)
    }

    #[test]
    fn subdirs_are_created_private_and_open_ones_refused() {
        let (tmp, dir) = root();
        dir.subdir("a", true).unwrap().unwrap();
        assert_eq!(std::fs::metadata(tmp.path().join("a")).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(tmp.path().join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(dir.subdir("a", true), Err(RunDirError::TooOpen { .. })));
        assert!(dir.subdir("missing", false).unwrap().is_none());
    }

    #[test]
    fn a_symlink_is_never_followed_as_a_directory_or_a_file() {
        let (tmp, dir) = root();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("status.json"), "theirs").unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("link")).unwrap();
        assert!(matches!(dir.subdir("link", true), Err(RunDirError::NotADirectory { .. })));
        std::os::unix::fs::symlink(elsewhere.join("status.json"), tmp.path().join("status.json")).unwrap();
        assert!(matches!(dir.read_file("status.json", 100), Err(RunDirError::NotAFile { .. })));
    }

    #[test]
    fn atomic_write_replaces_a_planted_symlink_without_following_it() {
        let (tmp, dir) = root();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("status.json")).unwrap();
        dir.write_atomic("status.json", b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(dir.read_file("status.json", 100).unwrap().unwrap(), b"new");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_and_a_large_file_without_reading_it() {
        let (tmp, dir) = root();
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(dir.read_file("fifo", 100), Err(RunDirError::NotAFile { kind: "a FIFO", .. })));
        assert!(matches!(dir.open_or_create("fifo"), Err(RunDirError::NotAFile { .. })));
        std::fs::write(tmp.path().join("big"), vec![b'x'; 1000]).unwrap();
        assert!(matches!(dir.read_file("big", 100), Err(RunDirError::TooLarge { size: 1000, .. })));
        assert!(dir.read_file("none", 100).unwrap().is_none());
    }

    #[test]
    fn a_held_directory_keeps_working_after_it_is_renamed() {
        let (tmp, dir) = root();
        let sub = dir.subdir("status", true).unwrap().unwrap();
        std::fs::rename(tmp.path().join("status"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", tmp.path().join("status")).unwrap();
        sub.write_atomic("status.json", b"ours").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("moved/status.json")).unwrap(), b"ours");
        let names: Vec<String> = sub.entries().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["status.json"]);
        assert!(!sub.is_removed());
        std::fs::remove_dir_all(tmp.path().join("moved")).unwrap();
        assert!(sub.is_removed());
    }
}
