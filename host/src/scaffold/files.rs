//! The files of a generated plugin crate, from the templates in `template/`.

use std::path::PathBuf;

use super::ApiSource;

/// Which kind of job the crate starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A `Job`: plain functions.
    Sync,
    /// An `AsyncJob` on tokio (the API's `tokio` feature).
    Async,
}

const CARGO_TOML: &str = include_str!("template/Cargo.toml.in");
const LIB_RS: &str = include_str!("template/lib.rs.in");
const LIB_ASYNC_RS: &str = include_str!("template/lib_async.rs.in");
const PMHOST_TOML: &str = include_str!("template/pmhost.toml.in");
const README_MD: &str = include_str!("template/README.md.in");
const GITIGNORE: &str = include_str!("template/gitignore.in");

/// The crate's files, relative to its directory, with their contents. `name` must have passed
/// `check_crate_name` (it goes into Rust and TOML strings as it is).
pub fn render(name: &str, flavor: Flavor, api: &ApiSource) -> Vec<(PathBuf, String)> {
    let (features, extra_dependencies, lib_rs) = match flavor {
        Flavor::Sync => (&[][..], String::new(), LIB_RS),
        Flavor::Async => (
            &["tokio"][..],
            "tokio = { version = \"1\", features = [\"macros\", \"time\"] }\n".to_owned(),
            LIB_ASYNC_RS,
        ),
    };
    let testing: Vec<&str> = features.iter().copied().chain(["testing"]).collect();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{lib}}", &name.replace('-', "_"))
            .replace("{{api}}", &api.dependency(features))
            .replace("{{api_testing}}", &api.dependency(&testing))
            .replace("{{extra_dependencies}}", &extra_dependencies)
    };
    vec![
        (PathBuf::from("Cargo.toml"), fill(CARGO_TOML)),
        (PathBuf::from("src/lib.rs"), fill(lib_rs)),
        (PathBuf::from("pmhost.toml"), fill(PMHOST_TOML)),
        (PathBuf::from("README.md"), fill(README_MD)),
        (PathBuf::from(".gitignore"), fill(GITIGNORE)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_and_the_manifest_is_a_plugin_crate() {
        let api = ApiSource::Version("0.2.0".to_owned());
        for flavor in [Flavor::Sync, Flavor::Async] {
            let files = render("mail-queue", flavor, &api);
            for (path, text) in &files {
                assert!(!text.contains("{{"), "{} keeps a placeholder:\n{text}", path.display());
            }
            let manifest: toml::Table = files[0].1.parse().expect("Cargo.toml parses");
            assert_eq!(manifest["package"]["name"].as_str(), Some("mail-queue"));
            assert_eq!(manifest["lib"]["crate-type"].as_array().unwrap()[0].as_str(), Some("cdylib"));
            assert!(manifest["workspace"].as_table().unwrap().is_empty());
            let testing = manifest["dev-dependencies"]["pmhost-plugin-api"]["features"].as_array().unwrap();
            assert!(testing.iter().any(|feature| feature.as_str() == Some("testing")));
            let config: toml::Table = files[2].1.parse().expect("pmhost.toml parses");
            assert_eq!(config["task"][0]["plugin"].as_str(), Some("target/release/libmail_queue.so"));
            let lib = &files[1].1;
            match flavor {
                Flavor::Sync => assert!(lib.contains("impl Job for Greeter") && lib.contains("export_job!")),
                Flavor::Async => {
                    assert!(lib.contains("impl AsyncJob for Greeter") && lib.contains("export_async_job!"));
                    assert!(
                        manifest["dependencies"]["pmhost-plugin-api"]["features"].as_array().unwrap()[0].as_str()
                            == Some("tokio")
                    );
                    assert!(manifest["dependencies"].get("tokio").is_some());
                }
            }
        }
    }
}
