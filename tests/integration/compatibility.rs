//! The compatibility promise of pmhost-plugin-api's README, end to end: a plugin built against the previous
//! minor version of the interface is refused with the version sentence; one built against the current version
//! loads.

use crate::harness::{Sandbox, describe, fixtures, workspace_root};

/// `major.minor` of a version string.
fn major_minor(version: &str) -> (u64, u64) {
    let mut parts = version.split('.').map(|part| part.parse::<u64>().expect("a numeric version"));
    (parts.next().expect("major"), parts.next().expect("minor"))
}

#[test]
fn the_old_api_fixture_is_the_previous_minor_version() {
    // If the interface moves to a new 0.y, the fixture must move too, or the refusal test below proves less.
    let manifest = std::fs::read_to_string(workspace_root().join("plugins/old-api/api/Cargo.toml")).unwrap();
    let table: toml::Table = manifest.parse().unwrap();
    let fixture = table["package"]["version"].as_str().unwrap();
    let (major, minor) = major_minor(pmhost_plugin_api::API_VERSION);
    assert_eq!(major, 0, "from 1.0 on, the previous incompatible version is the previous major: update this test");
    assert_eq!(major_minor(fixture), (0, minor - 1), "plugins/old-api stands for {fixture}");
}

#[test]
fn a_plugin_built_against_the_previous_minor_version_is_refused_with_the_version_sentence() {
    let sandbox = Sandbox::new("compat-old");
    let plugin = fixtures().old_api.to_str().expect("utf-8 path").to_owned();
    let out = sandbox.run(["validate", "--plugin", &plugin]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let api = pmhost_plugin_api::API_VERSION;
    let sentence = format!(
        "plugin {plugin} was built against pmhost-plugin-api 0.1.0, but this pmhost speaks {api}: rebuild the \
         plugin against pmhost-plugin-api {api}"
    );
    assert!(stdout.contains(&sentence), "{sentence:?} not in\n{}", describe(&out));
}

#[test]
fn a_plugin_built_against_the_current_version_loads() {
    let sandbox = Sandbox::new("compat-current");
    let plugin = fixtures().hello.to_str().expect("utf-8 path").to_owned();
    let out = sandbox.run(["validate", "--plugin", &plugin]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("pmhost-plugin-api {}, init and shutdown succeeded", pmhost_plugin_api::API_VERSION);
    assert!(stdout.contains(&expected), "{expected:?} not in\n{}", describe(&out));
}
