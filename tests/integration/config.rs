//! pmhost.toml: several tasks in one host, every mistake refused with its position, flags over the file,
//! reload on SIGHUP, and the log files the README promises.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{SOON, Sandbox, SnapshotExt, cmdline, describe, file_names, fixtures, read_markers, signal};

fn write_config(sb: &Sandbox, text: &str) -> PathBuf {
    let path = sb.path("pmhost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn two_tasks(sb: &Sandbox, marker: &Path) -> String {
    format!(
        r#"
[host]
name = "{name}"

[[task]]
name = "{name}-greeter"
plugin = "{hello}"
workers = 2
execute_times = 0
execute_usleep = "50ms"
[task.config]
greeting = "hi"

[[task]]
name = "{name}-marker"
plugin = "{faulty}"
workers = 1
execute_times = 0
execute_usleep = "20ms"
[task.config]
marker_file = "{marker}"
"#,
        name = sb.name,
        hello = fixtures().hello.display(),
        faulty = fixtures().faulty.display(),
        marker = marker.display()
    )
}

#[test]
fn a_two_task_file_runs_both_tasks_with_their_counts_titles_and_config() {
    let sb = Sandbox::new("twotasks");
    let marker = sb.path("marks");
    let config = write_config(&sb, &two_tasks(&sb, &marker));
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = sb.snapshot().unwrap();
    let greeter = format!("{}-greeter", sb.name);
    let marker_task = format!("{}-marker", sb.name);
    assert_eq!(status.ready(&greeter), 2, "{status:#?}");
    assert_eq!(status.ready(&marker_task), 1, "{status:#?}");
    for w in status.task_workers(&greeter) {
        assert_eq!(cmdline(w.pid), format!("process_m:Worker:{greeter}"));
    }
    // [task.config] reached the plugin's init: the marker task writes where its config says.
    sb.wait_for("marker lines", SOON, || (!read_markers(&marker).is_empty()).then_some(()));
    // status and stop find the master through the same file.
    let out = sb.run(["status", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("task: {greeter}")) && table.contains(&format!("task: {marker_task}")), "{table}");
    let out = sb.run(["stop", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(sb.live_processes().is_empty());
}

#[test]
fn flags_override_the_file() {
    let sb = Sandbox::new("override");
    let marker = sb.path("marks");
    let config = write_config(&sb, &two_tasks(&sb, &marker));
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap(), "--workers", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = sb.snapshot().unwrap();
    assert_eq!(status.ready(&format!("{}-greeter", sb.name)), 3, "{status:#?}");
    assert_eq!(status.ready(&format!("{}-marker", sb.name)), 3, "{status:#?}");
    sb.stop();
}

#[test]
fn an_empty_environment_variable_is_named_as_such() {
    let sb = Sandbox::new("emptyenv");
    for (var, command) in [("PMHOST_LOG_DIR", "status"), ("PMHOST_PID_ROOT", "stop"), ("PMHOST_CONFIG", "start")] {
        let mut cmd = sb.pmhost([command, "--name", &sb.name]);
        cmd.env(var, "");
        eprintln!("$ {var}= {cmd:?}");
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("environment variable {var} is set but empty")), "{stderr}");
    }
    // An empty value on the command line is still clap's own complaint about the flag.
    let out = sb.run(["status", "--name", &sb.name, "--log-dir", ""]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'--log-dir <DIR>'"), "{}", describe(&out));
}

#[test]
fn every_mistake_is_refused_with_its_position() {
    let sb = Sandbox::new("badconfig");
    let hello = fixtures().hello.display().to_string();
    let task = |extra: &str| format!("[[task]]\nname = \"t\"\nplugin = \"{hello}\"\n{extra}");
    let cases: Vec<(String, &str)> = vec![
        ("[host\nname = \"x\"\n".to_owned(), ":1:"),
        (task("wrokers = 2\n"), ":4:1: unknown key `wrokers` in [[task]]: did you mean `workers`?"),
        (task("workers = \"two\"\n"), ":4:11: invalid type"),
        (task("workers = 0\n"), ":4:11: workers must be 1 to 1024, not 0"),
        (task("execute_usleep = \"fast\"\n"), ":4:18: invalid duration \"fast\""),
        (format!("{}\n{}", task(""), task("")), ":6:8: duplicate task name \"t\""),
        ("[[task]]\nname = \"t\"\nplugin = \"missing.so\"\n".to_owned(), ":3:10: plugin file"),
        ("[host]\nname = \"a/b\"\n".to_owned(), ":2:8: invalid host name"),
        ("[hots]\nname = \"x\"\n".to_owned(), ":1:2: unknown key `hots` in the top level: did you mean `host`?"),
        ("[host]\nname = \"x\"\n".to_owned(), "no [[task]]"),
    ];
    for (text, expected) in cases {
        let config = write_config(&sb, &text);
        let out = sb.run(["start", "--name", &sb.name, "--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}\n{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("pmhost.toml") && stderr.contains(expected),
            "{text}\nexpected {expected:?} in:\n{stderr}"
        );
        assert!(sb.live_processes().is_empty(), "a refused start left processes");
    }
}

#[test]
fn sighup_rereads_the_file_adding_a_task_and_changing_a_count() {
    let sb = Sandbox::new("reload");
    let marker = sb.path("marks");
    let text = two_tasks(&sb, &marker);
    let config = write_config(&sb, &text);
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let greeter = format!("{}-greeter", sb.name);
    let extra = format!("{}-extra", sb.name);
    let edited = text.replacen("workers = 2", "workers = 3", 1)
        + &format!(
            "\n[[task]]\nname = \"{extra}\"\nplugin = \"{}\"\nworkers = 2\nexecute_times = 0\n",
            fixtures().hello.display()
        );
    write_config(&sb, &edited);
    signal(sb.master_pid(), Signal::SIGHUP);
    let status = sb.wait_for("3 greeters and 2 extras on the new generation", SOON, || {
        let s = sb.snapshot()?;
        let moved = s.task_workers(&greeter).iter().all(|w| w.generation == 2);
        let done = s.last_restart.as_ref().is_some_and(|r| !r.in_progress);
        (s.ready(&greeter) == 3 && s.ready(&extra) == 2 && moved && done).then_some(s)
    });
    assert_eq!(status.last_restart.as_ref().map(|r| r.ok), Some(true), "{status:#?}");

    // A broken edit is refused with its position; nothing changes.
    write_config(&sb, &edited.replacen("workers = 3", "workers = -1", 1));
    let out = sb.run(["restart", "--name", &sb.name, "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workers must be 1 to 1024"), "{}", describe(&out));
    signal(sb.master_pid(), Signal::SIGHUP);
    let status = sb.wait_for("the refused reload recorded", SOON, || {
        let s = sb.snapshot()?;
        s.last_restart.as_ref().is_some_and(|r| r.generation == 3 && !r.in_progress).then_some(s)
    });
    let restart = status.last_restart.as_ref().unwrap();
    assert!(!restart.ok, "{status:#?}");
    assert!(restart.error.as_deref().unwrap().contains("pmhost.toml:"), "{status:#?}");
    assert_eq!(status.ready(&greeter), 3, "{status:#?}");
    sb.stop();
}

#[test]
fn a_refused_reload_changes_nothing() {
    let sb = Sandbox::new("refusedreload");
    let marker = sb.path("marks");
    let text = two_tasks(&sb, &marker);
    let config = write_config(&sb, &text);
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // One task asks for more workers, the other names a file that is no plugin: the whole reload is refused.
    let bogus = sb.path("bogus.so");
    std::fs::write(&bogus, "not a library").unwrap();
    let edited = text
        .replacen("workers = 2", "workers = 3", 1)
        .replace(&fixtures().faulty.display().to_string(), &bogus.display().to_string());
    write_config(&sb, &edited);
    signal(sb.master_pid(), Signal::SIGHUP);
    let status = sb.wait_for("the refusal", SOON, || {
        let s = sb.snapshot()?;
        s.last_restart.as_ref().is_some_and(|r| !r.in_progress).then_some(s)
    });
    let error = status.last_restart.as_ref().and_then(|r| r.error.as_deref());
    assert!(error.unwrap().contains("not a shared library"), "{status:#?}");
    let greeter = format!("{}-greeter", sb.name);
    assert_eq!(status.tasks[0].workers_wanted, 2, "{status:#?}");
    assert_eq!(status.task_workers(&greeter).len(), 2, "{status:#?}");
    sb.stop();
}

#[test]
fn restart_with_task_rolls_only_that_task() {
    let sb = Sandbox::new("onetask");
    let marker = sb.path("marks");
    let config = write_config(&sb, &two_tasks(&sb, &marker));
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let greeter = format!("{}-greeter", sb.name);
    let marker_task = format!("{}-marker", sb.name);
    let before = sb.snapshot().unwrap().task_workers(&marker_task).to_vec();
    let out = sb.run(["restart", "--config", config.to_str().unwrap(), "--task", &greeter]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = sb.wait_for("greeters on generation 2", SOON, || {
        let s = sb.snapshot()?;
        let w = s.task_workers(&greeter);
        (w.len() == 2 && w.iter().all(|w| w.generation == 2)).then_some(s)
    });
    let after = status.task_workers(&marker_task);
    assert_eq!(before[0].pid, after[0].pid, "the other task was touched");
    sb.stop();
}

#[test]
fn log_files_have_the_documented_names_prefixes_and_lines() {
    let mut sb = Sandbox::new("logs");
    let faulty = fixtures().faulty.to_str().unwrap();
    let config = r#"{"work":"fail","message":"bad record 42","from_call":2}"#;
    let mut fg = sb.start_foreground([
        "--plugin",
        faulty,
        "--workers",
        "1",
        "--execute-times",
        "3",
        "--execute-usleep",
        "10ms",
        "--check-interval",
        "0",
        "--log-rotation",
        "never",
        "--task-config",
        config,
    ]);
    assert_eq!(crate::harness::wait_exit(&mut fg, SOON), 0);
    let log = sb.path("log");
    let read = |name: &str| std::fs::read_to_string(log.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let process = read("process.log");
    assert!(process.contains(&format!("[Info][process_m:Master:{} ", sb.name)), "{process}");
    assert!(process.contains("worker exited: normal exit"), "{process}");
    // Plugin lines reach the run log with the worker's slot and pid.
    let run = read("run.log");
    let line = run.lines().find(|l| l.contains("faulty ready")).unwrap_or_else(|| panic!("{run}"));
    assert!(line.starts_with(&format!("[Info][process_m:Worker:{} ", sb.name)), "{line}");
    assert!(line.contains("slot=0") && line.contains("pid="), "{line}");
    // Errors also land in the error_ file, and only errors.
    let errors = read("error_process.log");
    assert!(errors.contains("work failed: bad record 42"), "{errors}");
    assert!(errors.lines().all(|l| l.starts_with("[Error]")), "{errors}");
}

#[test]
fn a_failed_start_writes_the_fatal_file() {
    let sb = Sandbox::new("fatal");
    let faulty = fixtures().faulty.to_str().unwrap();
    let out = sb.run([
        "start",
        "--name",
        &sb.name,
        "--plugin",
        faulty,
        "--log-rotation",
        "never",
        "--task-config",
        r#"{"init":"fail","message":"license expired"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let fatal = std::fs::read_to_string(sb.path("log").join("fatal_process.log")).unwrap();
    assert!(fatal.contains("start failed") && fatal.contains("license expired"), "{fatal}");
}

#[test]
fn log_level_filters_and_daemons_log_only_to_files() {
    let sb = Sandbox::new("loglevel");
    let hello = fixtures().hello.to_str().unwrap();
    let out = sb.run([
        "start",
        "-d",
        "--name",
        &sb.name,
        "--plugin",
        hello,
        "--workers",
        "1",
        "--execute-times",
        "0",
        "--log-level",
        "warn",
        "--log-rotation",
        "hourly",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "a daemon wrote to the caller's stderr: {}", describe(&out));
    let victim = sb.ready_workers()[&0];
    signal(victim, Signal::SIGKILL);
    sb.wait_for("the crash logged", SOON, || {
        let name = file_names(&sb.path("log")).into_iter().find(|n| n.starts_with("process."))?;
        let text = std::fs::read_to_string(sb.path("log").join(&name)).ok()?;
        // Hourly names: process.YYYY-MM-DD-HH.log.
        assert_eq!(name.len(), "process.2026-01-30-15.log".len(), "{name}");
        text.contains("worker crashed").then_some(text)
    });
    sb.stop();
    for entry in std::fs::read_dir(sb.path("log")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(!text.contains("[Info]"), "{:?} has info lines at level warn:\n{text}", entry.file_name());
    }
}

#[test]
fn no_log_files_writes_no_files() {
    let mut sb = Sandbox::new("nologs");
    let mut fg = sb.start_faulty(
        &serde_json::json!({}),
        ["--workers", "1", "--execute-times", "2", "--execute-usleep", "0", "--check-interval", "0", "--no-log-files"],
    );
    assert_eq!(crate::harness::wait_exit(&mut fg, SOON), 0);
    assert!(!sb.path("log").exists() || std::fs::read_dir(sb.path("log")).unwrap().next().is_none());
    assert!(crate::harness::stderr_of(&fg).contains("master started"), "foreground still logs to stderr");
}

#[test]
fn json_log_lines_parse() {
    let mut sb = Sandbox::new("jsonlog");
    let hello = fixtures().hello.to_str().unwrap();
    let mut fg = sb.start_foreground([
        "--plugin",
        hello,
        "--workers",
        "1",
        "--execute-times",
        "2",
        "--execute-usleep",
        "10ms",
        "--check-interval",
        "0",
        "--log-format",
        "json",
        "--log-rotation",
        "never",
    ]);
    assert_eq!(crate::harness::wait_exit(&mut fg, SOON), 0);
    for name in ["process.log", "run.log"] {
        let text = std::fs::read_to_string(sb.path("log").join(name)).unwrap();
        assert!(!text.is_empty(), "{name} is empty");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
            for key in ["time", "level", "title", "pid", "message"] {
                assert!(v.get(key).is_some(), "{name}: no {key} in {line}");
            }
        }
    }
    let stderr = crate::harness::stderr_of(&fg);
    let first = stderr.lines().next().unwrap();
    assert!(serde_json::from_str::<Value>(first).is_ok(), "stderr is not JSON: {first}");
}

#[test]
fn the_example_file_is_valid() {
    let sb = Sandbox::new("example");
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pmhost.toml")).unwrap();
    let text = example
        .replace("../target/release/libhello.so", &fixtures().hello.display().to_string())
        .replace("name = \"process\"", &format!("name = \"{}\"", sb.name))
        .replace("/run/pmhost/pid", &sb.pid_root().display().to_string())
        .replace("/run/pmhost/status", &sb.status_root().display().to_string())
        .replace("/run/pmhost/log", &sb.path("log").display().to_string());
    let config = write_config(&sb, &text);
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // execute_times = 1: workers retire after every call, so count the slots, not the ready workers.
    let status = sb.snapshot().unwrap();
    assert_eq!(status.tasks[0].name, "hello", "{status:#?}");
    assert_eq!(status.tasks[0].workers_wanted, 4, "{status:#?}");
    let out = sb.run(["stop", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}
