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
    let dir = args.path.display();
    println!("created plugin crate {name} ({kind}, {}) in {dir}", api.describe());
    println!("next: cd {dir} && cargo test && cargo build --release && pmhost start --config pmhost.toml");
    Ok(code::OK)
}

/// The crate name a directory suggests: its last component (of the absolute path for `.`).
fn default_name(path: &Path) -> Option<String> {
    let absolute: PathBuf = std::path::absolute(path).ok()?;
    let normal =
        absolute.components().filter(|part| !matches!(part, std::path::Component::CurDir)).collect::<PathBuf>();
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
        let here = std::env::current_dir().unwrap();
        assert_eq!(default_name(Path::new(".")), here.file_name().map(|name| name.to_string_lossy().into_owned()));
        assert_eq!(default_name(Path::new("/")), None);
    }
}
