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
/// The file is streamed once: copied into a temp file while it is hashed, then renamed to `{sha256}.so`. So the
/// name always matches the bytes even if the file is being rebuilt meanwhile, and the caller (the master) never
/// holds a whole plugin in memory, which its forked workers would inherit.
pub fn stage(plugin: &Path, dir: &Path) -> Result<StagedPlugin, StageError> {
    let original = std::path::absolute(plugin).unwrap_or_else(|_| plugin.to_owned());
    let read_err = |source| StageError::Read { path: original.clone(), source };
    let mut source = match fs::File::open(&original) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StageError::Missing { path: original }),
        Err(e) => return Err(read_err(e)),
    };
    let mut magic = [0u8; 4];
    if source.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Err(StageError::NotElf { path: original });
    }
    let copy_err = |e: io::Error| StageError::Copy {
        path: original.clone(),
        source: rundir::RunDirError::Write { path: dir.to_owned(), source: e },
    };
    let (mut temp, temp_path) = rundir::create_temp_for(&dir.join("incoming.so")).map_err(copy_err)?;
    let mut hasher = Sha256::new();
    hasher.update(magic);
    let copied = temp.write_all(&magic).and_then(|()| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            temp.write_all(&buf[..n])?;
        }
    });
    drop(temp);
    if let Err(e) = copied {
        let _ = fs::remove_file(&temp_path);
        return Err(copy_err(e));
    }
    let sha256 = hex(&hasher.finalize());
    let staged = dir.join(format!("{sha256}.so"));
    // Renaming over an identical copy that workers have mapped is harmless: they keep the old inode.
    if let Err(e) = fs::rename(&temp_path, &staged) {
        let _ = fs::remove_file(&temp_path);
        return Err(copy_err(e));
    }
    Ok(StagedPlugin { original, staged, sha256 })
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
