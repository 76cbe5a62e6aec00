//! Writing a generated crate: into a new or empty directory only, all of it or nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{ApiSource, CrateNameError, Flavor, check_crate_name, render};

/// What `pmhost new` was asked for.
#[derive(Debug, Clone)]
pub struct NewCrate {
    /// The crate's directory: new, or empty.
    pub dir: PathBuf,
    /// The package name.
    pub name: String,
    pub flavor: Flavor,
    pub api: ApiSource,
}

/// Why no crate was created. Nothing is left behind in any of these cases.
#[derive(Debug, Error)]
pub enum ScaffoldError {
    #[error(transparent)]
    Name(#[from] CrateNameError),
    #[error("the crate's directory is an empty path: give one (`.` for the current directory, if it is empty)")]
    EmptyPath,
    #[error("{dir} is not empty: pmhost new creates a crate in a new or empty directory")]
    NotEmpty { dir: PathBuf },
    #[error("{dir} is in the way: it exists and is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("{dir} is a symbolic link to {target}, which does not exist: create that directory, or give another path")]
    DanglingLink { dir: PathBuf, target: PathBuf },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ScaffoldError {
    /// Whether the command line asked for something impossible (a bad name, an occupied directory), as opposed
    /// to the system failing.
    pub fn is_usage(&self) -> bool {
        !matches!(self, ScaffoldError::Io { .. })
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ScaffoldError {
    let path = path.to_owned();
    move |source| ScaffoldError::Io { what, path, source }
}

/// Creates the crate. On any failure, every file and directory it created is removed again.
pub fn create(new: &NewCrate) -> Result<(), ScaffoldError> {
    check_crate_name(&new.name)?;
    if new.dir.as_os_str().is_empty() {
        return Err(ScaffoldError::EmptyPath);
    }
    write_all_or_nothing(&new.dir, &render(&new.name, new.flavor, &new.api))
}

/// Writes `files` into `dir` (new or empty); on failure, removes whatever it had created.
fn write_all_or_nothing(dir: &Path, files: &[(PathBuf, String)]) -> Result<(), ScaffoldError> {
    let mut created = Created::default();
    let result = write_crate(dir, files, &mut created);
    if result.is_err() {
        created.undo();
    }
    result
}

fn write_crate(dir: &Path, files: &[(PathBuf, String)], created: &mut Created) -> Result<(), ScaffoldError> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(ScaffoldError::NotADirectory { dir: dir.to_owned() }),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir).map_err(io("read directory", dir))?;
            if entries.next().is_some() {
                return Err(ScaffoldError::NotEmpty { dir: dir.to_owned() });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A symbolic link to nothing is not a new directory: creating its target elsewhere would surprise.
            if let Ok(target) = std::fs::read_link(dir) {
                return Err(ScaffoldError::DanglingLink { dir: dir.to_owned(), target });
            }
            created.dir_all(dir)?
        }
        Err(e) => return Err(io("inspect", dir)(e)),
    }
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            created.dir_all(parent)?;
        }
        created.file(&path, text)?;
    }
    Ok(())
}

/// What `create` made so far, to remove it again on failure (newest first).
#[derive(Default)]
struct Created {
    paths: Vec<(PathBuf, bool)>,
}

impl Created {
    /// Creates `dir` and its missing ancestors, remembering each one made.
    fn dir_all(&mut self, dir: &Path) -> Result<(), ScaffoldError> {
        let missing: Vec<&Path> =
            dir.ancestors().take_while(|path| !path.as_os_str().is_empty() && !path.exists()).collect();
        for path in missing.into_iter().rev() {
            match std::fs::create_dir(path) {
                Ok(()) => self.paths.push((path.to_owned(), true)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(io("create directory", path)(e)),
            }
        }
        Ok(())
    }

    /// Writes a new file (never one that exists).
    fn file(&mut self, path: &Path, text: &str) -> Result<(), ScaffoldError> {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io("create", path))?;
        self.paths.push((path.to_owned(), false));
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io("write", path))
    }

    fn undo(self) {
        for (path, is_dir) in self.paths.into_iter().rev() {
            let _ = if is_dir { std::fs::remove_dir(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_crate(dir: PathBuf, name: &str) -> NewCrate {
        NewCrate { dir, name: name.to_owned(), flavor: Flavor::Sync, api: ApiSource::Version("0.2.0".to_owned()) }
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                out.extend(tree(&path).into_iter().map(|sub| format!("{}/{sub}", path.file_name().unwrap().display())));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn creates_a_new_directory_with_its_parents_or_fills_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/job");
        create(&new_crate(dir.clone(), "job")).unwrap();
        assert_eq!(tree(&dir), [".gitignore", "Cargo.toml", "README.md", "pmhost.toml", "src", "src/lib.rs"]);
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        create(&new_crate(empty.clone(), "job")).unwrap();
        assert_eq!(tree(&empty).len(), 6);
    }

    #[test]
    fn an_occupied_path_is_refused_and_left_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let error = create(&new_crate(tmp.path().to_owned(), "job")).unwrap_err();
        assert!(matches!(error, ScaffoldError::NotEmpty { .. }) && error.is_usage(), "{error:?}");
        assert_eq!(tree(tmp.path()), ["notes.txt"]);
        let error = create(&new_crate(tmp.path().join("notes.txt"), "job")).unwrap_err();
        assert!(matches!(error, ScaffoldError::NotADirectory { .. }), "{error:?}");
        let error = create(&new_crate(tmp.path().join("x"), "2x")).unwrap_err();
        assert!(matches!(error, ScaffoldError::Name(_)), "{error:?}");
        let error = create(&new_crate(PathBuf::new(), "job")).unwrap_err();
        assert!(matches!(error, ScaffoldError::EmptyPath) && error.is_usage(), "{error:?}");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), tmp.path().join("link")).unwrap();
        let error = create(&new_crate(tmp.path().join("link"), "job")).unwrap_err();
        assert!(matches!(error, ScaffoldError::DanglingLink { .. }) && error.is_usage(), "{error:?}");
        std::fs::remove_file(tmp.path().join("link")).unwrap();
        assert_eq!(tree(tmp.path()), ["notes.txt"]);
    }

    #[test]
    fn a_failure_half_way_removes_what_was_created() {
        let tmp = tempfile::tempdir().unwrap();
        // The second file cannot be written (its parent is the first file): by then the directories and the
        // first file exist, and all of them go again.
        let dir = tmp.path().join("new/job");
        let files =
            [(PathBuf::from("src/lib.rs"), "//! a".to_owned()), (PathBuf::from("src/lib.rs/x"), "x".to_owned())];
        let error = write_all_or_nothing(&dir, &files).unwrap_err();
        assert!(matches!(error, ScaffoldError::Io { .. }) && !error.is_usage(), "{error:?}");
        assert_eq!(tree(tmp.path()), Vec::<String>::new());
        // In a directory that was there (empty) before, the directory stays, empty.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_all_or_nothing(&empty, &files).unwrap_err();
        assert_eq!(tree(tmp.path()), ["empty"]);
    }
}
