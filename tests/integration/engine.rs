//! The engine: workers run with the requested limits, are replaced when they exit or crash, stop gracefully,
//! and never outlive their master.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{
    Marker, ProcessWaiter, SOON, Sandbox, SnapshotExt, cmdline, fixtures, parse_snapshot, read_markers, signal,
    stderr_of, task_config, wait_exit,
};

fn by_pid(markers: &[Marker]) -> BTreeMap<i32, Vec<Marker>> {
    let mut out: BTreeMap<i32, Vec<Marker>> = BTreeMap::new();
    for m in markers {
        out.entry(m.pid).or_default().push(m.clone());
    }
    out
}

#[test]
fn runs_the_requested_workers_under_their_titles_and_logs_plugin_lines() {
    let f = fixtures();
    let mut sb = Sandbox::new("hello");
    let plugin = f.hello.to_str().unwrap();
    let mut fg = sb.start_foreground(["--plugin", plugin, "--workers", "3", "--execute-times", "0"]);
    let workers = sb.wait_for("3 ready workers", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 3));
    let master_pid = fg.child.id() as i32;
    assert_eq!(cmdline(master_pid), format!("process_m:Master:{}", sb.name));
    for pid in workers.values() {
        assert_eq!(cmdline(*pid), format!("process_m:Worker:{}", sb.name));
    }
    // Plugin `tracing` lines reach the host's log with the worker's slot and pid.
    let line = sb.wait_for("a plugin log line", SOON, || {
        stderr_of(&fg).lines().find(|l| l.contains("hello from slot") && l.contains("pid=")).map(str::to_owned)
    });
    assert!(line.starts_with("[Info][process_m:Worker:"), "{line}");
    assert!(line.contains("slot="), "{line}");
    signal(master_pid, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut fg, SOON), 0);
    for pid in workers.values() {
        assert!(ProcessWaiter::new(*pid).wait(SOON), "worker {pid} outlived the master");
    }
}

#[test]
fn execute_times_retires_each_worker_after_that_many_calls() {
    let mut sb = Sandbox::new("times");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "3", "--execute-usleep", "10ms"]);
    let markers = sb.wait_for("three workers' worth of calls", SOON, || {
        let m = read_markers(&marker);
        (by_pid(&m).len() >= 4).then_some(m)
    });
    let groups = by_pid(&markers);
    // Every worker but the newest has finished: exactly calls 1, 2, 3.
    let finished: Vec<_> = groups.values().filter(|calls| calls.len() == 3 || calls.len() > 3).collect();
    assert!(finished.len() >= 3, "{groups:?}");
    let mut by_age: Vec<&Vec<Marker>> = groups.values().collect();
    by_age.sort_by_key(|calls| calls[0].mono_ns);
    for calls in by_age.iter().take(by_age.len() - 1) {
        let numbers: Vec<u64> = calls.iter().map(|m| m.call).collect();
        assert_eq!(numbers, vec![1, 2, 3], "{groups:?}");
    }
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn execute_usleep_paces_the_calls() {
    let mut sb = Sandbox::new("usleep");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "0", "--execute-usleep", "200000"]);
    let markers = sb.wait_for("5 calls", SOON, || Some(read_markers(&marker)).filter(|m| m.len() >= 5));
    for pair in markers.windows(2) {
        let gap = Duration::from_nanos(pair[1].mono_ns - pair[0].mono_ns);
        assert!(gap >= Duration::from_millis(195), "calls only {gap:?} apart: {markers:?}");
    }
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn execute_usleep_zero_runs_calls_back_to_back() {
    let mut sb = Sandbox::new("nosleep");
    let mut fg = sb.start_faulty(&json!({}), ["--workers", "1", "--execute-times", "0", "--execute-usleep", "0"]);
    // Empty calls with no pause: a hundred thousand take milliseconds; with even a 1 ms sleep per call they would
    // take longer than the deadline.
    let worker = sb.wait_for("100000 calls", SOON, || {
        let out = sb.pmhost(["status", "--name", &sb.name, "--json"]).output().ok()?;
        let status = parse_snapshot(&out.stdout)?;
        let w = status.workers().first()?;
        (w.executions >= 100_000).then_some(w.pid)
    });
    // A worker that never sleeps gives up the CPU voluntarily only when it must.
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let voluntary: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(voluntary < 1000, "{voluntary} voluntary context switches: the loop sleeps");
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn limit_seconds_retires_workers_after_their_lifetime() {
    let mut sb = Sandbox::new("lifetime");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let mut fg = sb.start_faulty(
        &config,
        ["--workers", "1", "--execute-times", "0", "--execute-usleep", "100ms", "--limit-seconds", "1"],
    );
    let markers = sb.wait_for("a second worker", SOON, || {
        let m = read_markers(&marker);
        (by_pid(&m).len() >= 2).then_some(m)
    });
    let groups = by_pid(&markers);
    let first = &groups[&markers[0].pid];
    let span = Duration::from_nanos(first.last().unwrap().mono_ns - first[0].mono_ns);
    // It lived about a second: not retired early (9 pauses of 100 ms at least), not kept for long.
    assert!(span >= Duration::from_millis(850), "first worker retired after {span:?}");
    assert!(span < Duration::from_secs(10), "first worker kept for {span:?}");
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn a_killed_worker_is_replaced_at_once() {
    let f = fixtures();
    let mut sb = Sandbox::new("respawn");
    let plugin = f.hello.to_str().unwrap();
    // The check tick is five minutes: a replacement within the deadline did not wait for it.
    let mut fg = sb.start_foreground(["--plugin", plugin, "--workers", "2", "--execute-times", "0"]);
    let before = sb.wait_for("2 ready workers", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 2));
    let victim = before[&0];
    signal(victim, Signal::SIGKILL);
    let after =
        sb.wait_for("slot 0 refilled", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 2 && w[&0] != victim));
    assert_eq!(after[&1], before[&1], "the other worker was left alone");
    let status = sb.snapshot().unwrap();
    let slot0 = status.worker(0).unwrap();
    assert_eq!(slot0.last_exit.as_ref().and_then(|e| e.signal.as_deref()), Some("SIGKILL"), "{slot0:#?}");
    assert_eq!(slot0.restarts, 1, "{slot0:#?}");
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn a_crash_looping_plugin_backs_off() {
    let mut sb = Sandbox::new("crashloop");
    let config = json!({"work": "panic"});
    let started = Instant::now();
    let mut fg = sb.start_faulty(
        &config,
        ["--workers", "1", "--execute-times", "0", "--execute-usleep", "0", "--backoff-initial", "100ms"],
    );
    // The first crash is replaced at once, then the backoff is 100, 200, 400, 800 ms: the sixth worker cannot
    // start before 1.5 s have passed, nor crash before. (Read from the slot's backoff record: a worker that
    // crashes within milliseconds may never be seen alive in the status file, which follows workers' changes at
    // a pace.)
    let crashes = sb.wait_for("6 crashes", SOON, || {
        let crashes = sb.snapshot()?.tasks.first()?.backoff.first()?.crashes;
        (crashes >= 6).then_some(crashes)
    });
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "{crashes} crashes in {elapsed:?}: no backoff");
    let log = stderr_of(&fg);
    assert!(log.contains("plugin panicked in work: work exploded"), "{log}");
    assert!(log.contains("respawn after backoff"), "{log}");
    assert!(!log.contains("Attempted to panic across the ffi boundary"), "{log}");
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn graceful_stop_finishes_the_call_in_flight_and_runs_shutdown() {
    let mut sb = Sandbox::new("graceful");
    let marker = sb.path("marks");
    let shutdown = sb.path("shutdown");
    let config = json!({"marker_file": marker, "shutdown_file": shutdown, "work_ms": 1500});
    let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "0"]);
    // The marker is written at the start of the call; the call then takes 1.5 s.
    let first = sb.wait_for("a call in flight", SOON, || read_markers(&marker).first().cloned());
    assert_eq!(fg.terminate(), 0);
    let lines = std::fs::read_to_string(&shutdown).unwrap_or_default();
    assert_eq!(lines.trim(), format!("shutdown {} 1", first.pid), "shutdown ran after the call completed");
    let log = stderr_of(&fg);
    assert!(log.contains("worker exited: normal exit"), "{log}");
}

#[test]
fn a_stop_during_a_long_pause_is_prompt() {
    let mut sb = Sandbox::new("longpause");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let mut fg = sb.start_faulty(&config, ["--workers", "2", "--execute-times", "0", "--execute-usleep", "120s"]);
    sb.wait_for("both workers in their pause", SOON, || (read_markers(&marker).len() >= 2).then_some(()));
    let asked = Instant::now();
    assert_eq!(fg.terminate(), 0);
    assert!(asked.elapsed() < Duration::from_secs(5), "stop waited for the pause: {:?}", asked.elapsed());
}

#[test]
fn a_second_stop_request_stops_at_once() {
    let mut sb = Sandbox::new("secondstop");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker, "work": "hang"});
    let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "0", "--stop-timeout", "300s"]);
    let hung = sb.wait_for("a hung call", SOON, || read_markers(&marker).first().cloned());
    let master = fg.child.id() as i32;
    signal(master, Signal::SIGTERM);
    sb.wait_for("the graceful stop to begin", SOON, || stderr_of(&fg).contains("graceful stop").then_some(()));
    signal(master, Signal::SIGINT);
    assert_eq!(wait_exit(&mut fg, SOON), 7, "a stop that killed a worker exits 7");
    assert!(ProcessWaiter::new(hung.pid).wait(SOON));
    assert!(stderr_of(&fg).contains("second stop request"), "{}", stderr_of(&fg));
}

#[test]
fn stragglers_are_killed_after_the_stop_timeout() {
    let mut sb = Sandbox::new("straggler");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker, "work": "hang"});
    let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "0", "--stop-timeout", "1s"]);
    let hung = sb.wait_for("a hung call", SOON, || read_markers(&marker).first().cloned());
    signal(fg.child.id() as i32, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut fg, SOON), 7, "a stop that killed a worker exits 7");
    assert!(ProcessWaiter::new(hung.pid).wait(SOON), "hung worker survived");
    assert!(stderr_of(&fg).contains("stop timeout reached"), "{}", stderr_of(&fg));
    // The exit line names the signal plainly (not as a Rust `Option`).
    let stderr = stderr_of(&fg);
    let line =
        stderr.lines().find(|l| l.contains("worker ended: killed by SIGKILL")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains(" signal=SIGKILL") && !line.contains("Some("), "{line}");
}

#[test]
fn workers_end_when_the_master_is_killed() {
    let f = fixtures();
    let mut sb = Sandbox::new("orphans");
    let plugin = f.hello.to_str().unwrap();
    let mut fg = sb.start_foreground(["--plugin", plugin, "--workers", "3", "--execute-times", "0"]);
    let workers = sb.wait_for("3 ready workers", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 3));
    fg.child.kill().unwrap();
    let _ = fg.child.wait();
    // Idle workers end at once; the README promises at most a second for a call in flight.
    for pid in workers.values() {
        assert!(ProcessWaiter::new(*pid).wait(Duration::from_secs(5)), "worker {pid} survived its master");
    }
}

#[test]
fn hung_orphans_end_too() {
    let mut sb = Sandbox::new("hungorphan");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker, "work": "hang"});
    let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "0"]);
    let hung = sb.wait_for("a hung call", SOON, || read_markers(&marker).first().cloned());
    fg.child.kill().unwrap();
    let _ = fg.child.wait();
    assert!(ProcessWaiter::new(hung.pid).wait(Duration::from_secs(5)), "a hung worker outlived the 1 s grace");
}

#[test]
fn overwriting_the_plugin_file_does_not_disturb_running_workers() {
    let f = fixtures();
    let mut sb = Sandbox::new("overwrite");
    let marker = sb.path("marks");
    let copy = sb.path("libjob.so");
    std::fs::copy(&f.faulty, &copy).unwrap();
    let config = task_config(json!({"marker_file": marker}));
    let mut fg = sb.start_foreground([
        "--plugin",
        copy.to_str().unwrap(),
        "--workers",
        "2",
        "--execute-times",
        "0",
        "--execute-usleep",
        "20ms",
        "--task-config",
        &config,
    ]);
    let workers = sb.wait_for("2 ready workers", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 2));
    // Overwrite in place (same inode), as a careless deploy or a linker would: a process that mapped this very
    // file would die of SIGBUS.
    let other = std::fs::read(&f.hello).unwrap();
    std::fs::write(&copy, &other).unwrap();
    let seen = read_markers(&marker).len();
    sb.wait_for("50 more calls", SOON, || (read_markers(&marker).len() >= seen + 50).then_some(()));
    assert_eq!(sb.ready_workers(), workers, "workers were replaced");
    let status = sb.snapshot().unwrap();
    for w in &status.tasks[0].workers {
        assert!(w.last_exit.is_none(), "a worker ended: {w:#?}");
    }
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn batch_mode_exits_when_the_workers_are_done() {
    let mut sb = Sandbox::new("batch");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let mut fg = sb.start_faulty(
        &config,
        ["--workers", "2", "--execute-times", "2", "--execute-usleep", "10ms", "--check-interval", "0"],
    );
    assert_eq!(wait_exit(&mut fg, SOON), 0, "{}", stderr_of(&fg));
    let markers = read_markers(&marker);
    assert_eq!(markers.len(), 4, "{markers:?}");
    assert_eq!(by_pid(&markers).len(), 2, "no worker was respawned");
}

#[test]
fn batch_mode_fails_when_workers_crashed_saying_how_many_and_why() {
    for (label, config, expected) in [
        ("batchpanic", json!({"work": "panic"}), "batch mode: 3 of 3 workers failed: "),
        ("batchsegv", json!({"work": "segfault", "only_slot": 1}), "batch mode: 1 of 3 workers failed: "),
        ("batchexit", json!({"work": "exit", "exit_code": 9, "only_slot": 2}), "(exit code 9)"),
    ] {
        let mut sb = Sandbox::new(label);
        let mut fg = sb.start_faulty(&config, ["--workers", "3", "--execute-times", "2", "--check-interval", "0"]);
        assert_eq!(wait_exit(&mut fg, SOON), 8, "{label}: {}", stderr_of(&fg));
        let stderr = stderr_of(&fg);
        let last = stderr.lines().rev().find(|l| l.starts_with("pmhost: error:")).unwrap_or_default();
        assert!(last.contains(expected), "{label}: {stderr}");
    }
    let mut sb = Sandbox::new("batchsegv2");
    let mut fg = sb.start_faulty(&json!({"work": "segfault"}), ["--workers", "2", "--check-interval", "-1"]);
    assert_eq!(wait_exit(&mut fg, SOON), 8, "{}", stderr_of(&fg));
    assert!(stderr_of(&fg).contains("killed by SIGSEGV"), "{}", stderr_of(&fg));
}

#[test]
fn outcome_retire_ends_the_worker_cleanly_and_it_is_replaced() {
    let mut sb = Sandbox::new("retire");
    let shutdown = sb.path("shutdown");
    let config = json!({"work": "retire", "from_call": 3, "shutdown_file": shutdown});
    let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "0", "--execute-usleep", "10ms"]);
    let status = sb.wait_for("a retired worker replaced", SOON, || {
        let s = sb.snapshot()?;
        (s.workers().first()?.last_exit.as_ref()?.reason == "normal exit").then_some(s)
    });
    let last = status.workers()[0].last_exit.as_ref();
    assert_eq!(last.map(|e| e.crash), Some(false), "{status:#?}");
    let lines = std::fs::read_to_string(&shutdown).unwrap();
    assert!(lines.lines().next().unwrap().ends_with(" 3"), "retired after its third call, shutdown ran: {lines}");
    assert_eq!(fg.terminate(), 0);
}

#[test]
fn every_kind_of_crash_is_logged_with_its_code_or_signal() {
    for (label, config, expected) in [
        ("exitcode", json!({"work": "exit", "exit_code": 42}), "code=42"),
        ("segfault", json!({"work": "segfault"}), "signal=SIGSEGV"),
        ("abort", json!({"work": "abort"}), "signal=SIGABRT"),
        ("shutdownpanic", json!({"shutdown_panics": true}), "code=6"),
    ] {
        let mut sb = Sandbox::new(label);
        // execute_times 1: every worker runs `shutdown` after its call (where shutdown_panics strikes).
        let mut fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "1", "--execute-usleep", "0"]);
        let line = sb.wait_for("a crash line", SOON, || {
            stderr_of(&fg).lines().find(|l| l.contains("worker crashed")).map(str::to_owned)
        });
        assert!(line.contains(expected) && line.contains("slot=0") && line.contains("pid="), "{label}: {line}");
        if label == "shutdownpanic" {
            assert!(stderr_of(&fg).contains("plugin panicked in shutdown: shutdown exploded"), "{}", stderr_of(&fg));
        }
        assert_eq!(fg.terminate(), 0);
    }
}

/// With every worker making one call and no pause, slots turn over all the time. A start is decided by each
/// slot's first worker: it completes once those were ready. (It used to wait for a moment with no worker of any
/// slot starting, which sixteen such slots never leave: `start -d` waited forever.)
#[test]
fn a_start_completes_while_its_slots_turn_over_at_full_speed() {
    let sb = Sandbox::new("churnstart");
    sb.start_daemon(&fixtures().hello, &["--workers", "16", "--execute-times", "1", "--execute-usleep", "0"]);
    let status = sb.wait_for("a status", SOON, || sb.snapshot());
    assert_eq!(status.state, pmhost::status::HostState::Running);
    let out = sb.run(["stop", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::harness::describe(&out));
}
