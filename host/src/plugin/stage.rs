//! Staging: before workers load a plugin, the master copies it to `{status_root}/{name}/plugins/{sha256}.so`
//! (temp file + rename) and workers load the copy.
//!
//! Overwriting a shared library that a process has mapped kills that process with SIGBUS, and `cargo build`
//! rewrites its output in place. Workers never map the user's file, so a rebuild can never crash them; the hash
//! also says which build each worker runs.

use std::fs;
use std::io;
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

/// Copies `plugin` into `dir` (a private run directory) under its hash, unless that copy is already there.
pub fn stage(plugin: &Path, dir: &Path) -> Result<StagedPlugin, StageError> {
    let original = std::path::absolute(plugin).unwrap_or_else(|_| plugin.to_owned());
    let bytes = match fs::read(&original) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StageError::Missing { path: original }),
        Err(source) => return Err(StageError::Read { path: original, source }),
    };
    if !bytes.starts_with(b"\x7fELF") {
        return Err(StageError::NotElf { path: original });
    }
    let sha256 = hex(&Sha256::digest(&bytes));
    let staged = dir.join(format!("{sha256}.so"));
    let already = fs::symlink_metadata(&staged).is_ok_and(|meta| meta.is_file() && meta.len() == bytes.len() as u64);
    if !already {
        rundir::write_atomic(&staged, &bytes).map_err(|source| StageError::Copy { path: original.clone(), source })?;
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
