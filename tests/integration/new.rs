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
        // Cargo takes it, but the crate would build with a warning and fail `cargo clippy -- -D warnings`.
        ("MyJob", None, "the crate name \"MyJob\" is not snake case"),
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
fn a_symbolic_link_to_nothing_is_refused_as_in_the_way() {
    let sandbox = Sandbox::new("new-dangling");
    let link = sandbox.path("job");
    std::os::unix::fs::symlink(sandbox.path("nowhere"), &link).unwrap();
    let out = sandbox.run(["new", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected =
        format!("{} is a symbolic link to {}, which does not exist", link.display(), sandbox.path("nowhere").display());
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    assert!(!sandbox.path("nowhere").exists(), "the link's target was created");
}

#[test]
fn the_next_step_quotes_a_path_the_shell_would_split() {
    let sandbox = Sandbox::new("new-quoted");
    let dir = sandbox.path("my jobs/it's");
    let out = sandbox.run(["new", dir.to_str().unwrap(), "--name", "job"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let quoted = format!("'{}'", dir.display().to_string().replace('\'', r"'\''"));
    assert!(stdout.contains(&format!("next: cd {quoted} && cargo test")), "{quoted} not in {stdout}");
    // The shell reads it back as the path.
    let echoed = std::process::Command::new("sh").arg("-c").arg(format!("printf %s {quoted}")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), dir.to_str().unwrap());
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

/// The plugin author's whole loop, as issue 16 describes it: `pmhost new`, build, test, `start --watch`, edit
/// the message and `cargo build` again: the new generation's workers log the new message and the work never
/// pauses; then a rebuild whose `init` fails is rolled back while the host keeps watching and working.
#[test]
fn the_edit_build_see_it_run_loop_with_watch() {
    let name = "new-watched-greeter";
    let sandbox = Sandbox::new(name);
    let parent = inside_the_workspace();
    let dir = parent.path().join(name);
    let out = sandbox.run(["new", dir.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).expect("seed Cargo.lock");
    cargo(&dir, &["build"]);
    cargo(&dir, &["test"]);

    // Watch the file cargo itself writes (it links each new build into place).
    let plugin = standalone_target_dir().join(dir_name_of_profile()).join("libnew_watched_greeter.so");
    sandbox.start_daemon(&plugin, &["--watch", "--workers", "2", "--execute-times", "0", "--execute-usleep", "50ms"]);
    let old = format!("hello from {name} call=");
    let new = format!("hello again from {name} call=");
    let greeted_by_both = |message: &str| {
        let log = sandbox.log_text("run.");
        ["slot=0", "slot=1"].iter().all(|slot| log.lines().any(|l| l.contains(message) && l.contains(*slot)))
    };
    sandbox.wait_for("both workers to greet", SOON, || greeted_by_both(&old).then_some(()));

    // Edit: a new message, and an init that takes 2.5 s, so that a rollout that stopped an old worker before
    // its replacement was ready would leave at least one whole second of the log without a call.
    let source = dir.join("src/lib.rs");
    let original = std::fs::read_to_string(&source).unwrap();
    let config_line = "let settings: Settings = ctx.config()?;";
    assert!(original.contains(config_line) && original.contains(&format!("\"hello from {name}\"")), "{original}");
    let edited = original.replace(&format!("\"hello from {name}\""), &format!("\"hello again from {name}\"")).replace(
        config_line,
        &format!("{config_line}\n        std::thread::sleep(std::time::Duration::from_millis(2500));"),
    );
    std::fs::write(&source, &edited).unwrap();
    cargo(&dir, &["build"]);
    let record = rollout_of(&sandbox, 2);
    assert!(record.ok, "{record:#?}");
    sandbox.wait_for("both new workers to greet with the new message", SOON, || greeted_by_both(&new).then_some(()));
    let log = sandbox.log_text("run.");
    let seconds: Vec<i64> = log
        .lines()
        .filter(|l| l.contains(&old) || l.contains(&new))
        .map(|l| line_second(l).unwrap_or_else(|| panic!("no time in {l:?}")))
        .collect();
    let (first, last) = (seconds[0], *seconds.last().unwrap());
    assert!(last - first >= 3, "the log does not span the 2.5 s init of the rollout:\n{log}");
    let silent: Vec<i64> = (first..=last).filter(|s| !seconds.contains(s)).collect();
    assert!(silent.is_empty(), "seconds {silent:?} after the start had no work call:\n{log}");
    assert!(!log.lines().skip_while(|l| !l.contains(&new)).any(|l| l.contains(&old) && l.contains("generation=2")));

    // A rebuild whose init fails: rolled back with its reason; the workers of generation 2 keep greeting.
    let pids = sandbox.ready_workers();
    let broken = edited.replace(
        config_line,
        &format!(
            "if ctx.slot() < u32::MAX {{ return Err(JobError::msg(\"the queue is gone\")); }}\n        {config_line}"
        ),
    );
    std::fs::write(&source, broken).unwrap();
    cargo(&dir, &["build"]);
    let record = rollout_of(&sandbox, 3);
    assert!(!record.ok, "{record:#?}");
    assert!(record.error.as_deref().unwrap_or("").contains("the queue is gone"), "{record:#?}");
    let snapshot = sandbox.snapshot().expect("status");
    assert_eq!(snapshot.generation, 2, "{snapshot:#?}");
    assert_eq!(sandbox.ready_workers(), pids, "the workers of generation 2 must keep running");
    let calls = sandbox.log_text("run.").matches(&new).count();
    sandbox.wait_for("generation 2 to go on greeting", SOON, || {
        (sandbox.log_text("run.").matches(&new).count() > calls + 4).then_some(())
    });
    let process_log = sandbox.log_text("process");
    assert!(process_log.contains("restart rolled back") && process_log.contains("the queue is gone"), "{process_log}");
    sandbox.stop();
}

/// The restart record of `generation` once that rollout has ended; a build and a slow init take a while.
fn rollout_of(sandbox: &Sandbox, generation: u32) -> pmhost::status::RestartStatus {
    sandbox.wait_for(&format!("the rollout of generation {generation} to end"), SOON * 3, || {
        sandbox.snapshot()?.last_restart.filter(|r| r.generation == generation && !r.in_progress)
    })
}

/// The time of a text log record (`[Level][title pid YYYY-MM-DD HH:MM:SS]: ...`) in seconds since the epoch
/// of its calendar (so that a test running over midnight counts on).
fn line_second(line: &str) -> Option<i64> {
    let header = &line[..line.find("]: ")?];
    let mut words = header.rsplit(' ');
    let (time, date) = (words.next()?, words.next()?);
    let date: Vec<i64> = date.split('-').map(|n| n.parse().ok()).collect::<Option<_>>()?;
    let time: Vec<i64> = time.split(':').map(|n| n.parse().ok()).collect::<Option<_>>()?;
    let [year, month, day] = date[..] else { return None };
    let [hour, minute, second] = time[..] else { return None };
    // Days from the civil date (proleptic Gregorian), by shifting the year to start in March.
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let days = 365 * y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400) + (153 * m + 2) / 5 + day;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}
