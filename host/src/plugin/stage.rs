//! Staging: before workers load a plugin, the master copies it to `{status_root}/{name}/plugins/{sha256}.so`
//! (temp file + rename) and workers load the copy.
//!
//! Overwriting a shared library that a process has mapped kills that process with SIGBUS, and `cargo build`
//! rewrites its output in place. Workers never map the user's file, so a rebuild can never crash them; the hash
//! also says which build each worker runs.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::rundir;

/// A plugin copied into the staging directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPlugin {
    /// The path the user gave (made absolute).
    pub original: PathBuf,
    /// The content-addressed copy workers load.
    pub staged: PathBuf,
    /// Hex SHA-256 of the plugin's bytes.
    pub sha256: String,
}

impl StagedPlugin {
    /// The first 12 hex digits of the hash, as status shows it.
    pub fn short_sha(&self) -> &str {
        &self.sha256[..12]
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
    #[error("{path} is not a shared library (no ELF header); pass the .so file cargo builds for a cdylib crate")]
    NotElf { path: PathBuf },
    #[error("cannot stage a copy of plugin {path}")]
    Copy {
        path: PathBuf,
        #[source]
        source: rundir::RunDirError,
    },
}

/// Copies `plugin` into `dir` (a private run directory) under the hash of its bytes.
///
/// The file is read once: copied into a temp file while it is hashed, then renamed to `{sha256}.so` (or dropped
/// when that build is staged already). So the name always matches the bytes even if the file is being rebuilt
/// meanwhile, a start pays for one read and one hash of the plugin, and the caller never holds a whole plugin in
/// memory (the master's forked workers would inherit it).
pub fn stage(plugin: &Path, dir: &Path) -> Result<StagedPlugin, StageError> {
    let original = std::path::absolute(plugin).unwrap_or_else(|_| plugin.to_owned());
    let copy_err = |e: io::Error| StageError::Copy {
        path: original.clone(),
        source: rundir::RunDirError::Write { path: dir.to_owned(), source: e },
    };
    // Refuse a missing file before creating anything.
    if let Err(e) = fs::metadata(&original)
        && e.kind() == io::ErrorKind::NotFound
    {
        return Err(StageError::Missing { path: original });
    }
    let (temp, temp_path) = rundir::create_temp_for(&dir.join("incoming.so")).map_err(copy_err)?;
    let (sha256, len) = match digest(&original, Some(temp)) {
        Ok(digest) => digest,
        Err(e) => {
            let _ = fs::remove_file(&temp_path);
            return Err(e);
        }
    };
    let staged = dir.join(format!("{sha256}.so"));
    if fs::symlink_metadata(&staged).is_ok_and(|meta| meta.is_file() && meta.len() == len) {
        let _ = fs::remove_file(&temp_path);
        return Ok(StagedPlugin { original, staged, sha256 });
    }
    // Renaming over an identical copy that workers have mapped is harmless: they keep the old inode.
    if let Err(e) = fs::rename(&temp_path, &staged) {
        let _ = fs::remove_file(&temp_path);
        return Err(copy_err(e));
    }
    Ok(StagedPlugin { original, staged, sha256 })
}

/// Hashes the plugin at `path` (checking it is an ELF file), copying it into `copy` on the way if given.
fn digest(path: &Path, mut copy: Option<fs::File>) -> Result<(String, u64), StageError> {
    let read_err = |source| StageError::Read { path: path.to_owned(), source };
    let mut source = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StageError::Missing { path: path.to_owned() }),
        Err(e) => return Err(read_err(e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len: u64 = 0;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        if len == 0 && !buf[..n].starts_with(b"\x7fELF") {
            return Err(StageError::NotElf { path: path.to_owned() });
        }
        hasher.update(&buf[..n]);
        if let Some(file) = &mut copy {
            file.write_all(&buf[..n]).map_err(|source| StageError::Copy {
                path: path.to_owned(),
                source: rundir::RunDirError::Write { path: path.to_owned(), source },
            })?;
        }
        len += n as u64;
    }
    if len == 0 {
        return Err(StageError::NotElf { path: path.to_owned() });
    }
    Ok((hex(&hasher.finalize()), len))
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
        let plugin = tmp.path().join("libjob.so");
        fs::write(&plugin, b"\x7fELF fake library").unwrap();
        let first = stage(&plugin, tmp.path()).unwrap();
        assert!(first.staged.ends_with(format!("{}.so", first.sha256)));
        assert_eq!(fs::read(&first.staged).unwrap(), b"\x7fELF fake library");
        // Rebuilding the original does not touch the staged copy.
        fs::write(&plugin, b"\x7fELF other build").unwrap();
        let second = stage(&plugin, tmp.path()).unwrap();
        assert_ne!(first.sha256, second.sha256);
        assert_eq!(fs::read(&first.staged).unwrap(), b"\x7fELF fake library");

        fs::write(&plugin, b"#!/bin/sh").unwrap();
        assert!(matches!(stage(&plugin, tmp.path()), Err(StageError::NotElf { .. })));
        assert!(matches!(stage(&tmp.path().join("nope.so"), tmp.path()), Err(StageError::Missing { .. })));
    }
}
