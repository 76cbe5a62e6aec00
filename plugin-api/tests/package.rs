//! The crate is publishable: the metadata crates.io asks for is there and valid, and the package holds the
//! README and the sources. (`cargo package -p pmhost-plugin-api`, which also builds the packaged crate against
//! the registry, is the full check; this one needs no network.)

use std::path::Path;
use std::process::Command;

fn manifest() -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    std::fs::read_to_string(&path).unwrap().parse().unwrap()
}

#[test]
fn the_manifest_has_what_crates_io_asks_for() {
    let manifest = manifest();
    let package = manifest["package"].as_table().unwrap();
    for key in ["description", "license", "repository", "readme", "documentation", "keywords", "categories"] {
        assert!(package.contains_key(key), "package.{key} is missing");
    }
    assert_eq!(package["publish"].as_bool(), Some(true), "the workspace says publish = false: the crate must not");
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join(package["readme"].as_str().unwrap());
    assert!(readme.is_file(), "{} is missing", readme.display());
    // crates.io: at most 5 keywords of at most 20 characters, ASCII letters, digits, `_`, `-` and `+`, starting
    // with a letter.
    let keywords = package["keywords"].as_array().unwrap();
    assert!(!keywords.is_empty() && keywords.len() <= 5, "{keywords:?}");
    for keyword in keywords.iter().map(|keyword| keyword.as_str().unwrap()) {
        let valid = keyword.len() <= 20
            && keyword.starts_with(|c: char| c.is_ascii_alphabetic())
            && keyword.chars().all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c));
        assert!(valid, "crates.io refuses the keyword {keyword:?}");
    }
    let categories = package["categories"].as_array().unwrap();
    assert!(!categories.is_empty() && categories.len() <= 5, "{categories:?}");
}

#[test]
fn the_package_holds_the_readme_and_every_source_file() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["package", "--list", "--allow-dirty", "--offline", "-p", "pmhost-plugin-api"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo package --list");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package --list failed:\n{stderr}");
    let listed: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut expected = vec!["Cargo.toml".to_owned(), "README.md".to_owned()];
    for entry in walk(&sources) {
        expected.push(entry.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().to_str().unwrap().to_owned());
    }
    for file in &expected {
        assert!(listed.contains(&file.as_str()), "{file} is not in the package: {listed:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
