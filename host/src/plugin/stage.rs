//! Staging: before workers load a plugin, the master copies it to `{status_root}/{name}/plugins/{sha256}.so`
//! (temp file + rename) and workers load the copy.
//!
//! Overwriting a shared library that a process has mapped kills that process with SIGBUS, and `cargo build`
//! rewrites its output in place. Workers never map the user's file, so a rebuild can never crash them; the hash
//! also says which build each worker runs.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use thiserror::Error;

use std::os::unix::fs::OpenOptionsExt;

use crate::rundir::Dir;

/// A plugin copied into the staging directory, and held open.
///
/// Workers load the build through `held` (as `/proc/self/fd/N`), the descriptor of the very file the master
/// wrote while hashing the user's plugin, never through the staged path: a swapped directory or a file planted at
/// that path after staging can never be loaded. The staged file on disk is for people (which builds are live) and
/// for a re-stage after the status directory was removed.
#[derive(Debug, Clone)]
pub struct StagedPlugin {
    /// The path the user gave (made absolute).
    pub original: PathBuf,
    /// Where the content-addressed copy was staged (for people; workers do not open it).
    pub staged: PathBuf,
    /// Hex SHA-256 of the plugin's bytes.
    pub sha256: String,
    /// The staged copy, open read-only.
    held: Arc<OwnedFd>,
}

impl PartialEq for StagedPlugin {
    fn eq(&self, other: &Self) -> bool {
        self.original == other.original && self.sha256 == other.sha256
    }
}

impl Eq for StagedPlugin {}

impl StagedPlugin {
    /// The first 12 hex digits of the hash, as status shows it.
    pub fn short_sha(&self) -> &str {
        &self.sha256[..12]
    }

    /// `{sha256}.so`, the staged copy's name in the plugins directory.
    pub fn file_name(&self) -> String {
        format!("{}.so", self.sha256)
    }

    /// The path a worker loads: the held descriptor, valid in the master and in every worker it forks.
    pub fn load_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.held.as_raw_fd()))
    }

    /// A build handed over by a previous image of this master (`pmhost upgrade`): `held` is the descriptor it
    /// kept open across `execve`.
    pub fn handed_over(original: PathBuf, staged: PathBuf, sha256: String, held: Arc<OwnedFd>) -> StagedPlugin {
        StagedPlugin { original, staged, sha256, held }
    }

    /// The held descriptor's number (a worker keeps it open; the master closes nothing of it).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.held.as_raw_fd()
    }

    /// Writes the held build into `dir` again (after the status directory was removed and re-created).
    pub fn restage(&self, dir: &Dir) -> io::Result<()> {
        let name = self.file_name();
        if dir.contains(&name) {
            return Ok(());
        }
        let (mut temp, temp_name) = dir.create_temp(&name)?;
        let source = fs::File::from(self.held.try_clone()?);
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        let copied = loop {
            match source.read_at(&mut buf, offset) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = temp.write_all(&buf[..n]) {
                        break Err(e);
                    }
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        drop(temp);
        if let Err(e) = copied.and_then(|()| dir.rename(&temp_name, &name)) {
            dir.remove(&temp_name);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
impl StagedPlugin {
    /// A build that is no plugin (it holds `/dev/null`), for unit tests of the master's decisions.
    pub(crate) fn for_tests() -> StagedPlugin {
        let held = OwnedFd::from(fs::File::open("/dev/null").expect("/dev/null opens"));
        StagedPlugin {
            original: PathBuf::from("/nonexistent/libjob.so"),
            staged: PathBuf::from("/nonexistent/plugins/0.so"),
            sha256: "0".repeat(64),
            held: Arc::new(held),
        }
    }
}

/// The plugin file cannot be used.
#[derive(Debug, Error)]
pub enum StageError {
    #[error("plugin file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read plugin file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("plugin {path} is not a regular file (a FIFO, device or directory); pass the .so file itself")]
    NotAFile { path: PathBuf },
    #[error("{path} is not a shared library (no ELF header); pass the .so file cargo builds for a cdylib crate")]
    NotElf { path: PathBuf },
    #[error("cannot stage a copy of plugin {plugin} in {dir}")]
    Copy {
        plugin: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies `plugin` into `dir` (the host's private plugins directory) under the hash of its bytes, and holds the
/// copy open.
///
/// The file is read once: copied into a temp file while it is hashed, then renamed to `{sha256}.so` (replacing an
/// identical copy, which workers that mapped it keep). So the name always matches the bytes even if the file is
/// being rebuilt meanwhile, a start pays for one read and one hash of the plugin, and the caller never holds a
/// whole plugin in memory (the master's forked workers would inherit it).
pub fn stage(plugin: &Path, dir: &Dir) -> Result<StagedPlugin, StageError> {
    let original = std::path::absolute(plugin).unwrap_or_else(|_| plugin.to_owned());
    let copy_err =
        |source: io::Error| StageError::Copy { plugin: original.clone(), dir: dir.path().to_owned(), source };
    // Refuse a missing file before creating anything.
    if let Err(e) = fs::metadata(&original)
        && e.kind() == io::ErrorKind::NotFound
    {
        return Err(StageError::Missing { path: original });
    }
    let (temp, temp_name) = dir.create_temp("incoming.so").map_err(copy_err)?;
    let hashed = temp.try_clone().map_err(copy_err).and_then(|held| Ok((held, digest(&original, temp, dir)?)));
    let (held, sha256) = match hashed {
        Ok(hashed) => hashed,
        Err(e) => {
            dir.remove(&temp_name);
            return Err(e);
        }
    };
    // Readable by everyone, writable by nobody: a task that runs as another user (`user = "..."`) loads it
    // through the held descriptor (`/proc/self/fd/N` checks the file's mode, not the private directory's).
    if let Err(e) = held.set_permissions(fs::Permissions::from_mode(0o444)) {
        dir.remove(&temp_name);
        return Err(copy_err(e));
    }
    let staged_name = format!("{sha256}.so");
    // Renaming over an identical copy that workers have mapped is harmless: they keep the old inode.
    if let Err(e) = dir.rename(&temp_name, &staged_name) {
        dir.remove(&temp_name);
        return Err(copy_err(e));
    }
    // Workers only read it; a read-only descriptor cannot be used to change the build either.
    let held = reopen_read_only(held).map_err(copy_err)?;
    Ok(StagedPlugin { original, staged: dir.display_path(&staged_name), sha256, held: Arc::new(held) })
}

/// Removes staged copies (`*.so`) in `dir` other than those of `keep`. A worker still running a removed build
/// keeps its mapping (and loads through a held descriptor anyway): unlinking is harmless.
pub fn prune<'a>(dir: &Dir, keep: impl Iterator<Item = &'a StagedPlugin>) {
    let keep: Vec<String> = keep.map(StagedPlugin::file_name).collect();
    for (name, _) in dir.entries().unwrap_or_default() {
        if name.ends_with(".so") && !keep.contains(&name) {
            dir.remove(&name);
        }
    }
}

/// A read-only descriptor of the same file (through `/proc/self/fd`, which reopens the inode, not the path).
fn reopen_read_only(file: fs::File) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let reopened = fs::OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(path)?;
    Ok(OwnedFd::from(reopened))
}

/// Hashes the plugin at `path` (checking it is an ELF file), copying it into `copy` (a file in `dir`) on the way.
fn digest(path: &Path, mut copy: fs::File, dir: &Dir) -> Result<String, StageError> {
    let read_err = |source| StageError::Read { path: path.to_owned(), source };
    let mut source = match open_regular(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Err(StageError::NotAFile { path: path.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StageError::Missing { path: path.to_owned() }),
        Err(e) => return Err(read_err(e)),
    };
    let mut hasher = Sha256::new();
    let len = each_chunk(&mut source, read_err, |chunk, at| {
        if at == 0 && !chunk.starts_with(b"\x7fELF") {
            return Err(StageError::NotElf { path: path.to_owned() });
        }
        hasher.update(chunk);
        copy.write_all(chunk).map_err(|source| StageError::Copy {
            plugin: path.to_owned(),
            dir: dir.path().to_owned(),
            source,
        })
    })?;
    if len == 0 {
        return Err(StageError::NotElf { path: path.to_owned() });
    }
    Ok(hex(&hasher.finalize()))
}

/// Opens `path` for reading; `None` when it is not a regular file. O_NONBLOCK: a FIFO at the plugin's path must
/// not hang the caller (the master, for `--watch`); it is refused.
fn open_regular(path: &Path) -> io::Result<Option<fs::File>> {
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
    Ok(file.metadata()?.is_file().then_some(file))
}

/// Reads `file` to its end in 64 KiB chunks, handing each to `take` with its offset; returns the length read.
fn each_chunk<E>(
    file: &mut fs::File,
    read_err: impl Fn(io::Error) -> E,
    mut take: impl FnMut(&[u8], u64) -> Result<(), E>,
) -> Result<u64, E> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut len: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(len),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        take(&buf[..n], len)?;
        len += n as u64;
    }
}

/// The hex SHA-256 of the file at `path`, as [`stage`] would name its copy (`--watch` compares it with the
/// running build before rolling anything out). Read in fixed chunks; a FIFO or directory is refused, not waited on.
pub fn content_hash(path: &Path) -> io::Result<String> {
    let mut source =
        open_regular(path)?.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"))?;
    let mut hasher = Sha256::new();
    each_chunk(
        &mut source,
        |e| e,
        |chunk, _| {
            hasher.update(chunk);
            Ok(())
        },
    )?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_by_content_and_refuses_non_elf() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let dir = crate::rundir::open_root(tmp.path(), false).unwrap().unwrap();
        let plugin = tmp.path().join("libjob.so");
        fs::write(&plugin, b"\x7fELF fake library").unwrap();
        let first = stage(&plugin, &dir).unwrap();
        assert!(first.staged.ends_with(format!("{}.so", first.sha256)));
        assert_eq!(fs::read(&first.staged).unwrap(), b"\x7fELF fake library");
        // Rebuilding the original does not touch the staged copy.
        fs::write(&plugin, b"\x7fELF other build").unwrap();
        let second = stage(&plugin, &dir).unwrap();
        assert_ne!(first.sha256, second.sha256);
        assert_eq!(content_hash(&plugin).unwrap(), second.sha256);
        assert_eq!(fs::read(&first.staged).unwrap(), b"\x7fELF fake library");
        // What workers load is the held copy, even when the staged path is swapped afterwards.
        fs::remove_file(&first.staged).unwrap();
        fs::write(&first.staged, b"\x7fELF planted").unwrap();
        assert_eq!(fs::read(first.load_path()).unwrap(), b"\x7fELF fake library");
        fs::remove_file(&first.staged).unwrap();
        first.restage(&dir).unwrap();
        assert_eq!(fs::read(&first.staged).unwrap(), b"\x7fELF fake library");

        fs::write(&plugin, b"#!/bin/sh").unwrap();
        assert!(matches!(stage(&plugin, &dir), Err(StageError::NotElf { .. })));
        assert!(matches!(stage(&tmp.path().join("nope.so"), &dir), Err(StageError::Missing { .. })));
        let fifo = tmp.path().join("fifo.so");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(stage(&fifo, &dir), Err(StageError::NotAFile { .. })));
    }
}
