//! `pmhost upgrade`: the master re-executes a new binary in place, keeping its pid and every worker; a binary
//! that cannot take over is refused and the same workers carry on.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{
    Marker, SOON, Sandbox, describe, fixtures, is_zombie, read_markers, receive_until, signal, task_config,
};

fn pmhost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pmhost"))
}

fn start(sb: &Sandbox, workers: &str, config: Value) {
    let config = task_config(config);
    sb.start_daemon(
        &fixtures().faulty,
        &["--workers", workers, "--execute-times", "0", "--execute-usleep", "10ms", "--task-config", &config],
    );
}

fn all_ready(sb: &Sandbox, workers: usize) -> BTreeMap<u64, i32> {
    sb.wait_for("every worker ready", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == workers))
}

fn executions(sb: &Sandbox) -> u64 {
    let status = sb.status().unwrap_or_default();
    status["tasks"][0]["workers"].as_array().map_or(0, |w| w.iter().filter_map(|w| w["executions"].as_u64()).sum())
}

/// The longest pause between two calls of one worker, among the markers from `from` to `to` (monotonic ns).
fn longest_gap(marks: &[Marker], from: u64, to: u64) -> Duration {
    let mut by_pid: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for m in marks.iter().filter(|m| m.mono_ns >= from && m.mono_ns <= to) {
        by_pid.entry(m.pid).or_default().push(m.mono_ns);
    }
    let longest = by_pid.values_mut().filter_map(|times| {
        times.sort_unstable();
        times.windows(2).map(|p| p[1] - p[0]).max()
    });
    Duration::from_nanos(longest.max().unwrap_or(0))
}

fn mono_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

fn upgrade(sb: &Sandbox, binary: &Path) -> std::process::Output {
    sb.run(["upgrade", "--name", &sb.name, "--binary", binary.to_str().unwrap(), "--timeout", "20s"])
}

#[test]
fn an_upgrade_under_load_keeps_every_worker_and_every_call_going() {
    let sb = Sandbox::new("upgrade");
    let marker = sb.path("marks");
    start(&sb, "8", json!({"marker_file": marker}));
    let before = all_ready(&sb, 8);
    let master = sb.master_pid();
    // Steady state: two seconds of calls by eight workers, every 10 ms each.
    let steady_from = mono_ns();
    sb.wait_for("two seconds of steady work", SOON, || (mono_ns() > steady_from + 2_000_000_000).then_some(()));
    let steady = longest_gap(&read_markers(&marker), steady_from, mono_ns());
    let calls_before = executions(&sb);

    let upgrade_from = mono_ns();
    let out = upgrade(&sb, &pmhost_bin());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("upgraded in place"), "{}", describe(&out));
    let upgrade_to = mono_ns();
    // Let the workers make a few more calls after it, then judge the whole window.
    sb.wait_for("calls after the upgrade", SOON, || {
        let after = read_markers(&marker).iter().filter(|m| m.mono_ns > upgrade_to + 100_000_000).count();
        (after >= 16).then_some(())
    });
    let during = longest_gap(&read_markers(&marker), upgrade_from, upgrade_to + 100_000_000);
    eprintln!(
        "upgrade took {} ms; longest gap between work calls: steady {steady:?}, during the upgrade {during:?}",
        (upgrade_to - upgrade_from) / 1_000_000
    );
    assert!(
        during <= steady + Duration::from_millis(10),
        "a gap of {during:?} during the upgrade (steady: {steady:?})"
    );
    assert_eq!(sb.master_pid(), master, "same pid");
    let status = sb.wait_for("the upgrade in the status", SOON, || {
        let s = sb.status()?;
        (s["last_upgrade"]["ok"] == true).then_some(s)
    });
    assert_eq!(status["master"]["pid"], master);
    assert_eq!(status["master"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(sb.ready_workers(), before, "every worker kept its pid and slot");
    sb.wait_for("executions keep counting", SOON, || (executions(&sb) > calls_before + 100).then_some(()));

    // The upgraded master does everything a master does: a restart, a scale, another upgrade (by signal).
    let out = sb.run(["restart", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = sb.run(["scale", "--name", &sb.name, "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let moved = all_ready(&sb, 4);
    let at = status["last_upgrade"]["at"].as_u64().unwrap();
    signal(master, Signal::SIGVTALRM);
    sb.wait_for("the second upgrade, by signal", SOON, || {
        let s = sb.status()?;
        let record = &s["last_upgrade"];
        (record["ok"] == true && record["request_id"].is_null() && record["at"].as_u64() >= Some(at)).then_some(())
    });
    assert_eq!(sb.master_pid(), master);
    assert_eq!(sb.ready_workers(), moved, "the second upgrade kept the workers too");
    let out = upgrade(&sb, &pmhost_bin());
    assert_eq!(out.status.code(), Some(0), "a third one: {}", describe(&out));
    assert_eq!(sb.ready_workers(), moved);
    sb.stop();
}

fn script(sb: &Sandbox, name: &str, body: &str) -> PathBuf {
    let path = sb.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn an_upgrade_to_a_broken_binary_is_refused_and_the_same_workers_carry_on() {
    let sb = Sandbox::new("badupgrade");
    start(&sb, "2", json!({}));
    let before = all_ready(&sb, 2);
    let master = sb.master_pid();
    let real = pmhost_bin();
    let real = real.display();
    let cases = [
        (script(&sb, "exits", "exit 1"), "exited with code 1"),
        (script(&sb, "older", "echo 'pmhost-handover 0 reads 0-0'"), "reads handover versions 0 to 0"),
        (script(&sb, "hangs", "exec sleep 60"), "did not answer"),
        // Says the right version, but cannot read the state (fails when it really starts): the master's trial
        // run refuses it before anything is replaced.
        (
            script(
                &sb,
                "fails-to-start",
                &format!("[ \"$1\" = --handover-version ] && exec {real} --handover-version\nexit 1"),
            ),
            "cannot take this master over",
        ),
        (
            script(
                &sb,
                "hangs-on-start",
                &format!("[ \"$1\" = --handover-version ] && exec {real} --handover-version\nexec sleep 60"),
            ),
            "--handover-check did not answer",
        ),
        (sb.path("absent"), "does not exist"),
    ];
    for (binary, message) in cases {
        let started = Instant::now();
        let out = upgrade(&sb, &binary);
        assert_eq!(out.status.code(), Some(6), "{}: {}", binary.display(), describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("upgrade of") && stderr.contains(message), "{}: {}", binary.display(), describe(&out));
        assert!(started.elapsed() < Duration::from_secs(20), "{}", binary.display());
        assert_eq!(sb.master_pid(), master);
        assert_eq!(sb.ready_workers(), before, "{}: the same workers", binary.display());
    }
    let status = sb.status().unwrap();
    assert_eq!(status["last_upgrade"]["ok"], false, "{status}");
    // And the master still upgrades to a good binary.
    let out = upgrade(&sb, &pmhost_bin());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(sb.ready_workers(), before);
    sb.stop();
}

#[test]
fn a_worker_killed_during_the_handover_is_reaped_and_replaced_after_it() {
    let sb = Sandbox::new("upgradekill");
    start(&sb, "3", json!({}));
    let before = all_ready(&sb, 3);
    let victim = before[&1];
    let upgrade = sb
        .pmhost(["upgrade", "--name", &sb.name, "--binary", pmhost_bin().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The master reads the request and execs within milliseconds: the SIGKILL lands around the handover (the
    // master's SIGCHLD stays pending across execve, or is handled just before it, or by the new image).
    sb.wait_for("the upgrade request", SOON, || {
        let requests = sb.status_root().join(&sb.name).join("requests");
        let pending = std::fs::read_dir(&requests).map(|d| d.count()).unwrap_or(0);
        (pending > 0 || sb.status()?["last_upgrade"].is_object()).then_some(())
    });
    signal(victim, Signal::SIGKILL);
    let out = upgrade.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let after = sb.wait_for("slot 1 refilled", SOON, || {
        let now = sb.ready_workers();
        (now.len() == 3 && now[&1] != victim).then_some(now)
    });
    assert_eq!((after[&0], after[&2]), (before[&0], before[&2]), "the other workers are untouched");
    assert!(!is_zombie(victim), "the killed worker was reaped");
    let status = sb.status().unwrap();
    let slot1 = status["tasks"][0]["workers"].as_array().unwrap().iter().find(|w| w["slot"] == 1).unwrap().clone();
    assert!(slot1["last_exit"]["reason"].as_str().unwrap_or("").contains("SIGKILL"), "{slot1}");
    sb.stop();
}

#[test]
fn systemd_sees_reloading_then_ready_from_the_same_main_pid() {
    let sb = Sandbox::new("upgradenotify");
    let socket_path = sb.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let env_file = sb.path("worker-env");
    let config = task_config(json!({"env_file": env_file}));
    let faulty = fixtures().faulty.to_str().unwrap().to_owned();
    let stderr_path = sb.path("notify.stderr");
    let mut cmd = sb.pmhost(["start", "--name", &sb.name, "--plugin", &faulty, "--workers", "2"]);
    cmd.args(["--execute-times", "0", "--task-config", &config]);
    cmd.env("NOTIFY_SOCKET", &socket_path).env("WATCHDOG_USEC", "400000");
    cmd.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&stderr_path).unwrap());
    let child = cmd.spawn().unwrap();
    let mut fg = crate::harness::Foreground { child, stderr_path };
    let mut seen = Vec::new();
    receive_until(&socket, "READY=1", &mut seen);
    let before = all_ready(&sb, 2);
    let out = upgrade(&sb, &pmhost_bin());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let reloading = receive_until(&socket, "RELOADING=1", &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    receive_until(&socket, "READY=1", &mut seen);
    // The watchdog carries over, and the process systemd watches is the one it started.
    seen.clear();
    receive_until(&socket, "WATCHDOG=1", &mut seen);
    assert_eq!(sb.master_pid(), fg.child.id() as i32);
    assert_eq!(sb.ready_workers(), before);
    // Workers started by the new image do not see the socket either.
    let victim = before[&0];
    signal(victim, Signal::SIGKILL);
    sb.wait_for("slot 0 refilled", SOON, || sb.ready_workers().get(&0).filter(|pid| **pid != victim).copied());
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env.lines().collect::<Vec<_>>(), ["-", "-", "-"], "workers inherited NOTIFY_SOCKET: {env}");
    signal(fg.child.id() as i32, Signal::SIGTERM);
    receive_until(&socket, "STOPPING=1", &mut seen);
    assert_eq!(crate::harness::wait_exit(&mut fg, SOON), 0);
}

/// The new image of an upgraded master gives back its start-up code and maps its own code a page at a time, as a
/// master does once its start is decided (`master::footprint`): it has no start of its own, and without this it
/// kept every page the handover ran resident (~3.4 MiB of pmhost's code in release against ~0.9 MiB).
#[test]
fn an_upgraded_master_splits_and_releases_its_code_again() {
    let sb = Sandbox::new("upgrade-split");
    start(&sb, "2", json!({}));
    all_ready(&sb, 2);
    let master = sb.master_pid();
    let mappings = || std::fs::read_to_string(format!("/proc/{master}/maps")).map_or(0, |maps| maps.lines().count());
    sb.wait_for("the master's code split", SOON, || (mappings() > 500).then_some(()));
    let out = upgrade(&sb, &pmhost_bin());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(sb.master_pid(), master);
    sb.wait_for("the new image's code split", SOON, || (mappings() > 500).then_some(()));
    sb.stop();
}
