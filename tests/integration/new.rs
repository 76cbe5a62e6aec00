//! `pmhost new`: the crate it writes builds, passes its own unit tests (the test kit, no host) and runs under
//! pmhost as written, for a plain and an async job; a bad name or an occupied directory is refused, leaving
//! nothing behind.
//!
//! The generated crates are built where the other stand-alone plugin crates are (`standalone_target_dir`),
//! with the workspace's Cargo.lock as their lock file, so their dependencies are the ones already built there:
//! only the crate itself and the API's test-kit feature compile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::harness::{SOON, Sandbox, cargo_profile, describe, standalone_target_dir, workspace_root};

/// Runs cargo `args` in `dir` against the shared target directory; it must succeed.
fn cargo(dir: &Path, args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(args).arg("--profile").arg(cargo_profile()).arg("--target-dir").arg(standalone_target_dir());
    cmd.current_dir(dir).env_remove("RUSTFLAGS");
    eprintln!("$ (in {}) {cmd:?}", dir.display());
    let started = Instant::now();
    let out = cmd.output().expect("run cargo");
    eprintln!("cargo {} took {:.1} s", args[0], started.elapsed().as_secs_f64());
    assert!(out.status.success(), "cargo {args:?} failed in {}:\n{}", dir.display(), describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory for generated crates inside the pmhost workspace (its `target/`), so a crate that did not
/// declare its own workspace would fail to build there.
fn inside_the_workspace() -> tempfile::TempDir {
    let parent = standalone_target_dir().join("new-crates");
    std::fs::create_dir_all(&parent).expect("create target/fixtures/new-crates");
    assert!(parent.starts_with(workspace_root()) || std::env::var_os("CARGO_TARGET_DIR").is_some());
    tempfile::Builder::new().prefix("pmhost-new-").tempdir_in(parent).expect("temp dir")
}

/// `pmhost new` a crate named `name` (the directory's name), build it, run its tests, start it from its own
/// pmhost.toml, see both workers greet, stop it.
fn new_crate_builds_tests_and_runs(name: &str, extra: &[&str]) {
    let started = Instant::now();
    let sandbox = Sandbox::new(name);
    let parent = inside_the_workspace();
    let dir: PathBuf = parent.path().join(name);
    let dir_arg = dir.to_str().expect("utf-8 path");
    let mut args = vec!["new", dir_arg];
    args.extend_from_slice(extra);
    let out = sandbox.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("created plugin crate {name}")), "{stdout}");
    // Built from this checkout, the crate depends on it by path.
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let api_dir = workspace_root().join("plugin-api").canonicalize().unwrap();
    assert!(manifest.contains(&format!("path = \"{}\"", api_dir.display())), "{manifest}");

    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).expect("seed Cargo.lock");
    // As written, the code is formatted as rustfmt would with its defaults (the crate has no rustfmt.toml; the
    // workspace's around it here is not the user's).
    let defaults = sandbox.path("rustfmt.toml");
    std::fs::write(&defaults, "").unwrap();
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut fmt = Command::new(cargo_bin);
    fmt.args(["fmt", "--check", "--", "--config-path"]).arg(&defaults).current_dir(&dir);
    eprintln!("$ {fmt:?}");
    let fmt = fmt.output().expect("run cargo fmt");
    assert!(fmt.status.success(), "the new crate is not rustfmt-clean:\n{}", describe(&fmt));
    cargo(&dir, &["build"]);
    let tests = cargo(&dir, &["test"]);
    assert!(tests.contains("test result: ok.") && !tests.contains(" 0 passed"), "{tests}");

    // pmhost.toml names target/release/lib{name}.so: put the build there, as `cargo build --release` would.
    let library = format!("lib{}.so", name.replace('-', "_"));
    let built = standalone_target_dir().join(dir_name_of_profile()).join(&library);
    std::fs::create_dir_all(dir.join("target/release")).unwrap();
    std::fs::copy(&built, dir.join("target/release").join(&library)).expect("copy the built plugin");
    let config = dir.join("pmhost.toml");
    let config = config.to_str().expect("utf-8 path");
    let out = sandbox.run(["start", "-d", "--config", config, "--name", &sandbox.name, "--execute-usleep", "50ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // Each of the two workers greets with the config's greeting, call after call.
    let greeting = format!("hello from {name} call=2");
    sandbox.wait_for("both workers to greet twice", SOON, || {
        let log = sandbox.log_text("run.");
        let slots =
            ["slot=0", "slot=1"].iter().filter(|slot| log.lines().any(|l| l.contains(&greeting) && l.contains(*slot)));
        (slots.count() == 2).then_some(())
    });
    sandbox.stop();
    let log = sandbox.log_text("run.");
    assert!(log.lines().any(|line| line.contains("bye calls=")), "no shutdown in the run log:\n{log}");
    eprintln!("pmhost new {name}: created, built, tested, run and stopped in {:.1} s", started.elapsed().as_secs_f64());
}

/// `debug` for the dev profile, else the profile's name: the directory cargo builds into.
fn dir_name_of_profile() -> String {
    match cargo_profile().as_str() {
        "dev" | "test" => "debug".to_owned(),
        other => other.to_owned(),
    }
}

#[test]
fn a_new_job_builds_passes_its_tests_and_runs() {
    new_crate_builds_tests_and_runs("new-sync-greeter", &[]);
}

#[test]
fn a_new_async_job_builds_passes_its_tests_and_runs() {
    new_crate_builds_tests_and_runs("new-async-greeter", &["--async"]);
}

#[test]
fn an_occupied_directory_is_refused_and_left_alone() {
    let sandbox = Sandbox::new("new-occupied");
    let dir = sandbox.path("job");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let out = sandbox.run(["new", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("pmhost: error: {} is not empty", dir.display())), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["notes.txt"]);
    assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn a_bad_crate_name_is_refused_and_nothing_is_created() {
    let sandbox = Sandbox::new("new-badname");
    let cases = [
        ("job", Some("my job"), "the crate name \"my job\" contains ' '"),
        ("2fast", None, "the crate name \"2fast\" starts with '2'"),
        ("fn", None, "the crate name \"fn\" is a Rust keyword"),
    ];
    for (dir, name, expected) in cases {
        let path = sandbox.path(dir);
        let mut args = vec!["new", path.to_str().unwrap()];
        args.extend(name.iter().flat_map(|name| ["--name", name]));
        let out = sandbox.run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert!(!path.exists(), "{} was created", path.display());
    }
}

#[test]
fn help_explains_the_command() {
    let sandbox = Sandbox::new("new-help");
    let out = sandbox.run(["new", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for fragment in ["PATH", "--name", "--async", "empty directory", "cargo build --release", "Exit codes"] {
        assert!(help.contains(fragment), "{fragment:?} not in the help:\n{help}");
    }
}
