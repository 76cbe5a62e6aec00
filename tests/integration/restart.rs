//! Restart as a hot swap: every slot moves to the new build with no pause in the work, a bad build is rolled
//! back with the old workers untouched, SIGHUP does the same, and scaling changes the worker count at runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use pmhost::status::{HostState, WorkerState};
use serde_json::{Value, json};

use crate::harness::{
    SOON, Sandbox, describe, file_names, fixtures, is_ready, parse_snapshot, read_markers, signal, task_config,
};

/// A "rebuilt" plugin: the faulty fixture with bytes appended (the loader ignores them, the hash does not).
fn rebuild(path: &Path, build: u8) {
    let mut bytes = std::fs::read(&fixtures().faulty).unwrap();
    bytes.extend_from_slice(format!("pmhost-test-build-{build}").as_bytes());
    // Write and rename, as a build tool would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn pids_by_slot(sb: &Sandbox) -> BTreeMap<u32, i32> {
    sb.workers().iter().map(|w| (w.slot, w.pid)).collect()
}

/// Starts the faulty plugin (as a copy in the sandbox) as a daemon with `config`; returns the plugin path.
fn start(sb: &Sandbox, workers: &str, config: Value, extra: &[&str]) -> std::path::PathBuf {
    let plugin = sb.path("libjob.so");
    rebuild(&plugin, 1);
    let config = task_config(config);
    let plugin_arg = plugin.to_str().unwrap().to_owned();
    let mut args = vec!["start", "-d", "--name", &sb.name, "--plugin", &plugin_arg, "--workers", workers];
    args.extend_from_slice(&["--execute-times", "0", "--task-config", &config]);
    args.extend_from_slice(extra);
    let out = sb.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    plugin
}

#[test]
fn restart_after_a_rebuild_moves_every_slot_to_the_new_build() {
    let sb = Sandbox::new("rebuild");
    let plugin = start(&sb, "3", json!({}), &["--execute-usleep", "50ms"]);
    let old = pids_by_slot(&sb);
    let old_sha = sb.snapshot().unwrap().tasks[0].plugin_sha256.clone();
    rebuild(&plugin, 2);
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("every slot runs generation 2"), "{}", describe(&out));
    let status = sb.wait_for("old workers gone", SOON, || {
        let s = sb.snapshot()?;
        let w = &s.tasks.first()?.workers;
        (w.len() == 3 && w.iter().all(|w| w.generation == 2)).then_some(s)
    });
    let new_sha = &status.tasks[0].plugin_sha256;
    assert_ne!(new_sha, &old_sha, "{status:#?}");
    for w in &status.tasks[0].workers {
        assert_eq!(&w.plugin_sha256, new_sha, "{w:#?}");
        assert!(!old.values().any(|pid| w.pid == *pid), "an old worker survived: {w:#?}");
    }
    assert_eq!(status.generation, 2);
    assert_eq!(status.last_restart.as_ref().map(|r| r.ok), Some(true), "{status:#?}");
    assert_eq!(status.last_restart.as_ref().map(|r| r.generation), Some(2), "{status:#?}");
    // Only the build in use stays staged.
    let staged: Vec<String> =
        file_names(&sb.host_status_dir().join("plugins")).into_iter().filter(|n| n.ends_with(".so")).collect();
    assert_eq!(staged, [format!("{new_sha}.so")], "{staged:?}");
    sb.stop();
}

#[test]
fn restart_to_another_plugin_file() {
    let sb = Sandbox::new("otherfile");
    start(&sb, "2", json!({}), &[]);
    let hello = fixtures().hello.to_str().unwrap();
    let out = sb.run(["restart", "--name", &sb.name, "--plugin", hello]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = sb.snapshot().unwrap();
    assert_eq!(status.tasks[0].plugin, hello, "{status:#?}");
    sb.stop();
}

#[test]
fn work_goes_on_during_a_restart() {
    let sb = Sandbox::new("nogap");
    let marker = sb.path("marks");
    // A slow init (2 s): a restart that stopped the old workers before the new ones were ready would leave a
    // gap of at least that long.
    let config = json!({"marker_file": marker, "init_ms": 2000});
    let plugin = start(&sb, "2", config, &["--execute-usleep", "100ms"]);
    rebuild(&plugin, 2);
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // Judge the whole rollout: from before the first new worker started to after both slots moved.
    let marks = sb.wait_for("both slots working on the new generation", SOON, || {
        let mut m = read_markers(&marker);
        m.sort_by_key(|m| m.mono_ns);
        let last_new_start = [0u32, 1]
            .iter()
            .map(|slot| m.iter().position(|x| x.slot == *slot && x.generation == 2))
            .collect::<Option<Vec<_>>>()?;
        let end = *last_new_start.iter().max()?;
        (m.len() > end + 2).then(|| m[..end + 2].to_vec())
    });
    let first_new = marks.iter().position(|m| m.generation == 2).unwrap();
    let window_start =
        marks[..first_new].iter().rposition(|m| m.mono_ns + 3_000_000_000 < marks[first_new].mono_ns).unwrap_or(0);
    let longest = marks[window_start..].windows(2).map(|p| p[1].mono_ns - p[0].mono_ns).max().unwrap_or(0);
    let longest = Duration::from_nanos(longest);
    // Two workers, 100 ms apart each: a handful of pauses at most, even on a loaded machine.
    assert!(longest < Duration::from_millis(600), "no work for {longest:?} during the restart");
    sb.stop();
}

#[test]
fn surge_bounds_the_extra_workers_and_status_follows_the_rollout() {
    let sb = Sandbox::new("surge");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    start(&sb, "4", json!({"control_file": control}), &[]);
    std::fs::write(&control, "slow 700").unwrap();
    let restart = sb
        .pmhost(["restart", "--name", &sb.name, "--surge", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut most = 0;
    let mut seen_in_progress = false;
    sb.wait_for("the rollout to end", SOON, || {
        let s = sb.snapshot()?;
        most = most.max(sb.workers().iter().filter(|w| w.state != WorkerState::Stopping).count());
        let record = s.last_restart.as_ref();
        if record.is_some_and(|r| r.in_progress && r.slots_total == 4) {
            seen_in_progress = true;
        }
        record.is_some_and(|r| !r.in_progress).then_some(())
    });
    let out = restart.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(seen_in_progress, "status never showed the rollout in progress");
    assert!((5..=6).contains(&most), "at most workers + surge = 6 at a time, and some overlap: saw {most}");
    sb.stop();
}

#[test]
fn sighup_rolls_back_a_failing_build_too() {
    let sb = Sandbox::new("huprollback");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    start(&sb, "2", json!({"control_file": control}), &[]);
    let before = pids_by_slot(&sb);
    std::fs::write(&control, "fail the vault is sealed").unwrap();
    signal(sb.master_pid(), Signal::SIGHUP);
    let status = sb.wait_for("the rollback", SOON, || {
        let s = sb.snapshot()?;
        (s.last_restart.as_ref().is_some_and(|r| !r.in_progress) && sb.workers().len() == 2).then_some(s)
    });
    let restart = status.last_restart.as_ref().unwrap();
    assert!(!restart.ok, "{status:#?}");
    assert!(restart.error.as_deref().unwrap().contains("the vault is sealed"), "{status:#?}");
    assert_eq!(pids_by_slot(&sb), before);
    sb.stop();
}

#[test]
fn a_build_failing_on_a_later_slot_puts_moved_slots_back_on_the_old_build() {
    let sb = Sandbox::new("laterslot");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    // Only slot 1 reads the control file: the new build works in slot 0 and fails in slot 1.
    start(&sb, "2", json!({"control_file": control, "only_slot": 1}), &[]);
    let before = pids_by_slot(&sb);
    std::fs::write(&control, "fail slot 1 cannot start").unwrap();
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    let status = sb.wait_for("slot 0 back on the old build", SOON, || {
        let s = sb.snapshot()?;
        let w = sb.workers();
        let settled = w.len() == 2 && w.iter().all(|w| w.generation == 1 && is_ready(w));
        settled.then_some(s)
    });
    let after = pids_by_slot(&sb);
    assert_eq!(after[&1], before[&1], "slot 1 was never moved: its old worker stays");
    assert_ne!(after[&0], before[&0], "slot 0 moved, then came back with a fresh worker of the old build");
    assert_eq!(status.generation, 1, "{status:#?}");
    sb.stop();
}

#[test]
fn a_build_that_is_not_a_plugin_is_refused_before_the_master_is_touched() {
    let sb = Sandbox::new("refused");
    start(&sb, "2", json!({}), &[]);
    let before = pids_by_slot(&sb);
    for bad in [&fixtures().not_a_plugin, &fixtures().old_api] {
        let out = sb.run(["restart", "--name", &sb.name, "--plugin", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("old workers keep running"), "{stderr}");
    }
    let status = sb.snapshot().unwrap();
    assert!(status.last_restart.is_none(), "the master was asked anyway: {status:#?}");
    assert_eq!(pids_by_slot(&sb), before);
    sb.stop();
}

/// The end of the last loadable segment of an ELF64 file (what the loader maps; debug sections follow).
fn loaded_size(elf: &[u8]) -> usize {
    let word = |at: usize, len: usize| elf[at..at + len].iter().rev().fold(0usize, |n, b| n << 8 | *b as usize);
    let (phoff, phentsize, phnum) = (word(0x20, 8), word(0x36, 2), word(0x38, 2));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|ph| word(*ph, 4) == 1) // PT_LOAD
        .map(|ph| word(ph + 8, 8) + word(ph + 32, 8)) // p_offset + p_filesz
        .max()
        .expect("a loadable segment")
}

/// A copy of the constructor fixture whose constructor does `mode` (8 bytes: `exit0___`, `abort___`, `hang____`).
fn constructor_variant(sb: &Sandbox, mode: &[u8; 8]) -> std::path::PathBuf {
    const PREFIX: &[u8] = b"PMHOST-CTOR-MODE:";
    let mut bytes = std::fs::read(&fixtures().constructor).unwrap();
    let at = bytes.windows(PREFIX.len()).position(|w| w == PREFIX).expect("the mode marker") + PREFIX.len();
    bytes[at..at + 8].copy_from_slice(mode);
    let path = sb.path(&format!("libctor-{}.so", String::from_utf8_lossy(mode).trim_end_matches('_')));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_build_whose_loading_exits_crashes_or_hangs_is_refused_by_a_probe() {
    let sb = Sandbox::new("ctor");
    start(&sb, "2", json!({}), &[]);
    let before = pids_by_slot(&sb);
    // A real plugin cut in the middle of what the loader maps: touching pages past the end of the file is SIGBUS
    // (or the loader refuses the file).
    let truncated = sb.path("libtruncated.so");
    let whole = std::fs::read(&fixtures().hello).unwrap();
    std::fs::write(&truncated, &whole[..loaded_size(&whole) / 2]).unwrap();
    let cases = [
        (constructor_variant(&sb, b"exit0___"), "ended the probe with exit code 0"),
        (constructor_variant(&sb, b"abort___"), "crashed the probe with SIGABRT"),
        (constructor_variant(&sb, b"hang____"), "did not finish within 2s"),
        (truncated, ""),
    ];
    for (plugin, expected) in cases {
        let args = ["restart", "--name", &sb.name, "--plugin", plugin.to_str().unwrap(), "--init-timeout", "2s"];
        let out = sb.run(args);
        assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("restart of") && stderr.contains(expected), "{expected:?} in {stderr}");
        assert!(stderr.contains(plugin.to_str().unwrap()), "the message names the file: {stderr}");
    }
    let status = sb.snapshot().unwrap();
    assert!(status.last_restart.is_none(), "the master was asked anyway: {status:#?}");
    assert_eq!(pids_by_slot(&sb), before);
    sb.stop();
}

#[test]
fn a_build_whose_init_fails_or_panics_is_rolled_back() {
    let sb = Sandbox::new("rollback");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    start(&sb, "2", json!({"control_file": control}), &[]);
    let before = pids_by_slot(&sb);
    for (order, expected) in
        [("fail the queue is gone", "the queue is gone"), ("panic config key missing", "config key missing")]
    {
        std::fs::write(&control, order).unwrap();
        let out = sb.run(["restart", "--name", &sb.name]);
        assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected) && stderr.contains("rolled back"), "{stderr}");
        let status = sb.snapshot().unwrap();
        let restart = status.last_restart.as_ref().unwrap();
        assert!(!restart.ok, "{status:#?}");
        assert!(restart.error.as_deref().unwrap().contains(expected), "{status:#?}");
        assert_eq!(status.generation, 1, "{status:#?}");
        let after = sb.wait_for("only the old workers", SOON, || {
            let w = sb.workers();
            (w.len() == 2).then(|| pids_by_slot(&sb))
        });
        assert_eq!(after, before, "the old workers were touched");
    }
    // A slow init past the restart's init timeout is rolled back too.
    std::fs::write(&control, "slow 60000").unwrap();
    let out = sb.run(["restart", "--name", &sb.name, "--init-timeout", "1s"]);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not finish within"), "{}", describe(&out));
    assert_eq!(pids_by_slot(&sb), before);
    // And a good build afterwards goes through.
    std::fs::write(&control, "ok").unwrap();
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sb.stop();
}

#[test]
fn sighup_rolls_out_like_restart() {
    let sb = Sandbox::new("hup");
    let plugin = start(&sb, "2", json!({}), &[]);
    let before = pids_by_slot(&sb);
    rebuild(&plugin, 3);
    let master = sb.master_pid();
    signal(master, Signal::SIGHUP);
    let status = sb.wait_for("generation 2 everywhere", SOON, || {
        let s = sb.snapshot()?;
        let w = &s.tasks.first()?.workers;
        (s.generation == 2 && w.len() == 2 && w.iter().all(|w| w.generation == 2)).then_some(s)
    });
    assert!(status.last_restart.as_ref().and_then(|r| r.request_id.as_ref()).is_none(), "{status:#?}");
    assert!(pids_by_slot(&sb).values().all(|pid| !before.values().any(|old| old == pid)));
    sb.stop();
}

#[test]
fn restart_of_a_host_that_is_not_running_starts_it() {
    let sb = Sandbox::new("coldrestart");
    let hello = fixtures().hello.to_str().unwrap();
    let out = sb.run(["restart", "--name", &sb.name, "--plugin", hello, "--workers", "2", "--execute-times", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running: starting"), "{}", describe(&out));
    assert_eq!(sb.workers().len(), 2);
    sb.stop();
}

#[test]
fn scale_changes_the_worker_count_without_touching_the_others() {
    let sb = Sandbox::new("scale");
    start(&sb, "2", json!({}), &[]);
    let before = pids_by_slot(&sb);
    let out = sb.run(["scale", "--name", &sb.name, "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let after = pids_by_slot(&sb);
    assert_eq!(after.len(), 4);
    assert_eq!(after[&0], before[&0]);
    assert_eq!(after[&1], before[&1]);
    let out = sb.run(["scale", "--name", &sb.name, "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let after = pids_by_slot(&sb);
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), [0], "the highest slots stop first");
    assert_eq!(after[&0], before[&0]);
    let out = sb.run(["scale", "--name", &sb.name, "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    sb.stop();
}

/// The milliseconds `pmhost scale` says it took, asked once the status file is 50 ms old: its own record is then
/// written at once (the pace of status writes after a cheap write is well under that).
fn scale_ms(sb: &Sandbox, workers: &str) -> u64 {
    sb.wait_for("a 50 ms old status file", SOON, || {
        let written = sb.snapshot()?.written_at_mono_ns;
        (pmhost::sysinfo::monotonic_ns().saturating_sub(written) >= 50_000_000).then_some(())
    });
    let out = sb.run(["scale", "--name", &sb.name, workers]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ms = stdout.rsplit_once('(').and_then(|(_, rest)| rest.split_once(" ms")).map(|(ms, _)| ms.parse().ok());
    ms.flatten().unwrap_or_else(|| panic!("no duration in {stdout:?}"))
}

#[test]
fn scale_sees_its_workers_without_waiting_for_the_pace_of_workers_changes() {
    let sb = Sandbox::new("scalepace");
    // `init` takes 40 ms: the scale's record is written before its new worker is ready, and the status file must
    // then follow the worker at once, not at the 100 ms pace of changes nobody waits for.
    start(&sb, "1", json!({"init_ms": 40}), &[]);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    // Held to the pace, none of these could take less than 100 ms; unheld, most take about half that. Rounds go
    // on (at most ten) until each way has had one well under it, so a loaded machine's slow rounds do not fail
    // the test.
    for _ in 0..10 {
        up.push(scale_ms(&sb, "2"));
        down.push(scale_ms(&sb, "1"));
        if up.iter().any(|ms| *ms < 95) && down.iter().any(|ms| *ms < 95) {
            break;
        }
    }
    let (best_up, best_down) = (*up.iter().min().unwrap(), *down.iter().min().unwrap());
    assert!(best_up < 95, "scale up took {up:?} ms: the workers' changes were held back");
    assert!(best_down < 95, "scale down took {down:?} ms: the workers' changes were held back");
    sb.stop();
}

#[test]
fn ttin_and_ttou_add_and_remove_one_worker() {
    let sb = Sandbox::new("ttin");
    start(&sb, "2", json!({}), &[]);
    let master = sb.master_pid();
    signal(master, Signal::SIGTTIN);
    sb.wait_for("3 workers", SOON, || (sb.ready_workers().len() == 3 && sb.workers().len() == 3).then_some(()));
    signal(master, Signal::SIGTTOU);
    sb.wait_for("2 workers", SOON, || (sb.workers().len() == 2).then_some(()));
    assert_eq!(sb.ready_workers().keys().copied().collect::<Vec<_>>(), [0, 1]);
    sb.stop();
}

#[test]
fn a_restart_during_a_stop_is_refused_not_left_waiting() {
    let sb = Sandbox::new("restartstop");
    start(&sb, "2", json!({"work_ms": 1500}), &[]);
    let stopping = sb.pmhost(["stop", "--name", &sb.name]).stdout(std::process::Stdio::null()).spawn().unwrap();
    sb.wait_for("the stop to begin", SOON, || (sb.snapshot()?.state == HostState::Stopping).then_some(()));
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is stopping") || stderr.contains("exited"), "{stderr}");
    assert!(!stderr.contains("keep running"), "a stopping host's workers do not keep running: {stderr}");
    assert_eq!(stopping.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn a_stop_during_a_rollout_makes_restart_say_the_host_is_stopping() {
    let sb = Sandbox::new("rolloutstop");
    let control = sb.path("control");
    std::fs::write(&control, "ok").unwrap();
    start(&sb, "1", json!({"control_file": control}), &["--stop-timeout", "1s"]);
    std::fs::write(&control, "slow 60000").unwrap();
    let mut restart = sb.pmhost(["restart", "--name", &sb.name]);
    let restart = restart.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    sb.wait_for("the rollout to begin", SOON, || sb.snapshot()?.last_restart?.in_progress.then_some(()));
    // (Not `sb.stop()`: the restart command, which mentions the name too, may still be finishing.)
    let stopped = sb.run(["stop", "--name", &sb.name]);
    // The new worker, still in its 60 s init, is asked to stop like the others, outlives the grace period and is
    // killed: a forced stop, which `stop` reports as 7.
    assert_eq!(stopped.status.code(), Some(7), "{}", describe(&stopped));
    let out = restart.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("is stopping") || stderr.contains("exited"), "{stderr}");
    assert!(!stderr.contains("keep running"), "a stopping host's workers do not keep running: {stderr}");
}

#[test]
fn requests_a_command_gave_up_on_are_never_applied_later() {
    let mut sb = Sandbox::new("expire");
    let hello = fixtures().hello.to_str().unwrap().to_owned();
    let fg = sb.start_foreground(["--plugin", &hello, "--workers", "2", "--execute-times", "0"]);
    sb.wait_for("2 ready workers", SOON, || (sb.ready_workers().len() == 2).then_some(()));
    let before = pids_by_slot(&sb);
    let master = fg.child.id() as i32;
    signal(master, Signal::SIGSTOP);
    let stopped = || crate::harness::process_state(master) == Some('T');
    sb.wait_for("the master to be stopped", SOON, || stopped().then_some(()));
    // Against a stopped master both commands time out, and say their request is withdrawn.
    for args in [
        vec!["scale", "--name", &sb.name, "4", "--timeout", "1s"],
        vec!["restart", "--name", &sb.name, "--timeout", "1s"],
    ] {
        let out = sb.run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("was withdrawn and will not be applied later"), "{stderr}");
    }
    // A command killed while it waits cannot withdraw its request: the master drops it once it has expired.
    let requests = sb.host_status_dir().join("requests");
    let mut waiting = sb.pmhost(["scale", "--name", &sb.name, "3", "--timeout", "1s"]).spawn().unwrap();
    let sent = std::time::Instant::now();
    sb.wait_for("the scale request file", SOON, || {
        let files = std::fs::read_dir(&requests)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count();
        (files > 0).then_some(())
    });
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    sb.wait_for("the request to expire", SOON, || (sent.elapsed() > Duration::from_millis(1500)).then_some(()));
    signal(master, Signal::SIGCONT);
    // A status round trip: the master has handled its pending SIGUSR2 (and the request files) by then.
    let out = sb.run(["status", "--name", &sb.name, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = parse_snapshot(&out.stdout).unwrap();
    assert_eq!(status.tasks[0].workers_wanted, 2, "a withdrawn or expired scale was applied: {status:#?}");
    assert_eq!(status.generation, 1, "{status:#?}");
    assert!(status.last_restart.is_none() && status.last_scale.is_none(), "{status:#?}");
    assert_eq!(pids_by_slot(&sb), before, "a withdrawn restart was applied");
    assert!(
        crate::harness::stderr_of(&fg).contains("dropping a control request its command gave up on"),
        "{}",
        crate::harness::stderr_of(&fg)
    );
    let mut fg = fg;
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn a_rollout_replaces_the_zygote_of_the_old_build() {
    let sb = Sandbox::new("zygoteroll");
    let plugin = start(&sb, "2", json!({}), &["--execute-usleep", "50ms"]);
    let zygotes = || crate::harness::processes_mentioning(&format!(":Zygote:{}", sb.name));
    // A build's zygote is started by its first spawn (here, during the start); a crash's replacement makes sure.
    let worker = sb.wait_for("a ready worker", SOON, || sb.ready_workers().values().next().copied());
    signal(worker, Signal::SIGKILL);
    let old = sb.wait_for("the first build's zygote", SOON, || zygotes().first().copied());
    rebuild(&plugin, 2);
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(crate::harness::ProcessWaiter::new(old).wait(SOON), "the old build's zygote outlived the rollout");
    let new = sb.wait_for("the new build's zygote", SOON, || zygotes().first().copied());
    assert_ne!(new, old);
    // The new zygote holds the new build: its staged copy, by hash.
    let sha = sb.status().unwrap()["tasks"][0]["plugin_sha256"].as_str().unwrap().to_owned();
    let maps = std::fs::read_to_string(format!("/proc/{new}/maps")).unwrap();
    assert!(maps.contains(&sha), "the new zygote does not map build {sha}:\n{maps}");
    sb.stop();
}

/// Once its start is decided, the master maps its own code a page at a time (`master::footprint`: it splits
/// its code mappings, so that a status request maps no 64 KiB windows of code), and joins them again before it
/// forks (a new build's zygote), which would otherwise copy every piece.
#[test]
fn the_master_splits_its_code_once_started_and_joins_it_before_it_forks() {
    let sb = Sandbox::new("master-split");
    let plugin = start(&sb, "2", json!({}), &["--execute-usleep", "50ms"]);
    let master = sb.master_pid();
    let mappings = || std::fs::read_to_string(format!("/proc/{master}/maps")).map_or(0, |maps| maps.lines().count());
    sb.wait_for("the master's code split", SOON, || (mappings() > 500).then_some(()));
    let out = sb.run(["status", "--name", &sb.name, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    rebuild(&plugin, 2);
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let after = mappings();
    assert!(after < 200, "the master has {after} mappings after a restart");
    assert!(sb.snapshot().unwrap().tasks[0].workers.iter().all(|w| w.generation == 2));
    sb.stop();
}
