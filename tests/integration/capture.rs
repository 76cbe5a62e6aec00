//! Worker output capture: what workers and their children write to stdout and stderr reaches the run log, line
//! by line and tagged, with nothing lost at exit or at a kill, long lines split, binary escaped, and a flood that
//! never stalls supervision.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{ProcessWaiter, SOON, Sandbox, describe, fixtures, read_markers, signal, task_config};

/// Every run log line written so far.
fn run_log(sb: &Sandbox) -> String {
    sb.log_text("run.")
}

fn wait_for_line(sb: &Sandbox, what: &str, mut matches: impl FnMut(&str) -> bool) -> String {
    sb.wait_for(what, SOON, || run_log(sb).lines().find(|line| matches(line)).map(str::to_owned))
}

#[test]
fn worker_output_reaches_the_run_log_line_by_line_and_tagged() {
    let sb = Sandbox::new("capture");
    let child = sb.path("child-done");
    let config = task_config(json!({
        "println": "printed {call}",
        "raw_stderr": "from C {call}\n",
        "raw_stdout": "no newline",
        "work": "spawn",
        "spawn": format!("echo from the child; touch {}", child.display()),
    }));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "1", "--execute-times", "2", "--execute-usleep", "20ms", "--task-config", &config],
    );
    let printed = wait_for_line(&sb, "a printed line", |l| l.contains("printed 1 "));
    assert!(printed.starts_with("[Info][process_m:Worker:"), "{printed}");
    for tag in ["stream=stdout", &format!("task={}", sb.name), "slot=0", "generation=1", "pid="] {
        assert!(printed.contains(tag), "missing {tag}: {printed}");
    }
    let from_c = wait_for_line(&sb, "a stderr line", |l| l.contains("from C 1"));
    assert!(from_c.starts_with("[Warn]") && from_c.contains("stream=stderr"), "{from_c}");
    wait_for_line(&sb, "the child's output", |l| l.contains("from the child") && l.contains("stream=stdout"));
    // The first call's `no newline` runs into what comes next; the last one stands alone when the worker's
    // stream ends.
    wait_for_line(&sb, "the final partial line", |l| l.contains("]: no newline stream=stdout"));
    // Nothing of it went to the process log (lifecycle only).
    let process = sb.log_text("process.");
    assert!(!process.contains("printed 1"), "captured output is in the process log");
    sb.stop();
}

#[test]
fn consecutive_workers_of_a_slot_each_keep_their_own_lines() {
    // One-call workers in one slot, one after the other. Each writes a line and a line without its newline;
    // every line logged must carry the pid of the worker that wrote it, and the unfinished one must stand
    // alone rather than run into the next worker's first line.
    let sb = Sandbox::new("reuse");
    let config = task_config(
        json!({"println": "line of {pid}", "raw_stdout": "unfinished of {pid}", "raw_stderr": "err of {pid}\n"}),
    );
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "1", "--execute-times", "1", "--execute-usleep", "0", "--task-config", &config],
    );
    let written_by = |line: &str, what: &str| -> Option<(String, String)> {
        let text = line.split("]: ").nth(1)?;
        let pid = text.strip_prefix(what)?.split_whitespace().next()?.to_owned();
        let tag = line.split_whitespace().find_map(|field| field.strip_prefix("pid="))?.to_owned();
        Some((pid, tag))
    };
    let log = sb.wait_for("40 workers' unfinished lines", SOON, || {
        let log = run_log(&sb);
        (log.lines().filter(|l| written_by(l, "unfinished of ").is_some()).count() >= 40).then_some(log)
    });
    sb.stop();
    let mut checked = 0;
    for line in log.lines().filter(|l| l.contains("stream=")) {
        let found = ["line of ", "unfinished of ", "err of "].iter().find_map(|what| written_by(line, what));
        let (pid, tag) = found.unwrap_or_else(|| panic!("a line that is not one a worker wrote whole: {line}"));
        assert_eq!(pid, tag, "a line logged under another worker's pid: {line}");
        checked += 1;
    }
    assert!(checked >= 120, "only {checked} lines checked");
}

/// A helper that left its worker's process group (and its mark, so no look for orphans ends it) writes after
/// the worker was reaped and the slot refilled: its lines are its worker's, never the slot's next worker's.
#[test]
fn a_helper_writing_after_its_worker_was_reaped_is_logged_under_that_worker() {
    let sb = Sandbox::new("capstray");
    let helper = format!("exec setsid env -u {} sh -c 'sleep 0.3; echo helper of $PPID'", "PMHOST_WORKER");
    let config = task_config(json!({"work": "spawn", "spawn": helper}));
    let faulty = fixtures().faulty.to_str().unwrap();
    let args = ["--workers", "1", "--execute-times", "2", "--execute-usleep", "100ms", "--task-config", &config];
    sb.start_daemon(faulty, &args);
    let lines = || -> Vec<(String, String)> {
        run_log(&sb)
            .lines()
            .filter_map(|line| {
                let worker = line.split("helper of ").nth(1)?.split_whitespace().next()?.to_owned();
                let tag = line.split_whitespace().find_map(|field| field.strip_prefix("pid="))?.to_owned();
                Some((worker, tag))
            })
            .collect()
    };
    let lines = sb.wait_for("5 helpers' lines", SOON, || Some(lines()).filter(|l| l.len() >= 5));
    sb.stop();
    for (worker, tag) in lines {
        assert_eq!(worker, tag, "a helper of worker {worker} logged under pid {tag}");
    }
}

/// A worker that makes its stdout non-blocking changes its own open file only: the slot's next worker finds
/// its stdout blocking (non-blocking, a full pipe would fail its writes).
#[test]
fn a_slots_next_worker_finds_its_stdout_as_a_new_worker_would() {
    let sb = Sandbox::new("capflags");
    let config = task_config(json!({"nonblocking_stdout": true}));
    let faulty = fixtures().faulty.to_str().unwrap();
    let args = ["--workers", "1", "--execute-times", "1", "--execute-usleep", "0", "--task-config", &config];
    sb.start_daemon(faulty, &args);
    let log = sb.wait_for("20 workers' lines", SOON, || {
        let log = run_log(&sb);
        (log.matches("stdout was ").count() >= 20).then_some(log)
    });
    sb.stop();
    assert!(!log.contains("stdout was non-blocking"), "{log}");
}

#[test]
fn what_a_worker_wrote_right_before_kill_9_is_kept() {
    let sb = Sandbox::new("lastwords");
    let marker = sb.path("marks");
    let config = task_config(json!({"raw_stdout": "last words\n", "work": "hang", "marker_file": marker}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(faulty, &["--workers", "1", "--execute-times", "0", "--task-config", &config]);
    let hung = sb.wait_for("the worker in its call", SOON, || read_markers(&marker).first().cloned());
    signal(hung.pid, Signal::SIGKILL);
    assert!(ProcessWaiter::new(hung.pid).wait(SOON));
    let line =
        wait_for_line(&sb, "the last words", |l| l.contains("last words") && l.contains(&format!("pid={}", hung.pid)));
    assert!(line.contains("stream=stdout"), "{line}");
    // The first crash of the slot is replaced at once, and the replacement hangs in its call too: an immediate
    // stop ends it without waiting for the stop timeout.
    let out = sb.run(["stop", "--now", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}

#[test]
fn long_lines_are_split_and_control_bytes_escaped() {
    let sb = Sandbox::new("longline");
    let config = task_config(json!({"long_line": 1 << 20, "raw_stderr": "bell\u{7} esc\u{1b}[31m\n"}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "1", "--execute-times", "1", "--execute-usleep", "1s", "--task-config", &config],
    );
    let escaped = wait_for_line(&sb, "the escaped line", |l| l.contains("bell"));
    assert!(escaped.contains("bell\\x07 esc\\x1b[31m"), "{escaped}");
    let pieces = sb.wait_for("the 1 MiB line in 16 KiB pieces", SOON, || {
        let log = run_log(&sb);
        let pieces: Vec<usize> = log
            .lines()
            .filter(|l| l.contains("]: xxxx"))
            .map(|l| l.split("]: ").nth(1).unwrap().split(' ').next().unwrap().len())
            .collect();
        (pieces.len() >= 64).then_some(pieces)
    });
    assert_eq!(pieces.len(), 64, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|len| *len == 16 * 1024), "{pieces:?}");
    sb.stop();
}

#[test]
fn a_flood_of_output_never_stalls_supervision() {
    let sb = Sandbox::new("flood");
    let marker = sb.path("marks");
    let config = task_config(json!({"work": "flood", "only_slot": 0, "marker_file": marker}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "2", "--execute-times", "0", "--execute-usleep", "20ms", "--task-config", &config],
    );
    let flooder = sb.wait_for("the flooding worker", SOON, || {
        read_markers(&marker).into_iter().find(|m| m.slot == 0).map(|m| m.pid)
    });
    sb.wait_for("1 MiB of flood in the log", SOON, || (run_log_size(&sb) > 1 << 20).then_some(()));
    // The other worker, killed during the flood, is replaced at once.
    let victim = sb.wait_for("the quiet worker", SOON, || {
        read_markers(&marker).into_iter().rev().find(|m| m.slot == 1).map(|m| m.pid)
    });
    let before = run_log_size(&sb);
    let killed_at = Instant::now();
    signal(victim, Signal::SIGKILL);
    let replacement = sb.wait_for("the replacement's first call", SOON, || {
        read_markers(&marker).into_iter().find(|m| m.slot == 1 && m.pid != victim).map(|m| m.pid)
    });
    let took = killed_at.elapsed();
    let flooded = run_log_size(&sb) - before;
    eprintln!("replacement {replacement} working {took:?} after the kill; {flooded} bytes of flood logged meanwhile");
    assert!(took < Duration::from_secs(5), "the replacement took {took:?} during the flood");
    // The flooding worker was slowed, never killed.
    assert!(Path::new(&format!("/proc/{flooder}")).exists(), "the flooding worker is gone");
    sb.stop();
}

fn run_log_size(sb: &Sandbox) -> u64 {
    std::fs::read_dir(sb.path("log"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run."))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn with_capture_off_output_goes_where_the_masters_goes() {
    let sb = Sandbox::new("nocapture");
    let out_file = sb.path("master.stdout");
    let config = task_config(json!({"println": "plain {call}"}));
    let faulty = fixtures().faulty.to_str().unwrap();
    let mut cmd = sb.pmhost([
        "start",
        "--name",
        &sb.name,
        "--plugin",
        faulty,
        "--workers",
        "1",
        "--execute-times",
        "0",
        "--execute-usleep",
        "20ms",
        "--capture-output",
        "false",
        "--task-config",
        &config,
    ]);
    let mut child =
        cmd.stdout(std::fs::File::create(&out_file).unwrap()).stderr(Stdio::null()).spawn().expect("start pmhost");
    sb.wait_for("plain output on the master's stdout", SOON, || {
        std::fs::read_to_string(&out_file).ok().filter(|t| t.contains("plain 1")).map(|_| ())
    });
    assert!(!run_log(&sb).contains("plain 1"), "output was captured although capture_output is false");
    let out = sb.run(["stop", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let _ = child.wait();
}

/// The master holds each worker's write ends until it reaps the worker (so a worker's exit wakes it once, not
/// once more per stream): over a churn of hundreds of one-call workers, it keeps no descriptor of a worker it
/// reaped, and every worker's line still reaches the run log.
#[test]
fn the_master_keeps_no_descriptor_of_a_worker_it_reaped() {
    let sb = Sandbox::new("capfds");
    let config = task_config(json!({"println": "printed by a one-call worker"}));
    let faulty = fixtures().faulty.to_str().unwrap();
    let args = ["--workers", "2", "--execute-times", "1", "--execute-usleep", "0", "--task-config", &config];
    sb.start_daemon(faulty, &args);
    let master = sb.master_pid();
    let descriptors = || std::fs::read_dir(format!("/proc/{master}/fd")).unwrap().count();
    let printed = || run_log(&sb).matches("printed by a one-call worker").count();
    sb.wait_for("50 workers", SOON, || (printed() >= 50).then_some(()));
    let before = descriptors();
    let seen = printed();
    sb.wait_for("300 more workers", Duration::from_secs(60), || (printed() >= seen + 300).then_some(()));
    let after = descriptors();
    // Two slots, each with a worker or a request in flight (four pipe ends each), either time.
    assert!(after <= before + 8, "the master's descriptors went from {before} to {after} over 300 workers");
    sb.stop();
}

/// The master keeps no pipe of a slot it no longer fills: scaled down from 4 one-call workers to 1, it holds
/// four descriptors fewer per slot it emptied.
#[test]
fn scaling_down_leaves_the_master_no_pipe_of_the_slots_it_empties() {
    let sb = Sandbox::new("capscale");
    let config = task_config(json!({"println": "printed by a one-call worker"}));
    let faulty = fixtures().faulty.to_str().unwrap();
    let args = ["--workers", "4", "--execute-times", "1", "--execute-usleep", "0", "--task-config", &config];
    sb.start_daemon(faulty, &args);
    let master = sb.master_pid();
    let pipes = || {
        std::fs::read_dir(format!("/proc/{master}/fd"))
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("pipe:"))
            .count()
    };
    let printed = || run_log(&sb).matches("printed by a one-call worker").count();
    sb.wait_for("40 workers", SOON, || (printed() >= 40).then_some(()));
    // The most of several looks: one taken between a reap and the next spawn sees fewer.
    let before = (0..20).map(|_| pipes()).max().unwrap();
    let out = sb.run(["scale", "--name", &sb.name, "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let seen = printed();
    sb.wait_for("20 more workers", SOON, || (printed() >= seen + 20).then_some(()));
    let mut after = pipes();
    sb.wait_for("the pipes of three slots closed", SOON, || {
        after = pipes();
        (after + 12 <= before).then_some(())
    });
    sb.stop();
}

/// The write ends the master holds for its workers take at most a quarter of its open-file limit: 64 workers
/// under a limit of 320 (five descriptors each when every end was held, with the worker's `statm`) all run,
/// their output is captured, and the master still writes its status.
#[test]
fn held_write_ends_leave_the_master_descriptors_under_a_low_open_file_limit() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new("capnofile");
    let hello = fixtures().hello.to_str().unwrap().to_owned();
    let mut cmd = sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", &hello]);
    cmd.args(["--workers", "64", "--execute-times", "0", "--execute-usleep", "1s"]);
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent's state.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 320, 320)
                .map_err(std::io::Error::from)
        });
    }
    eprintln!("$ {cmd:?}");
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().expect("run pmhost start");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sb.wait_for("64 ready workers", SOON, || (sb.ready_workers().len() == 64).then_some(()));
    let out = sb.run(["status", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let log = sb.log_text("process.");
    assert!(!log.contains("Too many open files"), "{log}");
    sb.stop();
}

/// A helper that left its worker's process group and writes without pause while the worker is reaped: the
/// master reads what the pipe held at the reap, not until the helper stops, so it goes on supervising (the slot
/// is refilled, `status` answers) and the helper, orphaned, is ended.
#[test]
fn a_helper_flooding_a_reaped_workers_pipe_never_stalls_the_master() {
    let sb = Sandbox::new("capreapflood");
    let config = task_config(json!({"work": "spawn", "spawn": "exec setsid yes flooding helper"}));
    let faulty = fixtures().faulty.to_str().unwrap();
    let args = ["--workers", "1", "--execute-times", "2", "--execute-usleep", "200ms", "--task-config", &config];
    sb.start_daemon(faulty, &args);
    let first = sb.wait_for("a ready worker", SOON, || sb.ready_workers().values().next().copied());
    sb.wait_for("the flood", SOON, || run_log(&sb).contains("flooding helper").then_some(()));
    sb.wait_for("the slot refilled", SOON, || sb.ready_workers().values().copied().find(|pid| *pid != first));
    let out = sb.run(["status", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sb.stop();
}
