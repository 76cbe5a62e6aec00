//! `pmhost start --watch`: a new build of the plugin file rolls out on its own once it is complete (linked,
//! renamed or overwritten into place), a broken one is rolled back while watching goes on, an identical one rolls
//! nothing out, a vanished directory is picked up again, an upgrade keeps watching, and the master does not wake
//! while nothing changes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pmhost::status::{RestartStatus, Snapshot, WatchState};
use serde_json::{Value, json};

use crate::harness::{SOON, Sandbox, describe, fixtures, parse_snapshot, read_markers, task_config};

/// The bytes of build `n` of the faulty fixture (bytes appended: the loader ignores them, the hash does not).
fn build(n: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(&fixtures().faulty).unwrap();
    bytes.extend_from_slice(format!("pmhost-watch-build-{n}").as_bytes());
    bytes
}

/// Puts `bytes` in place as cargo does: written in full under `deps/` (another directory), then the old output
/// removed and the new one hard-linked in its place.
fn link_into_place(plugin: &Path, bytes: &[u8], n: u32) {
    let deps = plugin.parent().unwrap().join("deps");
    std::fs::create_dir_all(&deps).unwrap();
    let built = deps.join(format!("libjob-{n}.so"));
    std::fs::write(&built, bytes).unwrap();
    let _ = std::fs::remove_file(plugin);
    std::fs::hard_link(&built, plugin).unwrap();
}

/// Puts `bytes` in place as most build tools do: a temp file in the same directory renamed over the output.
fn rename_into_place(plugin: &Path, bytes: &[u8]) {
    let tmp = plugin.with_extension("so.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, plugin).unwrap();
}

/// Starts the faulty fixture as a daemon from its own build directory with `--watch`; returns the plugin path.
fn start_watched(sb: &Sandbox, workers: &str, config: Value, extra: &[&str]) -> PathBuf {
    let plugin = sb.path("build/libjob.so");
    link_into_place(&plugin, &build(1), 1);
    let config = task_config(config);
    let mut args = vec!["--watch", "--workers", workers, "--execute-times", "0", "--task-config", &config];
    args.extend_from_slice(extra);
    sb.start_daemon(&plugin, &args);
    plugin
}

/// The status once the restart of `generation` has ended (ok or not).
fn rollout_ended(sb: &Sandbox, generation: u32) -> (RestartStatus, Snapshot) {
    sb.wait_for(&format!("the rollout of generation {generation} to end"), SOON, || {
        let snapshot = sb.snapshot()?;
        let record = snapshot.last_restart.clone().filter(|r| r.generation == generation && !r.in_progress)?;
        Some((record, snapshot))
    })
}

fn watch_state(snapshot: &Snapshot) -> Option<WatchState> {
    snapshot.tasks.first()?.watch.as_ref().map(|w| w.state)
}

fn ready_pids(sb: &Sandbox, workers: usize) -> Vec<i32> {
    sb.wait_for("every worker ready", SOON, || {
        Some(sb.ready_workers().into_values().collect::<Vec<_>>()).filter(|w| w.len() == workers)
    })
}

#[test]
fn a_new_build_linked_or_renamed_into_place_rolls_out_with_no_gap_in_work() {
    let sb = Sandbox::new("watchroll");
    let marker = sb.path("marks");
    // A slow init (1 s): a rollout that stopped old workers before new ones were ready would leave a gap.
    let plugin =
        start_watched(&sb, "2", json!({"marker_file": marker, "init_ms": 1000}), &["--execute-usleep", "100ms"]);
    let shown = plugin.display().to_string();

    // Status says the task is watched, as text and as JSON.
    let out = sb.run(["status", "--name", &sb.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Watch   {shown}: watching for new builds")), "{}", describe(&out));
    let out = sb.run(["status", "--name", &sb.name, "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tasks"][0]["watch"]["state"], "watching", "{json:#}");
    assert_eq!(json["tasks"][0]["watch"]["file"], shown.as_str(), "{json:#}");

    for (generation, how) in [(2, "hard-linked"), (3, "renamed")] {
        let bytes = build(generation);
        match how {
            "hard-linked" => link_into_place(&plugin, &bytes, generation),
            _ => rename_into_place(&plugin, &bytes),
        }
        let (record, snapshot) = rollout_ended(&sb, generation);
        assert!(record.ok, "{how} build: {record:#?}");
        assert_eq!(record.watched_file.as_deref(), Some(shown.as_str()), "{record:#?}");
        assert_eq!(snapshot.generation, generation, "{snapshot:#?}");
        // Judge the whole rollout: both slots working on the new generation, and no pause in the work.
        let marks = sb.wait_for("both slots working on the new generation", SOON, || {
            let mut m = read_markers(&marker);
            m.sort_by_key(|m| m.mono_ns);
            let firsts = [0u32, 1]
                .iter()
                .map(|slot| m.iter().position(|x| x.slot == *slot && x.generation == generation))
                .collect::<Option<Vec<_>>>()?;
            let end = *firsts.iter().max()?;
            (m.len() > end + 2).then(|| m[..end + 2].to_vec())
        });
        let first_new = marks.iter().position(|m| m.generation == generation).unwrap();
        let from = marks[..first_new].iter().rposition(|m| m.mono_ns + 3_000_000_000 < marks[first_new].mono_ns);
        let window = &marks[from.unwrap_or(0)..];
        let longest = Duration::from_nanos(window.windows(2).map(|p| p[1].mono_ns - p[0].mono_ns).max().unwrap_or(0));
        // Two workers, 100 ms apart each: a handful of pauses at most, even on a loaded machine.
        assert!(longest < Duration::from_millis(600), "{how} build: no work for {longest:?} during the rollout");
    }
    let log = sb.log_text("process");
    assert!(log.contains("new build of") && log.contains("is complete: rolling it out"), "{log}");
    sb.stop();
}

#[test]
fn an_overwrite_in_place_written_in_chunks_rolls_out_once_complete_and_never_half_written() {
    let sb = Sandbox::new("watchchunks");
    let plugin = start_watched(&sb, "1", json!({}), &["--execute-usleep", "100ms"]);
    let bytes = build(2);
    // Truncate and write in place in ten chunks, 150 ms apart (the debounce is 500 ms), the way a slow copy or a
    // linker writing its output in place does. The pauses are the writer under test, not a wait.
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(&plugin).unwrap();
    for chunk in bytes.chunks(bytes.len().div_ceil(10)) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    // Still open: nothing may have been looked at, let alone rolled out.
    let snapshot = sb.snapshot().unwrap();
    assert_eq!(snapshot.last_restart, None, "a rollout began while the file was being written: {snapshot:#?}");
    drop(file);
    let (record, snapshot) = rollout_ended(&sb, 2);
    assert!(record.ok, "{record:#?}");
    // One rollout, of the whole file: a half-written build would have been rolled back as generation 2.
    let sha = snapshot.tasks[0].plugin_sha256.clone();
    assert_eq!(sha, sha256(&bytes), "{snapshot:#?}");
    let log = sb.log_text("process");
    assert!(!log.contains("rolled back"), "{log}");
    sb.stop();
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_broken_build_is_rolled_back_and_logged_while_watching_goes_on() {
    let sb = Sandbox::new("watchbroken");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    let plugin = start_watched(&sb, "2", json!({"control_file": control}), &["--execute-usleep", "100ms"]);
    let old = ready_pids(&sb, 2);

    // A build whose init fails.
    std::fs::write(&control, "fail database unreachable").unwrap();
    link_into_place(&plugin, &build(2), 2);
    let (record, snapshot) = rollout_ended(&sb, 2);
    assert!(!record.ok, "{record:#?}");
    assert!(record.error.as_deref().unwrap_or("").contains("database unreachable"), "{record:#?}");
    assert_eq!(snapshot.generation, 1, "{snapshot:#?}");
    assert_eq!(ready_pids(&sb, 2), old, "the old workers must keep running");
    std::fs::write(&control, "ok").unwrap();

    // A library that is no plugin.
    let not_a_plugin = std::fs::read(&fixtures().not_a_plugin).unwrap();
    link_into_place(&plugin, &not_a_plugin, 3);
    let (record, snapshot) = rollout_ended(&sb, 3);
    assert!(!record.ok, "{record:#?}");
    assert_eq!(snapshot.generation, 1, "{snapshot:#?}");
    assert_eq!(watch_state(&snapshot), Some(WatchState::Watching), "{snapshot:#?}");
    let log = sb.log_text("process");
    assert!(log.contains("restart rolled back") && log.contains("database unreachable"), "{log}");
    let reason = record.error.unwrap();
    assert!(log.contains(&reason), "the reason {reason:?} is not in the log:\n{log}");

    // The same broken bytes again (a relink): not rolled out a second time.
    link_into_place(&plugin, &not_a_plugin, 4);
    sb.wait_for("the watch to pass over the rolled-back build", SOON, || {
        sb.log_text("process").contains("which was rolled back: not rolled out again").then_some(())
    });
    assert_eq!(sb.snapshot().unwrap().last_restart.map(|r| r.generation), Some(3));

    // A good build afterwards rolls out.
    link_into_place(&plugin, &build(5), 5);
    let (record, snapshot) = rollout_ended(&sb, 4);
    assert!(record.ok, "{record:#?}");
    assert_eq!(snapshot.generation, 4, "{snapshot:#?}");
    assert_eq!(snapshot.tasks[0].plugin_sha256, sha256(&build(5)), "{snapshot:#?}");
    sb.stop();
}

#[test]
fn a_build_that_arrives_during_a_rollout_rolls_out_after_it() {
    let sb = Sandbox::new("watchduring");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    let plugin = start_watched(&sb, "1", json!({"control_file": control}), &["--execute-usleep", "100ms"]);
    // New workers take 3 s in init: the next build arrives while generation 2 is still rolling out.
    std::fs::write(&control, "slow 3000").unwrap();
    link_into_place(&plugin, &build(2), 2);
    sb.wait_for("generation 2 rolling out", SOON, || {
        sb.snapshot()?.last_restart.filter(|r| r.generation == 2 && r.in_progress).map(|_| ())
    });
    rename_into_place(&plugin, &build(3));
    let (record, _) = rollout_ended(&sb, 2);
    assert!(record.ok, "the rollout under way was cut short: {record:#?}");
    std::fs::write(&control, "ok").unwrap();
    let (record, snapshot) = rollout_ended(&sb, 3);
    assert!(record.ok, "{record:#?}");
    assert_eq!(snapshot.tasks[0].plugin_sha256, sha256(&build(3)), "{snapshot:#?}");
    sb.stop();
}

#[test]
fn a_stop_during_a_watched_rollout_is_graceful_for_the_new_worker_in_init() {
    let sb = Sandbox::new("watchstop");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    let plugin = start_watched(&sb, "1", json!({"control_file": control}), &["--execute-usleep", "100ms"]);
    // The new worker takes a while in init: the stop arrives while it is still starting.
    std::fs::write(&control, "slow 1500").unwrap();
    link_into_place(&plugin, &build(2), 2);
    sb.wait_for("generation 2 rolling out", SOON, || {
        sb.snapshot()?.last_restart.filter(|r| r.generation == 2 && r.in_progress).map(|_| ())
    });
    // A graceful stop asks the starting worker to stop like every other and gives it the grace period: it
    // finishes its init and exits, nothing is killed, and `pmhost stop` succeeds (not exit 7, "killed").
    sb.stop();
    let log = sb.log_text("");
    assert!(!log.contains("SIGKILL"), "a worker was killed:\n{log}");
}

#[test]
fn a_plugin_path_that_is_a_symlink_is_watched_where_it_points() {
    let sb = Sandbox::new("watchlink");
    let output = sb.path("build/libjob.so");
    link_into_place(&output, &build(1), 1);
    std::fs::create_dir_all(sb.path("bin")).unwrap();
    let plugin = sb.path("bin/libjob.so");
    std::os::unix::fs::symlink(&output, &plugin).unwrap();
    let config = task_config(json!({}));
    let args =
        ["--watch", "--workers", "1", "--execute-times", "0", "--execute-usleep", "100ms", "--task-config", &config];
    sb.start_daemon(&plugin, &args);
    // The build tool replaces its output; the link in bin/ never changes.
    link_into_place(&output, &build(2), 2);
    let (record, snapshot) = rollout_ended(&sb, 2);
    assert!(record.ok, "{record:#?}");
    assert_eq!(snapshot.tasks[0].plugin, plugin.display().to_string(), "{snapshot:#?}");
    assert_eq!(snapshot.tasks[0].plugin_sha256, sha256(&build(2)), "{snapshot:#?}");
    sb.stop();
}

#[test]
fn an_identical_rebuild_rolls_nothing_out() {
    let sb = Sandbox::new("watchsame");
    let plugin = start_watched(&sb, "1", json!({}), &["--execute-usleep", "100ms"]);
    let pids = ready_pids(&sb, 1);
    // The same bytes in a new inode, as cargo relinks an unchanged output.
    link_into_place(&plugin, &build(1), 11);
    sb.wait_for("the watch to look at the rebuilt file", SOON, || {
        sb.log_text("process").contains("holds the build already running: nothing to roll out").then_some(())
    });
    let snapshot = sb.snapshot().unwrap();
    assert_eq!((snapshot.generation, snapshot.last_restart.clone()), (1, None), "{snapshot:#?}");
    assert_eq!(ready_pids(&sb, 1), pids);
    sb.stop();
}

#[test]
fn a_removed_build_directory_is_picked_up_again_and_an_upgrade_keeps_watching() {
    let sb = Sandbox::new("watchclean");
    let dir = sb.path("build");
    let config_path = sb.path("pmhost.toml");
    // The config file's `watch = true`.
    std::fs::create_dir_all(&dir).unwrap();
    link_into_place(&dir.join("libjob.so"), &build(1), 1);
    let config = "[[task]]\nname = \"job\"\nplugin = \"build/libjob.so\"\nworkers = 1\nexecute_times = 0\n\
                  execute_usleep = \"100ms\"\nwatch = true\n";
    std::fs::write(&config_path, config).unwrap();
    let out = sb.run(["start", "-d", "--name", &sb.name, "--config", config_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let plugin = dir.join("libjob.so");

    // `cargo clean`: the directory goes; status and the log say so.
    std::fs::remove_dir_all(&dir).unwrap();
    let snapshot = sb.wait_for("the watch to wait for the directory", SOON, || {
        let out = sb.pmhost(["status", "--name", &sb.name, "--json"]).output().ok()?;
        parse_snapshot(&out.stdout).filter(|s| watch_state(s) == Some(WatchState::DirectoryMissing))
    });
    let note = snapshot.tasks[0].watch.as_ref().and_then(|w| w.note.clone()).unwrap_or_default();
    assert!(note.contains(&dir.display().to_string()), "{note}");
    assert!(sb.log_text("process").contains("is gone (removed or moved, as by `cargo clean`)"));

    // The next build creates it again and links its output: it rolls out.
    link_into_place(&plugin, &build(2), 2);
    let (record, _) = rollout_ended(&sb, 2);
    assert!(record.ok, "{record:#?}");

    // After an upgrade the new image watches too.
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_pmhost"));
    let out = sb.run(["upgrade", "--name", &sb.name, "--binary", binary.to_str().unwrap(), "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    rename_into_place(&plugin, &build(3));
    let (record, snapshot) = rollout_ended(&sb, 3);
    assert!(record.ok, "{record:#?}");
    assert!(snapshot.last_upgrade.as_ref().is_some_and(|u| u.ok), "{snapshot:#?}");
    assert_eq!(watch_state(&snapshot), Some(WatchState::Watching), "{snapshot:#?}");
    sb.stop();
}

/// Voluntary plus involuntary context switches of `pid`: one per wake-up from its `poll` at least.
fn context_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn the_master_does_not_wake_while_nothing_changes_with_watch_on() {
    let sb = Sandbox::new("watchidle");
    let marker = sb.path("marks");
    start_watched(&sb, "2", json!({"marker_file": marker}), &["--execute-usleep", "100ms"]);
    let master = sb.master_pid();
    let calls = |n: usize| {
        let marker = marker.clone();
        move || Some(()).filter(|()| read_markers(&marker).len() >= n)
    };
    // Steady: the start is decided and the workers call on their own; nothing is asked of the master.
    sb.wait_for("20 calls", SOON, calls(20));
    let before = context_switches(master);
    // Forty more calls by two workers 100 ms apart: two seconds of the workers working.
    let done = read_markers(&marker).len() + 40;
    sb.wait_for("40 more calls", SOON, calls(done));
    let woken = context_switches(master) - before;
    assert_eq!(woken, 0, "the master woke {woken} times while nothing changed");
    sb.stop();
}
