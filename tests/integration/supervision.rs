//! Supervision that survives faults: each test injects one (a crash loop, a hung call, a memory leak, stray
//! child processes, orphans, a signal storm, an unwritable status directory, a stopped worker) and checks that
//! the host kept working and lost nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pmhost::status::{Snapshot, WorkerState};
use serde_json::json;

use crate::harness::{
    ProcessWaiter, SOON, Sandbox, SnapshotExt, describe, fixtures, parse_snapshot, proc_stat, processes_mentioning,
    read_markers, signal, stderr_of, task_config, wait_exit,
};

/// The pid of the worker serving `slot` (a stopping one does not).
fn slot_pid(status: &Snapshot, slot: u32) -> Option<i32> {
    status.workers().iter().find(|w| w.slot == slot && w.state != WorkerState::Stopping).map(|w| w.pid)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let fields = proc_stat(pid).unwrap();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn zombie_children_of(parent: i32) -> Vec<i32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Some(stat) = proc_stat(pid) else { continue };
        if stat[0].starts_with('Z') && stat[1] == parent.to_string() {
            zombies.push(pid);
        }
    }
    zombies
}

#[test]
fn a_crash_loop_backs_off_shows_in_status_and_costs_the_master_nothing() {
    let mut sb = Sandbox::new("crashcpu");
    let config = json!({"work": "panic"});
    let fg = sb.start_faulty(
        &config,
        [
            "--workers",
            "4",
            "--execute-times",
            "0",
            "--execute-usleep",
            "0",
            "--backoff-initial",
            "200ms",
            "--backoff-max",
            "1s",
        ],
    );
    let master = fg.child.id() as i32;
    let status = sb.wait_for("a slot in backoff", SOON, || {
        let s = sb.snapshot()?;
        (!s.tasks.first()?.backoff.is_empty()).then_some(s)
    });
    let entry = &status.tasks[0].backoff[0];
    assert!(entry.crashes >= 1, "{status:#?}");
    assert!(entry.next_attempt_in_ms <= 1000, "{status:#?}");
    assert!(entry.last_exit.as_ref().unwrap().reason.contains("panicked"), "{status:#?}");
    // Four slots crash-looping for three seconds: the master sleeps between respawns.
    let before = cpu_ticks(master);
    let until = Instant::now() + Duration::from_secs(3);
    sb.wait_for("three seconds of crash loop", Duration::from_secs(10), || (Instant::now() >= until).then_some(()));
    let used = cpu_ticks(master) - before;
    assert!(used <= 30, "the master used {used} ticks in 3 s of crash loop");
    let out = sb.run(["status", "--name", &sb.name]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("backoff after"), "{}", describe(&out));
}

#[test]
fn a_hung_call_is_killed_and_replaced_after_work_timeout() {
    let mut sb = Sandbox::new("hang");
    let marker = sb.path("marks");
    let config = json!({"work": "hang", "only_slot": 0, "marker_file": marker});
    let fg = sb.start_faulty(
        &config,
        [
            "--workers",
            "2",
            "--execute-times",
            "0",
            "--execute-usleep",
            "50ms",
            "--work-timeout",
            "1s",
            "--stop-timeout",
            "1s",
        ],
    );
    let first = sb.wait_for("slot 0's first call", SOON, || read_markers(&marker).into_iter().find(|m| m.slot == 0));
    let status = sb.wait_for("slot 0 replaced", SOON, || {
        let s = sb.snapshot()?;
        let pid = slot_pid(&s, 0)?;
        (pid != first.pid && s.workers().iter().any(|w| w.slot == 0 && w.last_exit.is_some())).then_some(s)
    });
    let replaced_after = Duration::from_nanos(
        read_markers(&marker)
            .iter()
            .filter(|m| m.slot == 0 && m.pid != first.pid)
            .map(|m| m.mono_ns)
            .min()
            .unwrap_or(u64::MAX)
            .saturating_sub(first.mono_ns),
    );
    assert!(replaced_after >= Duration::from_millis(1000), "replaced before work_timeout: {replaced_after:?}");
    // work_timeout 1 s, checked every 250 ms; the replacement starts at detection, not after the kill.
    assert!(replaced_after < Duration::from_secs(5), "replaced only after {replaced_after:?}");
    let w0 = status.worker(0).unwrap();
    assert!(w0.last_exit.as_ref().unwrap().reason.contains("work_timeout"), "{w0:#?}");
    assert!(ProcessWaiter::new(first.pid).wait(SOON), "the hung worker is still there");
    let log = stderr_of(&fg);
    let line = log.lines().find(|l| l.contains("exceeded work_timeout")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("pid={}", first.pid)) && line.contains("slot=0") && line.contains("calls_done=0"),
        "{line}"
    );
    let running_ms: u64 = line.split("running_ms=").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!(running_ms >= 1000, "{line}");
    // Slot 1 was never disturbed.
    assert!(status.workers().iter().any(|w| w.slot == 1 && w.last_exit.is_none()), "{status:#?}");
}

#[test]
fn an_idle_worker_in_a_long_pause_is_not_taken_for_hung() {
    let mut sb = Sandbox::new("idle");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let _fg = sb.start_faulty(
        &config,
        ["--workers", "1", "--execute-times", "0", "--execute-usleep", "3s", "--work-timeout", "300ms"],
    );
    let marks = sb.wait_for("two calls, a pause apart", SOON, || Some(read_markers(&marker)).filter(|m| m.len() >= 2));
    assert_eq!(marks[0].pid, marks[1].pid, "the idle worker was replaced: {marks:?}");
    assert!(sb.snapshot().unwrap().workers()[0].last_exit.is_none());
}

#[test]
fn a_worker_over_max_rss_is_retired_and_replaced() {
    let mut sb = Sandbox::new("memory");
    let config = json!({"work": "grow", "grow_mib": 16});
    let fg = sb.start_faulty(
        &config,
        [
            "--workers",
            "1",
            "--execute-times",
            "0",
            "--execute-usleep",
            "100ms",
            "--max-rss",
            "120MiB",
            "--check-interval",
            "1",
        ],
    );
    let status = sb.wait_for("the grower retired", SOON, || {
        let s = sb.snapshot()?;
        s.workers().iter().any(|w| w.last_exit.as_ref().is_some_and(|e| e.reason == "normal exit")).then_some(s)
    });
    assert_eq!(status.workers()[0].last_exit.as_ref().map(|e| e.crash), Some(false), "{status:#?}");
    let log = stderr_of(&fg);
    assert!(log.contains("over max_rss") && log.contains("rss_bytes="), "{log}");
}

#[test]
fn processes_a_plugin_spawned_end_with_their_worker() {
    let sb = Sandbox::new("helpers");
    let faulty = fixtures().faulty.to_str().unwrap();
    let token = format!("{}-helper", sb.name);
    let config = task_config(json!({"work": "spawn", "spawn": format!("sleep 1000; echo {token}")}));
    sb.start_daemon(faulty, &["--workers", "1", "--execute-times", "0", "--task-config", &config]);
    let helper = sb.wait_for("the helper", SOON, || processes_mentioning(&token).first().copied());
    // Replacing the worker (it is killed) takes its helper along.
    let worker = sb.ready_workers()[&0];
    signal(worker, Signal::SIGKILL);
    assert!(ProcessWaiter::new(helper).wait(SOON), "the helper outlived its worker");
    let second = sb.wait_for("the new worker's helper", SOON, || processes_mentioning(&token).first().copied());
    sb.stop();
    assert!(ProcessWaiter::new(second).wait(SOON), "the helper outlived the stop");
    assert!(processes_mentioning(&token).is_empty());
}

/// A plugin whose helper leaves an orphan behind that, after a moment, writes its own pid and its adopter's to
/// `done` and exits (becoming a zombie until its adopter reaps it).
fn orphan_config(done: &Path) -> String {
    let tmp = done.with_extension("tmp");
    let orphan =
        format!("(sleep 0.3; exec sh -c 'echo $$ $PPID > {0} && mv {0} {1}') & exit 0", tmp.display(), done.display());
    task_config(json!({"work": "spawn", "spawn": orphan}))
}

/// The orphan's pid (as seen from here) and its adopter's (as the orphan saw it), once it wrote them.
fn orphan(done: &Path) -> Option<(i32, i32)> {
    let text = std::fs::read_to_string(done).ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<i32>().ok());
    Some((it.next()??, it.next()??))
}

#[test]
fn the_subreaper_reaps_orphaned_grandchildren() {
    let mut sb = Sandbox::new("subreaper");
    let done = sb.path("orphan-done");
    let faulty = fixtures().faulty.to_str().unwrap();
    let config = orphan_config(&done);
    let fg = sb.start_foreground([
        "--plugin",
        faulty,
        "--workers",
        "1",
        "--execute-times",
        "0",
        "--subreaper",
        "--task-config",
        &config,
    ]);
    let master = fg.child.id() as i32;
    let (pid, adopted_by) = sb.wait_for("the orphan to finish", SOON, || orphan(&done));
    assert_eq!(adopted_by, master, "the orphan was not adopted by the master");
    // A zombie keeps its /proc entry: the entry goes only once the adopter reaped it.
    sb.wait_for("the orphan reaped", SOON, || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()));
    assert!(zombie_children_of(master).is_empty());
}

#[test]
fn as_pid_1_the_master_reaps_orphans_and_stops_on_term() {
    let sb = Sandbox::new("pid1");
    let done = sb.path("orphan-done");
    let faulty = fixtures().faulty.to_str().unwrap();
    let config = orphan_config(&done);
    let stderr = std::fs::File::create(sb.path("pid1.stderr")).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(env!("CARGO_BIN_EXE_pmhost"))
        .args(["start", "--name", &sb.name, "--plugin", faulty, "--workers", "1", "--execute-times", "0"])
        .args(["--task-config", &config])
        .env("PMHOST_PID_ROOT", sb.pid_root())
        .env("PMHOST_STATUS_ROOT", sb.status_root())
        .env("PMHOST_LOG_DIR", sb.path("log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut unshare = cmd.spawn().expect("run unshare");
    // The master is unshare's child, PID 1 of its namespace.
    let master = sb.wait_for("the master in its namespace", SOON, || {
        (sb.snapshot()?.master.pid == 1).then_some(())?;
        processes_mentioning(&format!("Master:{}", sb.name)).first().copied()
    });
    let (_, adopted_by) = sb.wait_for("the orphan to finish", SOON, || orphan(&done));
    assert_eq!(adopted_by, 1, "the orphan was not adopted by PID 1");
    // The orphan's pid is one of its namespace: judge from outside by the master's children.
    sb.wait_for("no zombie left under PID 1", SOON, || zombie_children_of(master).is_empty().then_some(()));
    let log = std::fs::read_to_string(sb.path("pid1.stderr")).unwrap();
    assert!(log.contains("running as PID 1"), "{log}");
    // Control commands run inside the container (as a probe would) find the master as PID 1.
    let inside = |args: &[&str]| {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &master.to_string(), "-p", "-m", "--"]).arg(env!("CARGO_BIN_EXE_pmhost")).args(args);
        cmd.env("PMHOST_PID_ROOT", sb.pid_root()).env("PMHOST_STATUS_ROOT", sb.status_root());
        cmd.output().unwrap()
    };
    let out = inside(&["status", "--name", &sb.name, "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // From outside the namespace, pid 1 is another process: never signalled.
    let out = sb.run(["status", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold it"), "{}", describe(&out));
    // The runtime stops a container with SIGTERM to its PID 1. (A `pmhost stop` run inside would be killed by the
    // kernel with everything else in the namespace once PID 1 exits.)
    signal(master, Signal::SIGTERM);
    let waiter = ProcessWaiter::new(unshare.id() as i32);
    assert!(waiter.wait(SOON), "PID 1 did not stop on SIGTERM");
    assert_eq!(unshare.wait().unwrap().code(), Some(0));
}

#[test]
fn a_signal_storm_leaves_the_master_responsive() {
    let sb = Sandbox::new("storm");
    let hello = fixtures().hello.to_str().unwrap();
    sb.start_daemon(hello, &["--workers", "2", "--execute-times", "0"]);
    let master = sb.master_pid();
    for i in 0..3000 {
        let sig = if i % 100 == 0 { Signal::SIGTTIN } else { Signal::SIGUSR1 };
        signal(master, sig);
    }
    let out = sb.run(["status", "--name", &sb.name, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = parse_snapshot(&out.stdout).unwrap();
    let wanted = status.tasks[0].workers_wanted;
    assert!((3..=32).contains(&wanted), "TTIN in the storm: {wanted} workers wanted");
    sb.wait_for("every wanted worker ready", SOON, || (sb.ready_workers().len() == wanted as usize).then_some(()));
    sb.stop();
    assert!(sb.live_processes().is_empty());
}

#[test]
fn an_unwritable_status_file_does_not_stop_supervision() {
    let mut sb = Sandbox::new("nostatus");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let fg = sb.start_faulty(&config, ["--workers", "1", "--execute-times", "0", "--execute-usleep", "20ms"]);
    let master = fg.child.id() as i32;
    let worker = sb.wait_for("a ready worker", SOON, || sb.ready_workers().get(&0).copied());
    // A directory where the master's temp file goes: every status write fails from now on.
    let blocker = sb.host_status_dir().join(format!(".status.json.tmp.{master}"));
    std::fs::create_dir(&blocker).unwrap();
    signal(worker, Signal::SIGKILL);
    // Supervision goes on: a new worker writes markers, though the status file is stale.
    sb.wait_for("a replacement at work", SOON, || read_markers(&marker).iter().any(|m| m.pid != worker).then_some(()));
    sb.wait_for("the failure logged", SOON, || stderr_of(&fg).contains("status stays stale").then_some(()));
    std::fs::remove_dir(&blocker).unwrap();
    let out = sb.run(["status", "--name", &sb.name, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = parse_snapshot(&out.stdout).unwrap();
    assert_ne!(slot_pid(&status, 0), Some(worker), "{status:#?}");
}

#[test]
fn a_stopped_worker_does_not_block_a_stop() {
    let mut sb = Sandbox::new("sigstop");
    let hello = fixtures().hello.to_str().unwrap();
    let mut fg =
        sb.start_foreground(["--plugin", hello, "--workers", "2", "--execute-times", "0", "--stop-timeout", "1s"]);
    let workers = sb.wait_for("2 ready workers", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 2));
    signal(workers[&0], Signal::SIGSTOP);
    signal(fg.child.id() as i32, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut fg, SOON), 7, "the stopped worker had to be killed");
    for pid in workers.values() {
        assert!(ProcessWaiter::new(*pid).wait(SOON), "worker {pid} is still there");
    }
}

#[test]
fn a_sigstopped_worker_shows_as_stopped_and_is_not_serving() {
    let sb = Sandbox::new("stoppedstate");
    let hello = fixtures().hello.to_str().unwrap();
    sb.start_daemon(hello, &["--workers", "2", "--execute-times", "0"]);
    let pid = sb.ready_workers()[&0];
    // The kernel stops a process when it next runs, a moment after the signal was sent.
    let state = crate::harness::process_state;
    signal(pid, Signal::SIGSTOP);
    sb.wait_for("the worker to be stopped", SOON, || (state(pid) == Some('T')).then_some(()));
    let out = sb.run(["status", "--name", &sb.name, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = parse_snapshot(&out.stdout).unwrap();
    let w0 = status.worker(0).unwrap();
    assert_eq!(w0.state, WorkerState::Stopped, "{status:#?}");
    let check = sb.run(["status", "--name", &sb.name, "--check"]);
    assert_eq!(check.status.code(), Some(5), "a stopped worker serves nothing: {}", describe(&check));
    signal(pid, Signal::SIGCONT);
    sb.wait_for("the worker to run again", SOON, || (state(pid) != Some('T')).then_some(()));
    let check = sb.run(["status", "--name", &sb.name, "--check"]);
    assert_eq!(check.status.code(), Some(0), "continued, it serves again: {}", describe(&check));
    sb.stop();
}

#[test]
fn a_worker_stopped_between_calls_is_replaced_after_work_timeout() {
    let mut sb = Sandbox::new("stoppedidle");
    let hello = fixtures().hello.to_str().unwrap();
    let args = ["--plugin", hello, "--workers", "1", "--execute-times", "0", "--execute-usleep", "500ms"];
    let _fg = sb.start_foreground(args.into_iter().chain(["--work-timeout", "1s", "--stop-timeout", "1s"]));
    let pid = sb.wait_for("a ready worker", SOON, || sb.ready_workers().get(&0).copied());
    signal(pid, Signal::SIGSTOP);
    let status = sb.wait_for("slot 0 replaced", SOON, || {
        let s = sb.snapshot()?;
        let w0 = s.worker(0)?;
        (w0.pid != pid && w0.last_exit.is_some()).then_some(s)
    });
    let w0 = status.worker(0).unwrap();
    let reason = &w0.last_exit.as_ref().unwrap().reason;
    assert!(reason.contains("stopped") && reason.contains("work_timeout"), "{w0:#?}");
    assert!(ProcessWaiter::new(pid).wait(SOON), "the stopped worker is still there");
}

#[test]
fn resource_limits_apply_to_workers() {
    let sb = Sandbox::new("rlimit");
    let hello = fixtures().hello.to_str().unwrap();
    sb.start_daemon(
        hello,
        &[
            "--workers",
            "1",
            "--execute-times",
            "0",
            "--rlimit-nofile",
            "77",
            "--rlimit-core",
            "0",
            "--rlimit-as",
            "8GiB",
        ],
    );
    let worker = sb.ready_workers()[&0];
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    let line = |name: &str| {
        limits.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert!(line("Max open files").ends_with("77 77 files"), "{limits}");
    assert!(line("Max core file size").ends_with("0 0 bytes"), "{limits}");
    assert!(line("Max address space").ends_with("8589934592 8589934592 bytes"), "{limits}");
    sb.stop();
}

#[test]
fn a_resource_limit_that_cannot_be_set_is_named_with_its_value_and_the_hard_limit() {
    let sb = Sandbox::new("rlimitbad");
    let hello = fixtures().hello.to_str().unwrap();
    let out =
        sb.run(["start", "-d", "--name", &sb.name, "--plugin", hello, "--workers", "1", "--rlimit-nofile", "99999999"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot set rlimit_nofile to 99999999: EPERM") && stderr.contains("the hard limit is "),
        "{stderr}"
    );
    sb.wait_for("the failed master to be gone", SOON, || sb.live_processes().is_empty().then_some(()));
}

#[test]
fn limit_jitter_spreads_retirement() {
    let mut sb = Sandbox::new("jitter");
    let marker = sb.path("marks");
    let config = json!({"marker_file": marker});
    let _fg = sb.start_faulty(
        &config,
        ["--workers", "2", "--execute-times", "10", "--execute-usleep", "0", "--limit-jitter", "1"],
    );
    let lives = sb.wait_for("ten retired workers", SOON, || {
        let marks = read_markers(&marker);
        // pid -> (first call's time, calls), so workers are ordered by age, not by pid.
        let mut calls: std::collections::BTreeMap<i32, (u64, u64)> = Default::default();
        for m in &marks {
            let c = calls.entry(m.pid).or_insert((m.mono_ns, 0));
            c.1 = c.1.max(m.call);
        }
        (calls.len() >= 12).then_some(calls)
    });
    // The newest workers may still be running: judge the ten oldest.
    let mut by_age: Vec<(u64, u64)> = lives.into_values().collect();
    by_age.sort();
    let retired: Vec<u64> = by_age.iter().take(10).map(|(_, calls)| *calls).collect();
    assert!(retired.iter().all(|c| (10..=20).contains(c)), "{retired:?}");
    let distinct: std::collections::BTreeSet<_> = retired.iter().collect();
    assert!(distinct.len() >= 2, "no spread: {retired:?}");
}

#[test]
fn backoff_starts_afresh_after_a_stable_run() {
    let mut sb = Sandbox::new("backoffreset");
    // Each worker runs about half a second (5 calls, 100 ms apart), then panics: longer than backoff_reset.
    let config = json!({"work": "panic", "from_call": 5});
    let fg = sb.start_faulty(
        &config,
        ["--workers", "1", "--execute-times", "0", "--execute-usleep", "100ms", "--backoff-reset", "200ms"],
    );
    // Each crash is the first of a fresh count, so each is replaced at once, never after a backoff.
    let lines = sb.wait_for("three respawns", SOON, || {
        let lines: Vec<String> = stderr_of(&fg)
            .lines()
            .filter(|l| l.contains("respawn at once") || l.contains("respawn after backoff"))
            .map(str::to_owned)
            .collect();
        (lines.len() >= 3).then_some(lines)
    });
    assert!(lines.iter().all(|l| l.contains("respawn at once") && l.contains("crashes=1")), "{lines:#?}");
}

#[test]
fn the_first_kill_of_a_healthy_worker_is_replaced_at_once_and_a_second_backs_off() {
    let mut sb = Sandbox::new("firstkill");
    // Default backoff settings: the first crash of a healthy slot is no reason to wait.
    let fg = sb.start_faulty(&json!({}), ["--workers", "1", "--execute-times", "0", "--execute-usleep", "50ms"]);
    let first = sb.wait_for("a ready worker", SOON, || sb.ready_workers().get(&0).copied());
    signal(first, Signal::SIGKILL);
    let second = sb.wait_for("the replacement", SOON, || sb.ready_workers().get(&0).copied().filter(|p| *p != first));
    let log = stderr_of(&fg);
    assert!(log.contains("respawn at once") && log.contains("crashes=1"), "{log}");
    assert!(!log.contains("respawn after backoff"), "{log}");
    // A second crash in a row (the replacement lived well under backoff_reset) waits the initial 100 ms.
    signal(second, Signal::SIGKILL);
    sb.wait_for("the third worker", SOON, || sb.ready_workers().get(&0).copied().filter(|p| *p != second));
    let log = stderr_of(&fg);
    assert!(log.contains("respawn after backoff") && log.contains("crashes=2 delay_ms=100"), "{log}");
}
