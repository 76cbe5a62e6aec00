//! Whether a run root can be trusted, checked the way OpenSSH's StrictModes checks a path, and the default roots.
//!
//! Every directory from `/` down to the root must be owned by root or by the caller; one that group or others
//! may write is accepted only when it is sticky (others cannot rename or remove what they do not own, so `/tmp`
//! is a fine ancestor) and never as the root itself, which must belong to the caller and be closed to group and
//! others. Only the root's own parent checks matter for an attack: whoever owns a directory above a root can
//! rename the root away and put a symlink in its place, and then the master would read and load their files.
//!
//! Symlinks in the existing part of the path are resolved first (as OpenSSH does with `realpath`, so that
//! `/var/run` → `/run` works); the resolved path is then walked with `O_NOFOLLOW` from a descriptor of `/`, so a
//! component swapped for a symlink during the walk fails the check instead of redirecting it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

use super::dir::{Dir, RunDirError};

/// Opens the run root `path` after checking every directory on its way; creates missing directories (mode
/// 0700) when `create` is set. `Ok(None)` when it does not exist and `create` is not set.
pub fn open_root(path: &Path, create: bool) -> Result<Option<Dir>, RunDirError> {
    let absolute = std::path::absolute(path).map_err(|source| RunDirError::Open { path: path.to_owned(), source })?;
    let (existing, rest) = split_existing(&absolute)?;
    let canonical = existing.canonicalize().map_err(|source| RunDirError::Open { path: existing.clone(), source })?;
    let mut components: Vec<&OsStr> = normal_components(&canonical);
    components.extend(rest.iter().map(|c| c.as_os_str()));
    let me = nix::unistd::geteuid().as_raw();
    let mut fd = open_dir_at(None, OsStr::new("/"), true)
        .map_err(|source| RunDirError::Open { path: PathBuf::from("/"), source: source.into() })?;
    check_component(&fd, Path::new("/"), me, components.is_empty())?;
    let mut walked = PathBuf::from("/");
    for (i, name) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        walked.push(name);
        let next = match open_dir_at(Some(&fd), name, !last) {
            Ok(next) => next,
            Err(Errno::ENOENT) if create => {
                match mkdirat(&fd, *name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(RunDirError::Create { path: walked, source: e.into() }),
                }
                open_dir_at(Some(&fd), name, !last).map_err(|e| not_a_directory(e, &walked))?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(not_a_directory(e, &walked)),
        };
        check_component(&next, &walked, me, last)?;
        fd = next;
    }
    Ok(Some(Dir::from_fd(fd, absolute)))
}

fn not_a_directory(errno: Errno, path: &Path) -> RunDirError {
    match errno {
        Errno::ENOTDIR | Errno::ELOOP => RunDirError::NotADirectory { path: path.to_owned() },
        other => RunDirError::Open { path: path.to_owned(), source: other.into() },
    }
}

/// The longest prefix of `path`'s parent that exists (its symlinks may be resolved), and the components after
/// it, which are walked without following symlinks. The root itself is always among the latter: a root that is
/// a symlink is refused, never resolved.
fn split_existing(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), RunDirError> {
    let mut existing = path.to_owned();
    let mut rest = Vec::new();
    while let Some(name) = existing.file_name().map(PathBuf::from) {
        rest.push(name);
        existing.pop();
        if std::fs::symlink_metadata(&existing).is_ok() {
            break;
        }
    }
    rest.reverse();
    if rest.iter().any(|c| c.components().any(|c| !matches!(c, Component::Normal(_)))) {
        return Err(RunDirError::NotADirectory { path: path.to_owned() });
    }
    Ok((existing, rest))
}

fn normal_components(path: &Path) -> Vec<&OsStr> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Opens a directory without following a symlink: as a path-only descriptor for the way down, readable for
/// the root itself.
fn open_dir_at(dir: Option<&OwnedFd>, name: &OsStr, path_only: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    flags |= if path_only { OFlag::O_PATH } else { OFlag::O_RDONLY };
    match dir {
        Some(dir) => openat(dir.as_fd(), name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

/// The StrictModes rule for one directory on the way to a root (`last`: the root itself).
fn check_component(fd: &OwnedFd, path: &Path, me: u32, last: bool) -> Result<(), RunDirError> {
    let stat = fstat(fd).map_err(|e| RunDirError::Open { path: path.to_owned(), source: e.into() })?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR {
        return Err(RunDirError::NotADirectory { path: path.to_owned() });
    }
    let mode = stat.st_mode & 0o7777;
    if last {
        if stat.st_uid != me {
            return Err(RunDirError::ForeignOwner { path: path.to_owned(), owner: stat.st_uid, me });
        }
        if mode & 0o022 != 0 {
            return Err(RunDirError::TooOpen { path: path.to_owned(), mode });
        }
        return Ok(());
    }
    if stat.st_uid != 0 && stat.st_uid != me {
        return Err(RunDirError::UntrustedAncestor {
            path: path.to_owned(),
            reason: format!("it is owned by uid {}, not by root or you (uid {me})", stat.st_uid),
        });
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(RunDirError::UntrustedAncestor {
            path: path.to_owned(),
            reason: format!("group or others may write it (mode {mode:o}) and it is not sticky"),
        });
    }
    Ok(())
}

/// Where pid files, status directories and logs go when nothing says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoots {
    pub pid: PathBuf,
    pub status: PathBuf,
    pub log: PathBuf,
}

/// `/run/pmhost/{pid,status,log}` for root; `$XDG_RUNTIME_DIR/pmhost/...` for others, or, without a runtime
/// directory, `~/.local/state/pmhost/...` (a directory only its user can write, unlike anything in `/tmp`).
pub fn default_roots() -> DefaultRoots {
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/pmhost")
    } else {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        match (env("XDG_RUNTIME_DIR"), env("XDG_STATE_HOME"), env("HOME")) {
            (Some(runtime), _, _) => runtime.join("pmhost"),
            (None, Some(state), _) => state.join("pmhost"),
            (None, None, Some(home)) => home.join(".local/state/pmhost"),
            (None, None, None) => PathBuf::from(format!("/run/user/{}/pmhost", nix::unistd::geteuid())),
        }
    };
    DefaultRoots { pid: base.join("pid"), status: base.join("status"), log: base.join("log") }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, chown};

    use super::*;

    fn private_tempdir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        tmp
    }

    #[test]
    fn creates_missing_directories_private() {
        let tmp = private_tempdir();
        let root = tmp.path().join("a/b/c");
        assert!(open_root(&root, false).unwrap().is_none());
        open_root(&root, true).unwrap().unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(std::fs::metadata(tmp.path().join(dir)).unwrap().permissions().mode() & 0o777, 0o700);
        }
    }

    #[test]
    fn refuses_an_ancestor_that_group_or_others_may_write() {
        let tmp = private_tempdir();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = open_root(&open.join("pm/pid"), true).unwrap_err();
        assert!(matches!(&err, RunDirError::UntrustedAncestor { path, .. } if path.ends_with("open")), "{err}");
        // Sticky (like /tmp): nobody else can rename what is in it.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        open_root(&open.join("pm/pid"), true).unwrap().unwrap();
        // But a sticky, open directory is never a root itself.
        assert!(matches!(open_root(&open, false), Err(RunDirError::TooOpen { .. })));
    }

    #[test]
    fn refuses_an_ancestor_owned_by_another_user() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a directory away; the end-to-end test covers this as root too
        }
        let tmp = private_tempdir();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = open_root(&theirs.join("pm/status"), true).unwrap_err();
        assert!(matches!(&err, RunDirError::UntrustedAncestor { path, .. } if path.ends_with("theirs")), "{err}");
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }

    #[test]
    fn resolves_symlinks_in_the_existing_part_but_refuses_one_as_the_root() {
        let tmp = private_tempdir();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // A symlinked ancestor (as /var/run → /run) resolves; the root below it is created in the real directory.
        open_root(&link.join("pid"), true).unwrap().unwrap();
        assert!(real.join("pid").is_dir());
        // The root itself is never a symlink.
        assert!(matches!(open_root(&link, false), Err(RunDirError::NotADirectory { .. })));
    }

    #[test]
    fn default_roots_are_not_in_tmp() {
        let roots = default_roots();
        assert!(!roots.pid.starts_with("/tmp"), "{roots:?}");
        assert!(roots.pid.ends_with("pmhost/pid") && roots.status.ends_with("pmhost/status"), "{roots:?}");
    }
}
