//! `pmhost new`: create a plugin crate, then say what to do next.

use std::path::{Path, PathBuf};

use super::CommandError;
use crate::cli::NewArgs;
use crate::exit::cli as code;
use crate::scaffold::{self, ApiSource, CrateNameError, Flavor, NewCrate};

/// Runs `pmhost new`.
pub fn new(args: NewArgs) -> Result<i32, CommandError> {
    if args.path.as_os_str().is_empty() {
        return Err(scaffold::ScaffoldError::EmptyPath.into());
    }
    let name = match args.name {
        Some(name) => name,
        None => default_name(&args.path).ok_or(scaffold::ScaffoldError::Name(CrateNameError::Empty))?,
    };
    let flavor = if args.asynchronous { Flavor::Async } else { Flavor::Sync };
    let api = ApiSource::of_this_pmhost();
    scaffold::create(&NewCrate { dir: args.path.clone(), name: name.clone(), flavor, api: api.clone() })?;
    let kind = match flavor {
        Flavor::Sync => "job",
        Flavor::Async => "async job",
    };
    let dir = args.path.to_string_lossy();
    println!("created plugin crate {name} ({kind}, {}) in {dir}", api.describe());
    let cd = shell_word(&dir);
    println!("next: cd {cd} && cargo test && cargo build --release && pmhost start --config pmhost.toml");
    Ok(code::OK)
}

/// `text` as one word of a POSIX shell command line, quoted only when the shell would split or expand it (the
/// "next" line is meant to be pasted).
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !text.is_empty() && text.chars().all(plain) && !text.starts_with('=') {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The crate name a directory suggests: its last component (of the absolute path for `.` and `..`).
fn default_name(path: &Path) -> Option<String> {
    let absolute: PathBuf = std::path::absolute(path).ok()?;
    let mut normal = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            // Lexically, as the user reads the path they typed (the directory's own name, not a link's target).
            std::path::Component::ParentDir => {
                normal.pop();
            }
            part => normal.push(part),
        }
    }
    normal.file_name().map(|name| name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_directorys() {
        assert_eq!(default_name(Path::new("/srv/jobs/mailer")).as_deref(), Some("mailer"));
        assert_eq!(default_name(Path::new("/srv/jobs/mailer/")).as_deref(), Some("mailer"));
        assert_eq!(default_name(Path::new("/srv/jobs/mailer/.")).as_deref(), Some("mailer"));
        assert_eq!(default_name(Path::new("/srv/jobs/mailer/..")).as_deref(), Some("jobs"));
        assert_eq!(default_name(Path::new("/srv/jobs/../mailer")).as_deref(), Some("mailer"));
        let here = std::env::current_dir().unwrap();
        assert_eq!(default_name(Path::new(".")), here.file_name().map(|name| name.to_string_lossy().into_owned()));
        assert_eq!(default_name(Path::new("/")), None);
    }

    #[test]
    fn the_next_step_quotes_only_what_the_shell_would_split() {
        let cases = [
            ("mailer", "mailer"),
            ("/srv/jobs/mail-queue_2", "/srv/jobs/mail-queue_2"),
            ("~/mailer", "'~/mailer'"),
            ("my jobs/mailer", "'my jobs/mailer'"),
            ("it's", r"'it'\''s'"),
            ("$HOME/job", "'$HOME/job'"),
            ("", "''"),
        ];
        for (text, expected) in cases {
            assert_eq!(shell_word(text), expected, "{text:?}");
        }
    }
}
