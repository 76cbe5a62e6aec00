//! Run directories (pid, status, staged plugins) and the files in them: created private, checked for
//! ownership, written atomically, never opened through a symlink.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    #[error("{path} is not a directory (a symlink or a file is in the way); remove it or choose another root")]
    NotADirectory { path: PathBuf },
    #[error("refusing directory {path}: it is owned by uid {owner}, not by you (uid {me})")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("refusing directory {path}: it is writable by group or others (mode {mode:o}); run `chmod 700 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates `path` (and missing parents) with mode 0700, or checks an existing one: it must be a real directory
/// owned by the caller and not writable by group or others.
pub fn ensure_private_dir(path: &Path) -> Result<(), RunDirError> {
    if let Err(source) = DirBuilder::new().recursive(true).mode(0o700).create(path) {
        return Err(RunDirError::Create { path: path.to_owned(), source });
    }
    check_private_dir(path)
}

/// Checks that `path` is a directory owned by the caller and closed to group and others.
pub fn check_private_dir(path: &Path) -> Result<(), RunDirError> {
    let meta = fs::symlink_metadata(path).map_err(|source| RunDirError::Create { path: path.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(RunDirError::NotADirectory { path: path.to_owned() });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(RunDirError::ForeignOwner { path: path.to_owned(), owner: meta.uid(), me });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(RunDirError::TooOpen { path: path.to_owned(), mode });
    }
    Ok(())
}

/// Opens a file for reading without following a symlink at its last component.
pub fn open_read_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

/// Replaces `path` with `bytes` atomically: a private temp file beside it, then a rename. A symlink planted at
/// `path` is replaced, never followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    let fail = |source| RunDirError::Write { path: path.to_owned(), source };
    let (mut file, tmp) = create_temp_for(path).map_err(fail)?;
    let written = file.write_all(bytes);
    drop(file);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

/// Creates the private temp file that [`write_atomic`] would use for `path`, for callers that stream into it and
/// rename it themselves.
pub fn create_temp_for(path: &Path) -> io::Result<(File, PathBuf)> {
    let tmp = temp_path_for(path);
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    Ok((file, tmp))
}

/// `dir/.name.tmp.PID`: unique per process, so two writers never share a temp file.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_dirs_and_refuses_open_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(ensure_private_dir(&dir), Err(RunDirError::TooOpen { .. })));
    }

    #[test]
    fn refuses_a_symlink_as_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(ensure_private_dir(&link), Err(RunDirError::NotADirectory { .. })));
    }

    #[test]
    fn atomic_write_replaces_a_planted_symlink_without_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let target = tmp.path().join("status.json");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
    }
}
