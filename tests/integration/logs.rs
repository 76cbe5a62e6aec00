//! `pmhost logs`: reading a host's log files back, filtered, merged in time order, as JSON, and followed across
//! a rotation.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{ProcessWaiter, SOON, Sandbox, describe, fixtures, signal, wait_exit};

/// `pmhost logs ARGS` (with the sandbox's log directory), which must succeed; its stdout lines.
fn logs(sb: &Sandbox, args: &[&str]) -> Vec<String> {
    let out = sb.run([&["logs"], args].concat());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Runs a faulty-plugin host to its end (batch mode): two workers, three calls each, the second failing.
fn run_a_host_to_its_end(sb: &mut Sandbox) {
    let faulty = fixtures().faulty.to_str().unwrap().to_owned();
    let config = r#"{"work":"fail","message":"bad record 42","from_call":2}"#;
    let mut fg = sb.start_foreground([
        "--plugin",
        &faulty,
        "--workers",
        "2",
        "--execute-times",
        "3",
        "--execute-usleep",
        "10ms",
        "--check-interval",
        "0",
        "--task-config",
        config,
    ]);
    assert_eq!(wait_exit(&mut fg, SOON), 0);
    assert!(sb.live_processes().is_empty(), "the host still runs");
}

/// Hosts share a log directory by default: `--name` (or `--config`) shows that host's lines only, its master's
/// and its task's, while `pmhost logs` without either shows every host's.
#[test]
fn logs_of_a_named_host_leave_out_other_hosts_in_the_same_directory() {
    let mut sb = Sandbox::new("logshosts");
    run_a_host_to_its_end(&mut sb);
    let other = format!("{}-b", sb.name);
    let hello = fixtures().hello.to_str().unwrap().to_owned();
    let args = ["start", "--name", &other, "--plugin", &hello, "--workers", "1", "--execute-times", "2"];
    let out = sb.run([&args[..], &["--execute-usleep", "10ms", "--check-interval", "0"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let everything = logs(&sb, &["-n", "all"]).join("\n");
    for line in
        [format!(":Master:{} ", sb.name), format!(":Master:{other} "), "faulty ready".into(), "hello from".into()]
    {
        assert!(everything.contains(&line), "{line:?} missing without --name:\n{everything}");
    }
    let first = logs(&sb, &["--name", &sb.name, "-n", "all"]);
    let text = first.join("\n");
    assert!(text.contains(&format!(":Master:{} ", sb.name)) && text.contains("faulty ready"), "{text}");
    assert!(!text.contains(&other) && !text.contains("hello from"), "another host's lines:\n{text}");
    let second = logs(&sb, &["--name", &other, "-n", "all"]).join("\n");
    assert!(second.contains(&format!(":Master:{other} ")) && second.contains("hello from"), "{second}");
    assert!(!second.contains("faulty ready") && !second.contains(&format!(":Master:{} ", sb.name)), "{second}");
}

/// The pid the header of a text line names.
fn writer_pid(line: &str) -> i32 {
    let header = line.split("]: ").next().unwrap();
    header.rsplit(' ').nth(2).unwrap().parse().unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn logs_of_a_stopped_host_filter_by_task_slot_pid_level_and_count() {
    let mut sb = Sandbox::new("logsfilter");
    run_a_host_to_its_end(&mut sb);
    let all = logs(&sb, &["--name", &sb.name, "-n", "all"]);
    let text = all.join("\n");
    for expected in ["master started", "faulty ready", "work failed: bad record 42", "worker exited"] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    // Process and run logs merged in time order.
    let stamps: Vec<&str> = all.iter().map(|l| l.split("]: ").next().unwrap()).map(|h| &h[h.len() - 19..]).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "lines are not in time order:\n{text}");
    assert!(all.iter().any(|l| l.contains(":Master:")) && all.iter().any(|l| l.contains(":Worker:")));

    let slot1 = logs(&sb, &["--name", &sb.name, "-n", "all", "--slot", "1"]);
    assert!(!slot1.is_empty() && slot1.iter().all(|l| l.contains("slot=1")), "{slot1:#?}");
    assert!(slot1.iter().any(|l| l.contains("faulty ready")), "{slot1:#?}");

    let task = logs(&sb, &["--name", &sb.name, "-n", "all", "--task", &sb.name]);
    assert!(task.iter().any(|l| l.contains("faulty ready")), "{task:#?}");
    assert!(logs(&sb, &["--name", &sb.name, "-n", "all", "--task", "no-such-task"]).is_empty());

    let worker = writer_pid(all.iter().find(|l| l.contains("faulty ready")).unwrap());
    let by_pid = logs(&sb, &["--name", &sb.name, "-n", "all", "--pid", &worker.to_string()]);
    assert!(by_pid.iter().any(|l| writer_pid(l) == worker), "{by_pid:#?}");
    assert!(
        by_pid.iter().all(|l| writer_pid(l) == worker || l.contains(&format!("pid={worker}"))),
        "a line neither from nor about {worker}: {by_pid:#?}"
    );
    assert!(by_pid.iter().any(|l| l.contains("worker exited")), "the master's lines about the worker: {by_pid:#?}");

    let errors = logs(&sb, &["--name", &sb.name, "-n", "all", "--level", "error"]);
    assert!(!errors.is_empty() && errors.iter().all(|l| l.starts_with("[Error]")), "{errors:#?}");
    let warnings = logs(&sb, &["--name", &sb.name, "-n", "all", "--level", "warn"]);
    assert!(warnings.iter().all(|l| l.starts_with("[Error]") || l.starts_with("[Warn]")), "{warnings:#?}");
    assert!(warnings.len() >= errors.len());

    let last = logs(&sb, &["--name", &sb.name, "-n", "3"]);
    assert_eq!(last, all[all.len() - 3..], "-n 3 is the last three lines");
    let default = logs(&sb, &["--name", &sb.name]);
    assert_eq!(default, all[all.len().saturating_sub(50)..], "the default is the last 50 lines");
}

#[test]
fn logs_convert_to_json_select_by_time_and_stream_and_skip_what_is_not_a_regular_file() {
    let mut sb = Sandbox::new("logsjson");
    run_a_host_to_its_end(&mut sb);
    let log = sb.path("log");
    // An old day (left out by --since), captured output lines (--stream), and a FIFO with a log's name that
    // must neither be read nor hang the command.
    std::fs::write(log.join("run.2020-01-01.log"), "[Info][old 1 2020-01-01 10:00:00]: from long ago task=x\n")
        .unwrap();
    let today = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("run.") && !n.starts_with("run.2020"))
        .expect("today's run log");
    let header = |level: &str| {
        let line = std::fs::read_to_string(log.join(&today)).unwrap().lines().last().unwrap().to_owned();
        let stamp = &line[line.find(' ').unwrap()..line.find("]: ").unwrap()];
        format!("[{level}][process_m:Worker:{}{stamp}]:", sb.name)
    };
    let captured = format!(
        "{} printed this stream=stdout task={} slot=0 pid=1 generation=1\n{} complained stream=stderr task={} slot=0 \
         pid=1 generation=1\n",
        header("Info"),
        sb.name,
        header("Warn"),
        sb.name
    );
    std::fs::OpenOptions::new().append(true).open(log.join(&today)).unwrap().write_all_text(&captured);
    nix::unistd::mkfifo(&log.join("process.2099-01-01.log"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let all = logs(&sb, &["-n", "all"]);
    assert!(all[0].contains("from long ago"), "the oldest file comes first: {all:#?}");
    let recent = logs(&sb, &["-n", "all", "--since", "10m"]);
    assert!(!recent.iter().any(|l| l.contains("from long ago")) && recent.len() + 1 == all.len(), "{recent:#?}");

    let stdout = logs(&sb, &["-n", "all", "--stream", "stdout"]);
    assert_eq!(stdout.len(), 1, "{stdout:#?}");
    assert!(stdout[0].contains("printed this"));
    let stderr = logs(&sb, &["-n", "all", "--stream", "stderr", "--json"]);
    assert_eq!(stderr.len(), 1, "{stderr:#?}");
    let object: Value = serde_json::from_str(&stderr[0]).unwrap();
    assert_eq!((object["level"].as_str(), object["stream"].as_str()), (Some("WARN"), Some("stderr")), "{object}");

    let json = logs(&sb, &["-n", "all", "--json", "--slot", "1"]);
    assert!(!json.is_empty());
    for line in &json {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(object["slot"], 1, "{object}");
        for key in ["time", "level", "title", "pid", "message"] {
            assert!(object.get(key).is_some(), "{key} missing: {object}");
        }
    }
}

/// A stream of stdout lines of a child, read by a thread.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns the lines read meanwhile.
fn wait_line(rx: &Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let until = Instant::now() + SOON;
    while !seen.iter().any(|l| l.contains(needle)) {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout) => panic!("no line with {needle:?} within {SOON:?}; got {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("logs -f ended before {needle:?}; got {seen:#?}"),
        }
    }
}

#[test]
fn logs_follow_reads_on_across_a_rotation_until_sigterm() {
    let sb = Sandbox::new("logsfollow");
    let log = sb.path("log");
    std::fs::create_dir(&log).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o700)).unwrap();
    let hour = |h: u32| log.join(format!("run.2026-01-01-{h:02}.log"));
    let line =
        |h: u32, text: &str| format!("[Info][process_m:Worker:mail 7 2026-01-01 {h:02}:59:59]: {text} task=mail\n");
    std::fs::write(hour(10), line(10, "before")).unwrap();

    let mut cmd = sb.pmhost(["logs", "-f", "-n", "all", "--task", "mail"]);
    eprintln!("$ {cmd:?}");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn logs -f");
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_line(&rx, "before", &mut seen);

    // Appended to the current file, then a new hour's file appears (as the host's hourly rotation makes it).
    std::fs::OpenOptions::new().append(true).open(hour(10)).unwrap().write_all_text(&line(10, "appended"));
    wait_line(&rx, "appended", &mut seen);
    std::fs::write(hour(11), line(11, "after rotation")).unwrap();
    wait_line(&rx, "after rotation", &mut seen);
    std::fs::OpenOptions::new().append(true).open(hour(11)).unwrap().write_all_text(&line(11, "and more"));
    wait_line(&rx, "and more", &mut seen);
    // Other tasks' lines are filtered out while following too.
    std::fs::OpenOptions::new()
        .append(true)
        .open(hour(11))
        .unwrap()
        .write_all_text(&line(11, "other").replace("task=mail", "task=other"));
    std::fs::OpenOptions::new().append(true).open(hour(11)).unwrap().write_all_text(&line(11, "last"));
    wait_line(&rx, "last", &mut seen);
    assert!(!seen.iter().any(|l| l.contains("other")), "{seen:#?}");
    assert_eq!(seen.len(), 5, "each line exactly once: {seen:#?}");

    signal(child.id() as i32, Signal::SIGTERM);
    assert!(ProcessWaiter::new(child.id() as i32).wait(SOON), "logs -f did not end on SIGTERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "logs -f ends with 0 on SIGTERM");
}

#[test]
fn logs_of_a_host_that_never_logged_say_where_they_looked() {
    let sb = Sandbox::new("logsnone");
    let out = sb.run(["logs", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no log directory") && stderr.contains(&sb.path("log").display().to_string()), "{stderr}");
}

/// Appends text in one write.
trait WriteAllText {
    fn write_all_text(self, text: &str);
}

impl WriteAllText for std::fs::File {
    fn write_all_text(mut self, text: &str) {
        std::io::Write::write_all(&mut self, text.as_bytes()).unwrap();
    }
}

/// `pmhost logs ARGS` with its output in a file (more than a pipe holds), which must succeed; its lines.
fn logs_to_file(sb: &Sandbox, args: &[&str]) -> Vec<String> {
    let path = sb.path("logs.out");
    let mut cmd = sb.pmhost([&["logs"], args].concat());
    eprintln!("$ {cmd:?} > {}", path.display());
    let mut child = cmd.stdout(std::fs::File::create(&path).unwrap()).spawn().expect("spawn pmhost logs");
    assert!(ProcessWaiter::new(child.id() as i32).wait(SOON), "pmhost logs did not finish within {SOON:?}");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn logs_tail_of_large_logs_reads_back_only_as_far_as_needed_and_agrees_with_a_full_read() {
    let sb = Sandbox::new("logsbig");
    let log = sb.path("log");
    std::fs::create_dir(&log).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o700)).unwrap();
    // 4 MB of run log, 100 lines a second, two warnings near its start; a process log whose few lines fall
    // between the run log's lines, one of them near the end.
    let stamp = |i: u32| format!("2026-01-01 {:02}:{:02}:{:02}", i / 360_000, i / 6000 % 60, i / 100 % 60);
    let mut run = String::new();
    for i in 0..40_000u32 {
        let level = if i == 5 || i == 7 { "Warn" } else { "Info" };
        run.push_str(&format!(
            "[{level}][process_m:Worker:mail 10 {}]: run line {i} of a long log task=mail slot=0\n",
            stamp(i)
        ));
    }
    std::fs::write(log.join("run.2026-01-01.log"), run).unwrap();
    let process: String = [3u32, 39_950, 39_999]
        .iter()
        .map(|&i| format!("[Info][process_m:Master:h 9 {}]: process line {i}\n", stamp(i)))
        .collect();
    std::fs::write(log.join("process.2026-01-01.log"), process).unwrap();

    let all = logs_to_file(&sb, &["-n", "all"]);
    assert_eq!(all.len(), 40_003);
    for n in ["1", "4", "120"] {
        let tail = logs(&sb, &["-n", n]);
        let n: usize = n.parse().unwrap();
        assert_eq!(tail, all[all.len() - n..], "-n {n}");
    }
    let warnings = logs(&sb, &["-n", "2", "--level", "warn"]);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("run line 5 ") && warnings[1].contains("run line 7 "), "{warnings:#?}");
    let first_process = logs(&sb, &["-n", "3", "--pid", "9"]);
    assert_eq!(first_process.len(), 3, "{first_process:#?}");
    assert!(first_process[0].contains("process line 3"), "{first_process:#?}");
}

#[test]
fn logs_follow_a_running_host_and_move_on_to_the_next_hours_file() {
    let sb = Sandbox::new("logslive");
    let args = ["--workers", "1", "--execute-times", "0", "--execute-usleep", "100ms", "--log-rotation", "hourly"];
    sb.start_daemon(&fixtures().hello, &args);
    let mut cmd = sb.pmhost(["logs", "--name", &sb.name, "-f", "-n", "0"]);
    eprintln!("$ {cmd:?}");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn logs -f");
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_line(&rx, "hello from slot 0", &mut seen);

    // The host's hourly file now, and the next hour's made by hand as the rotation would make it ("24" sorts
    // after "23" as the next day's file would).
    let current = std::fs::read_dir(sb.path("log"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("run.") && n.len() == "run.2026-01-01-10.log".len())
        .max()
        .expect("an hourly run log");
    let (date, hour) = (&current[4..14], current[15..17].parse::<u32>().unwrap());
    let next = format!("run.{date}-{:02}.log", hour + 1);
    let line = format!("[Info][process_m:Worker:{} 1 {date} {:02}:00:00]: from the next hour\n", sb.name, hour + 1);
    std::fs::write(sb.path("log").join(next), line).unwrap();
    wait_line(&rx, "from the next hour", &mut seen);

    signal(child.id() as i32, Signal::SIGINT);
    assert!(ProcessWaiter::new(child.id() as i32).wait(SOON), "logs -f did not end on SIGINT");
    assert_eq!(child.wait().unwrap().code(), Some(0), "logs -f ends with 0 on SIGINT");
    sb.stop();
}

#[test]
fn logs_select_captured_worker_output_by_stream_in_text_and_json_logs() {
    for format in ["text", "json"] {
        let mut sb = Sandbox::new(&format!("logsstream{format}"));
        let faulty = fixtures().faulty.to_str().unwrap().to_owned();
        let config = r#"{"println":"printed {call}","raw_stderr":"from C {call}\n"}"#;
        let mut fg = sb.start_foreground([
            "--plugin",
            &faulty,
            "--workers",
            "1",
            "--execute-times",
            "3",
            "--execute-usleep",
            "10ms",
            "--check-interval",
            "0",
            "--log-format",
            format,
            "--task-config",
            config,
        ]);
        assert_eq!(wait_exit(&mut fg, SOON), 0);

        let stdout = logs(&sb, &["--name", &sb.name, "-n", "all", "--stream", "stdout"]);
        assert_eq!(stdout.len(), 3, "{format}: {stdout:#?}");
        assert!(stdout.iter().all(|l| l.contains("printed ") && !l.contains("from C")), "{format}: {stdout:#?}");
        let stderr = logs(&sb, &["--name", &sb.name, "-n", "all", "--stream", "stderr", "--json"]);
        assert_eq!(stderr.len(), 3, "{format}: {stderr:#?}");
        for line in &stderr {
            let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(object["level"], "WARN", "{object}");
            assert_eq!(object["stream"], "stderr", "{object}");
            assert!(object["message"].as_str().unwrap().starts_with("from C "), "{object}");
        }
    }
}

#[test]
fn logs_colour_levels_on_a_terminal_only() {
    let sb = Sandbox::new("logscolour");
    let log = sb.path("log");
    std::fs::create_dir(&log).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        log.join("process.2026-01-01.log"),
        "[Warn][m 1 2026-01-01 10:00:00]: careful\n[Error][m 1 2026-01-01 10:00:01]: broken\n",
    )
    .unwrap();
    let on_terminal = |no_colour: bool| {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut cmd = sb.pmhost(["logs"]);
        cmd.stdout(Stdio::from(pty.slave.try_clone().unwrap()));
        if no_colour {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        eprintln!("$ {cmd:?} > a terminal");
        let mut child = cmd.spawn().expect("spawn pmhost logs");
        assert!(ProcessWaiter::new(child.id() as i32).wait(SOON));
        assert_eq!(child.wait().unwrap().code(), Some(0));
        // Everything it wrote is in the terminal's buffer now; read it without waiting for more.
        nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::fs::File::from(pty.master), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let coloured = on_terminal(false);
    assert!(coloured.contains("\x1b[33m[Warn]\x1b[0m[m 1 2026-01-01 10:00:00]: careful"), "{coloured:?}");
    assert!(coloured.contains("\x1b[1;31m[Error]\x1b[0m"), "{coloured:?}");
    let plain = on_terminal(true);
    assert!(plain.contains("[Warn][m 1") && !plain.contains('\x1b'), "NO_COLOR: {plain:?}");
    let piped = logs(&sb, &[]);
    assert!(piped.iter().all(|l| !l.contains('\x1b')), "a pipe gets no colour: {piped:?}");
}
