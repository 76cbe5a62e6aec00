//! Async jobs (plugin-api's `tokio` feature) run like sync ones: their runtime is built in the worker, panics
//! are caught, `ctx.stopped()` is woken by a stop request, and the async `shutdown` runs.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{SOON, Sandbox, describe, fixtures, stderr_of, task_config};

fn plugin() -> String {
    fixtures().async_job.to_str().expect("utf-8 path").to_owned()
}

/// `pid slot flavor` lines of the fixture's marker file.
fn markers(path: &std::path::Path) -> Vec<(i32, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((fields.first()?.parse().ok()?, fields.get(2)?.to_string()))
        })
        .collect()
}

fn threads_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|dir| dir.count()).unwrap_or(0)
}

#[test]
fn a_stop_wakes_an_async_job_awaiting_stopped_and_its_async_shutdown_runs() {
    let sb = Sandbox::new("async-stop");
    let (marker, shutdown) = (sb.path("marks"), sb.path("shutdown"));
    let config = task_config(json!({"work": "wait_stop", "marker_file": marker, "shutdown_file": shutdown}));
    let args = ["--workers", "2", "--execute-times", "0", "--stop-timeout", "60s", "--task-config", &config];
    sb.start_daemon(plugin(), &args);
    let calls = sb.wait_for("both workers awaiting stopped()", SOON, || {
        let calls = markers(&marker);
        (calls.len() >= 2).then_some(calls)
    });
    // The default runtime is current-thread: the worker has no thread but its own.
    for (pid, flavor) in &calls {
        assert_eq!(flavor, "CurrentThread");
        assert_eq!(threads_of(*pid), 1, "worker {pid} started threads");
    }
    let started = Instant::now();
    let out = sb.run(["stop", "--name", &sb.name]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(took < Duration::from_secs(10), "stop took {took:?}: stopped() did not wake the calls in flight");
    let lines = std::fs::read_to_string(&shutdown).unwrap_or_default();
    assert_eq!(lines.lines().count(), 2, "both async shutdowns ran: {lines:?}");
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}

#[test]
fn a_multi_thread_runtime_on_request_is_built_in_the_worker() {
    let sb = Sandbox::new("async-multi");
    let marker = sb.path("marks");
    let config = task_config(json!({"work": "wait_stop", "marker_file": marker}));
    let mut cmd = sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", &plugin(), "--workers", "1"]);
    cmd.args(["--execute-times", "0", "--task-config", &config]).env("PMHOST_TEST_RUNTIME", "multi");
    let out = cmd.output().expect("run pmhost start");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let (pid, flavor) = sb.wait_for("a call", SOON, || markers(&marker).first().cloned());
    assert_eq!(flavor, "MultiThread");
    assert!(
        threads_of(pid) >= 3,
        "worker {pid} has {} threads, expected its own and 2 runtime workers",
        threads_of(pid)
    );
    // The master stays single-threaded: the runtime exists only in the worker.
    assert_eq!(threads_of(sb.master_pid()), 1);
    sb.stop();
}

#[test]
fn async_init_failures_and_panics_fail_the_start_with_their_message() {
    for (init, expected) in [("fail", "plugin init failed: async init refused"), ("panic", "async init exploded")] {
        let sb = Sandbox::new(&format!("async-init-{init}"));
        let config = task_config(json!({"init": init}));
        let out =
            sb.run(["start", "--name", &sb.name, "--workers", "1", "--plugin", &plugin(), "--task-config", &config]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("Attempted to panic across the ffi boundary"), "{stderr}");
        assert!(sb.live_processes().is_empty());
    }
}

#[test]
fn a_panic_in_async_work_is_a_logged_crash_and_the_worker_is_replaced() {
    let mut sb = Sandbox::new("async-panic");
    let marker = sb.path("marks");
    let config = json!({"work": "panic", "marker_file": marker});
    let plugin = plugin();
    let config = config.to_string();
    let mut fg = sb.start_foreground([
        "--plugin",
        &plugin,
        "--task-config",
        &config,
        "--workers",
        "1",
        "--execute-times",
        "0",
        "--backoff-initial",
        "0",
    ]);
    sb.wait_for("a replacement after the panic", SOON, || {
        let pids: std::collections::BTreeSet<i32> = markers(&marker).into_iter().map(|(pid, _)| pid).collect();
        (pids.len() >= 2).then_some(())
    });
    let log = stderr_of(&fg);
    assert!(log.contains("plugin panicked in work: async work exploded"), "{log}");
    assert!(!log.contains("Attempted to panic across the ffi boundary"), "{log}");
    assert_eq!(fg.terminate(), 0);
}
