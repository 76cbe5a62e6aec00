//! Where a generated crate's `pmhost-plugin-api` comes from: the checkout this pmhost was built from, or the
//! registry.
//!
//! A pmhost built from a checkout (`cargo build`, `cargo run`, `cargo install --path host`) knows at build time
//! where the checkout's `plugin-api/` was. If that directory is still there and still holds
//! `pmhost-plugin-api` at the very version compiled into this pmhost, the new crate depends on it by path:
//! it builds without a registry, and against the interface this pmhost speaks even before it is published.
//! Otherwise (a binary from a package, a checkout since moved, switched to another API version or removed)
//! the crate asks the registry for this pmhost's API version (a caret requirement: the same `0.y`, at least
//! this patch), which is what this pmhost loads (see the compatibility promise in pmhost-plugin-api's
//! README).

use std::path::{Path, PathBuf};

/// The API crate's directory in the checkout this pmhost was built from (it may be gone by now).
const BUILD_API_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api");

/// The API crate's manifest is small; anything larger is not it.
const MANIFEST_LIMIT: u64 = 64 * 1024;

/// The `pmhost-plugin-api` a generated crate depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// The API crate in a checkout, by path.
    Path(PathBuf),
    /// The registry's `pmhost-plugin-api`, by version requirement.
    Version(String),
}

impl ApiSource {
    /// This pmhost's API: its checkout's `plugin-api/` if still there at the same version, else the registry.
    pub fn of_this_pmhost() -> ApiSource {
        ApiSource::detect(Path::new(BUILD_API_DIR), pmhost_plugin_api::API_VERSION)
    }

    /// `api_dir` by path if it holds `pmhost-plugin-api` at exactly `version`, else `version` from the registry.
    pub fn detect(api_dir: &Path, version: &str) -> ApiSource {
        match std::fs::canonicalize(api_dir) {
            Ok(dir) if holds_api_version(&dir, version) && dir.to_str().is_some() => ApiSource::Path(dir),
            _ => ApiSource::Version(version.to_owned()),
        }
    }

    /// The dependency as a TOML inline table, with `features`.
    pub fn dependency(&self, features: &[&str]) -> String {
        let mut keys = match self {
            ApiSource::Path(dir) => vec![format!("path = {}", quoted(&dir.to_string_lossy()))],
            ApiSource::Version(version) => vec![format!("version = {}", quoted(version))],
        };
        if !features.is_empty() {
            let list: Vec<String> = features.iter().map(|feature| quoted(feature)).collect();
            keys.push(format!("features = [{}]", list.join(", ")));
        }
        format!("{{ {} }}", keys.join(", "))
    }

    /// For the user: where the dependency points.
    pub fn describe(&self) -> String {
        match self {
            ApiSource::Path(dir) => format!("pmhost-plugin-api from {}", dir.display()),
            ApiSource::Version(version) => format!("pmhost-plugin-api {version} from crates.io"),
        }
    }
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Whether `dir/Cargo.toml` is the manifest of `pmhost-plugin-api` at `version`.
fn holds_api_version(dir: &Path, version: &str) -> bool {
    let manifest = dir.join("Cargo.toml");
    let fits = std::fs::metadata(&manifest).is_ok_and(|meta| meta.is_file() && meta.len() <= MANIFEST_LIMIT);
    let Some(text) = fits.then(|| std::fs::read_to_string(&manifest).ok()).flatten() else { return false };
    let Ok(table) = text.parse::<toml::Table>() else { return false };
    let package = table.get("package").and_then(toml::Value::as_table);
    let field = |key| package.and_then(|package| package.get(key)).and_then(toml::Value::as_str);
    field("name") == Some("pmhost-plugin-api") && field("version") == Some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_dir(manifest: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
        dir
    }

    #[test]
    fn a_checkout_at_the_same_version_is_used_by_path() {
        let dir = api_dir("[package]\nname = \"pmhost-plugin-api\"\nversion = \"0.2.0\"\n");
        let source = ApiSource::detect(dir.path(), "0.2.0");
        assert_eq!(source, ApiSource::Path(dir.path().canonicalize().unwrap()));
        let expected =
            format!("{{ path = \"{}\", features = [\"testing\"] }}", dir.path().canonicalize().unwrap().display());
        assert_eq!(source.dependency(&["testing"]), expected);
    }

    #[test]
    fn anything_else_falls_back_to_the_registry_version() {
        let other_version = api_dir("[package]\nname = \"pmhost-plugin-api\"\nversion = \"0.3.0\"\n");
        let other_crate = api_dir("[package]\nname = \"pmhost\"\nversion = \"0.2.0\"\n");
        let not_toml = api_dir("[package\n");
        let gone = tempfile::tempdir().unwrap().path().join("plugin-api");
        for dir in [other_version.path(), other_crate.path(), not_toml.path(), &gone] {
            assert_eq!(ApiSource::detect(dir, "0.2.0"), ApiSource::Version("0.2.0".to_owned()), "{}", dir.display());
        }
        let source = ApiSource::Version("0.2.0".to_owned());
        assert_eq!(source.dependency(&[]), "{ version = \"0.2.0\" }");
        assert_eq!(
            source.dependency(&["tokio", "testing"]),
            "{ version = \"0.2.0\", features = [\"tokio\", \"testing\"] }"
        );
    }

    #[test]
    fn this_pmhost_built_from_its_checkout_finds_it() {
        // The tests run from the checkout this pmhost is built from.
        let source = ApiSource::of_this_pmhost();
        let expected = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api").canonicalize().unwrap();
        assert_eq!(source, ApiSource::Path(expected));
    }
}
